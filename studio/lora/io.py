"""Where the LoRA commands' outputs go: the target check against their inputs, and ``save_like``, which writes a
LoRA-applied model in its input's structure. The bytes go through ``studio.output`` (streamed, atomic)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch

from ..errors import StudioError
from ..output import AtomicTarget, check_target, copy_non_weight_files, is_single_file, write_safetensors
from ..sources.base import PrefixedSource

def check_output(out: Path, inputs: Iterable, overwrite: bool) -> Path:
    """Refuse to write into an input's folder, over an input, or over a non-empty target without ``overwrite``
    (``inputs``: sources or LoRA networks' sources). Returns the resolved output path."""
    out = Path(out).expanduser().resolve()
    paths = [Path(p) for src in inputs for p in (getattr(src, "folder", None), getattr(src, "path", None))
             if p is not None]
    check_target(out, overwrite, paths)
    return out


def root_source(src):
    """Follow wrappers (LoRA-applied sources) down to the source that owns the files."""
    while getattr(src, "base", None) is not None:
        src = src.base
    return src


def _weights_name(part) -> str:
    name = getattr(part, "path", Path("model.safetensors")).name
    if name.endswith(".safetensors") and part.kind != "peft-lora" and "-of-" not in name:
        return name.replace(".fp16.", ".")
    if part.kind == "diffusers-component" or (getattr(part, "config", None) or {}).get("_class_name"):
        return "diffusion_pytorch_model.safetensors"
    return "model.safetensors"


def save_like(src, out: Path, *, dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Write every tensor of ``src`` (``src.get`` is called once per tensor) in the structure of its root input:
    a single ``.safetensors`` when ``out`` ends so, a diffusers pipeline folder mirrored from a diffusers input, or a
    transformers/diffusers-component folder with the input's side files (config, tokenizer) copied."""
    out = Path(out)
    root = root_source(src)
    infos = {k: src.info(k) for k in src.keys()}
    label = "writing" if progress else None
    meta = {"format": "pt"}
    meta.update(metadata or {})
    if is_single_file(out) and isinstance(root, PrefixedSource):
        raise StudioError("a diffusers pipeline is written as a folder", where=str(out),
                          hint="give an output folder path (no .safetensors suffix)")
    check_target(out, overwrite, [])
    if is_single_file(out):
        write_safetensors(out, infos, src.get, meta, dtype, label)
        return out
    with AtomicTarget(out) as tmp:
        if isinstance(root, PrefixedSource):
            folder = Path(root.path)
            for p in folder.iterdir():  # scheduler/, tokenizer/, model_index.json, ...
                if p.name.startswith("."):
                    continue
                if p.is_dir() and p.name not in root.parts:
                    shutil.copytree(p, tmp / p.name)
                elif p.is_file():
                    shutil.copy2(p, tmp / p.name)
            for name, part in root.parts.items():
                sub = tmp / name
                copy_non_weight_files(Path(part.folder or Path(part.path).parent), sub)
                pre = name + "."
                pinfos = {k[len(pre):]: v for k, v in infos.items() if k.startswith(pre)}
                write_safetensors(sub / _weights_name(part), pinfos, lambda k, pre=pre: src.get(pre + k), meta, dtype,
                                  f"{label} {name}" if label else None)
        else:
            folder = getattr(root, "folder", None)
            if folder is not None:
                copy_non_weight_files(Path(folder), tmp)
            write_safetensors(tmp / _weights_name(root), infos, src.get, meta, dtype, label)
    return out
