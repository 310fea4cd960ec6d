"""Streaming, atomic writers: safetensors written tensor by tensor, folders mirrored from an input's structure.

A safetensors header only needs names, dtypes and shapes, so it is written first and each tensor's bytes follow as it
is produced: peak memory is one tensor, not a model. Everything goes to a temporary name beside the target and is
renamed into place at the end; inputs' folders are never written into; an existing target needs ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import StudioError
from ..sources.base import PrefixedSource, TensorInfo
from ..sources.safetensors_file import ST_NAMES

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "keep", "auto"):
        return None
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise StudioError(f"unknown dtype {name!r}", hint="use fp32, fp16 or bf16") from None


def _out_info(info: TensorInfo, dtype: torch.dtype | None) -> TensorInfo:
    if dtype is not None and info.dtype.is_floating_point:
        return TensorInfo(info.shape, dtype)
    return info


def check_output(out: Path, inputs: Iterable, overwrite: bool) -> Path:
    """Refuse to write into an input's folder, over an input, or over an existing target without ``overwrite``."""
    out = Path(out).expanduser().resolve()
    for src in inputs:
        for p in (getattr(src, "folder", None), getattr(src, "path", None)):
            if p is None:
                continue
            p = Path(p).resolve()
            if out == p or (p.is_dir() and p in out.parents):
                raise StudioError("the output would overwrite or sit inside an input", where=str(out),
                                  hint="choose an output path outside the input folders")
    if out.exists() and not overwrite:
        raise StudioError("output already exists", where=str(out), hint="pass --overwrite to replace it")
    return out


def write_safetensors(path: Path, infos: dict[str, TensorInfo], fetch: Callable[[str], torch.Tensor],
                      metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                      progress: str | None = None) -> None:
    """Write ``infos`` (name → shape/dtype, in order) to ``path`` atomically, calling ``fetch(name)`` per tensor."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    plan = []
    for name, info in infos.items():
        oi = _out_info(info, dtype)
        n = oi.nbytes
        header[name] = {"dtype": ST_NAMES[oi.dtype], "shape": list(oi.shape), "data_offsets": [offset, offset + n]}
        plan.append((name, oi))
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            it = plan
            if progress:
                from tqdm import tqdm

                it = tqdm(plan, desc=progress, unit="tensor", leave=False)
            for name, oi in it:
                t = fetch(name)
                if tuple(t.shape) != tuple(oi.shape):
                    raise StudioError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {oi.shape}")
                t = t.to(oi.dtype).contiguous()
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().data)
                del t
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def root_source(src):
    """Follow wrappers (LoRA-applied sources) down to the source that owns the files."""
    while getattr(src, "base", None) is not None:
        src = src.base
    return src


def _copy_side_files(src_dir: Path, dst_dir: Path, skip_names: set[str] = frozenset()):
    dst_dir.mkdir(parents=True, exist_ok=True)
    for p in src_dir.iterdir():
        if p.name in skip_names or p.name.startswith("."):
            continue
        if p.is_dir():
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        shutil.copy2(p, dst_dir / p.name)


def _weights_name(part) -> str:
    name = getattr(part, "path", Path("model.safetensors")).name
    if name.endswith(".safetensors") and part.kind != "peft-lora" and "-of-" not in name:
        return name.replace(".fp16.", ".")
    if part.kind == "diffusers-component" or (getattr(part, "config", None) or {}).get("_class_name"):
        return "diffusion_pytorch_model.safetensors"
    return "model.safetensors"


class _AtomicDir:
    def __init__(self, out: Path, overwrite: bool):
        self.out, self.overwrite = Path(out), overwrite

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        return self.tmp

    def __exit__(self, et, ev, tb):
        if et is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.out.exists():
            if not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise StudioError("output already exists", where=str(self.out), hint="pass --overwrite to replace it")
            old = self.out.with_name(f".{self.out.name}.old")
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(self.tmp, self.out)
        return False


def save_like(src, out: Path, *, dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Write every tensor of ``src`` (``src.get`` is called once per tensor) in the structure of its root input:
    a single ``.safetensors`` when ``out`` ends so, a diffusers pipeline folder mirrored from a diffusers input, or a
    transformers/diffusers-component folder with the input's side files (config, tokenizer) copied."""
    out = Path(out)
    root = root_source(src)
    infos = {k: src.info(k) for k in src.keys()}
    label = "writing" if progress else None
    if out.suffix == ".safetensors":
        if isinstance(root, PrefixedSource):
            raise StudioError("a diffusers pipeline is written as a folder", where=str(out),
                              hint="give an output folder path (no .safetensors suffix)")
        if out.exists() and not overwrite:
            raise StudioError("output already exists", where=str(out), hint="pass --overwrite to replace it")
        meta = {"format": "pt"}
        meta.update(metadata or {})
        write_safetensors(out, infos, src.get, meta, dtype, label)
        return out
    with _AtomicDir(out, overwrite) as tmp:
        meta = {"format": "pt"}
        meta.update(metadata or {})
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
                _copy_side_files(Path(part.folder or Path(part.path).parent), sub)
                pre = name + "."
                pinfos = {k[len(pre):]: v for k, v in infos.items() if k.startswith(pre)}
                write_safetensors(sub / _weights_name(part), pinfos, lambda k, pre=pre: src.get(pre + k), meta, dtype,
                                  f"{label} {name}" if label else None)
        else:
            folder = getattr(root, "folder", None)
            if folder is not None:
                _copy_side_files(Path(folder), tmp)
            write_safetensors(tmp / _weights_name(root), infos, src.get, meta, dtype, label)
    return out
