"""Turn what a user wrote (path, folder, hub id, ``base+lora``) into a TensorSource."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SourceError
from . import paths
from .base import PrefixedSource, TensorSource
from .gguf_file import GGUFFile
from .pickle_file import PickleFile
from .quantized import dequantized
from .safetensors_file import MultiFileSource, SafetensorsFile

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
WEIGHT_SUFFIXES = (".safetensors", ".gguf", *sorted(PICKLE_SUFFIXES))
STRENGTH = re.compile(r":-?[\d.]+$")  # the ``:0.8`` after a LoRA in ``base+lora:0.8``
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# weight files, in order of preference, inside a transformers/diffusers model folder
WEIGHT_INDEXES = ["model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json",
                  "pytorch_model.bin.index.json", "diffusion_pytorch_model.bin.index.json"]
WEIGHT_FILES = ["model.safetensors", "diffusion_pytorch_model.safetensors", "adapter_model.safetensors",
                "pytorch_lora_weights.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.bin",
                "adapter_model.bin", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"]

# What may follow ``+`` in a reference (``base+lora.safetensors:0.7``). Each modifier takes (the opened base, the text
# after ``+``, the whole reference) and returns the modified source, or None when the text is not its kind; the
# first that answers wins. The kinds live above this package and append themselves (studio.lora: LoRA application).
REFERENCE_MODIFIERS: list[Callable[[TensorSource, str, str], TensorSource | None]] = []


def short_name(ref: str) -> str:
    """A model reference shortened for labels and axes: each ``+`` part's file or folder name without its weights
    suffix or strength (``/m/base.safetensors+/l/ink.safetensors:0.8`` → ``base+ink``); other text stays as it is."""
    parts = []
    for part in str(ref).split("+"):
        name = STRENGTH.sub("", part).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        parts.append(next((name[:-len(s)] for s in WEIGHT_SUFFIXES if name.endswith(s) and len(name) > len(s)), name)
                     or part)
    return "+".join(parts)


def split_strength(text: str) -> tuple[str, float]:
    """The LoRA part of a reference and its strength: ``ink.safetensors:0.8`` → ``("ink.safetensors", 0.8)``; 1 when
    none is written."""
    if STRENGTH.search(text):
        lora, _, strength = text.rpartition(":")
        return lora, float(strength)
    return text, 1.0


def split_reference(ref: str) -> list[str]:
    """The file or hub parts of a model reference: ``base+lora:0.8`` → ``[base, lora]``."""
    ref = str(ref).strip()
    if "+" in ref and not paths.exists(ref):
        base, lora = ref.rsplit("+", 1)
        lora = STRENGTH.sub("", lora)
        return [base.strip(), lora.strip()]
    return [ref]


@dataclass(frozen=True)
class ModelRef:
    """A model reference as written in a recipe: ``path``, ``org/name[@rev]``, optionally ``+lora[:strength]``."""

    model: str
    lora: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        text = str(text).strip()
        if not text:
            raise SourceError("empty model reference")
        if "+" in text and not paths.exists(text):
            base, lora = text.rsplit("+", 1)
            return cls(base, lora)
        return cls(text)

    def __str__(self):
        return self.model if self.lora is None else f"{self.model}+{self.lora}"


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path.name} ({e})", where=str(path.parent)) from None


def open_file(path: Path, ref: str | None = None, **kw) -> TensorSource:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path, ref=ref, **kw)
    if path.suffix == ".gguf":
        return GGUFFile(path, ref=ref, **kw)
    if path.suffix in PICKLE_SUFFIXES:
        return PickleFile(path, ref=ref, **kw)
    raise SourceError(f"unsupported file type {path.suffix or '(none)'!r}", where=str(path),
                      hint="expected .safetensors, .gguf (dequantized to float32 when read), or .bin/.pt/.pth/.ckpt")


def open_folder(path: Path, ref: str | None = None) -> TensorSource:
    ref = ref or str(path)
    if paths.is_file(path / "model_index.json"):
        index = _load_json(path / "model_index.json")
        parts = {}
        for name, value in index.items():
            if name.startswith("_") or not paths.is_dir(path / name):
                continue
            try:
                parts[name] = open_folder(path / name, ref=f"{ref}/{name}")
            except SourceError:
                continue  # tokenizers, schedulers and feature extractors hold no weights
        if not parts:
            raise SourceError("diffusers pipeline folder holds no weights", where=ref)
        return PrefixedSource(parts, ref=ref, path=path, kind="diffusers", config=index)
    config = _load_json(path / "config.json") if paths.is_file(path / "config.json") else None
    kind = "transformers"
    if paths.is_file(path / "adapter_config.json"):
        kind, config = "peft-lora", _load_json(path / "adapter_config.json")
    elif config and "_class_name" in config:
        kind = "diffusers-component"
    for name in WEIGHT_INDEXES:
        if paths.is_file(path / name):
            weight_map = _load_json(path / name).get("weight_map") or {}
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not paths.is_file(path / s)]
            if missing:
                raise SourceError(f"shard {missing[0]} listed in {name} is missing", where=ref)
            files = [open_file(path / s) for s in shards]
            return MultiFileSource(files, ref=ref, path=path, kind=kind, config=config, folder=path)
    for name in WEIGHT_FILES:
        if paths.is_file(path / name):
            return open_file(path / name, ref=ref, kind=kind, config=config, folder=path)
    singles = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.gguf"))
    if len(singles) == 1:
        return open_file(singles[0], ref=ref, kind=kind, config=config, folder=path)
    if len(singles) > 1 and singles[0].suffix == ".gguf":  # a GGUF repository: one file per quantization
        raise SourceError(f"the folder holds {len(singles)} GGUF files", where=ref,
                          hint="give one of them: " + ", ".join(p.name for p in singles[:6]))
    raise SourceError("no model weights found in folder", where=ref,
                      hint="expected model.safetensors, a sharded index, diffusion_pytorch_model.safetensors or a single .safetensors")


def hub_snapshot(repo: str, revision: str | None) -> Path:
    """Resolve a hub id through huggingface_hub's cache; download only when online and not cached."""
    try:  # imported on the first hub id: most references are local paths, and this import costs ~0.3 s
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        raise SourceError("huggingface_hub is not installed", where=repo) from None
    # read the cache location now (huggingface_hub fixes its constants at import time)
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.py"]
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True,
                                          cache_dir=cache))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise SourceError("not in the local Hugging Face cache and HF_HUB_OFFLINE is set", where=repo,
                          hint="download it once with network access, or give a local path")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, cache_dir=cache))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SourceError(f"not in the local Hugging Face cache and could not be downloaded ({msg})", where=repo,
                          hint="check the id and your network, or give a local path") from None


def is_hub_id(text: str) -> bool:
    """A Hub repository id (``org/name[@revision]``) and not a local path (a folder named like one wins)."""
    return bool(HUB_ID.match(text)) and not paths.exists(os.path.expanduser(text))


def resolve_path(ref: str) -> Path:
    p = Path(os.path.expanduser(ref))
    if paths.exists(p):
        return p
    if is_hub_id(ref):
        repo, _, rev = ref.partition("@")
        return hub_snapshot(repo, rev or None)
    head, at, _ = ref.rpartition("@")
    if at and paths.exists(os.path.expanduser(head)):
        return Path(os.path.expanduser(head))  # a local folder has one revision: ``path@rev`` is it (as in mergekit)
    raise SourceError("no such file or folder, and not a hub id (org/name[@revision])", where=paths.shown(ref))


def open_source(ref: str | ModelRef) -> TensorSource:
    """Open a model reference lazily: only headers are read here."""
    mref = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
    path = resolve_path(mref.model)
    src = open_folder(path, ref=mref.model) if paths.is_dir(path) else open_file(path, ref=mref.model, folder=None)
    src = dequantized(src)  # scaled fp8 and bitsandbytes weights read as float32 under their plain names
    return src if mref.lora is None else modified_source(src, mref.lora, str(mref))


def modified_source(src: TensorSource, text: str, ref: str) -> TensorSource:
    """``src`` with what follows ``+`` in the reference ``ref`` applied by the first REFERENCE_MODIFIERS that
    understands ``text`` (a LoRA); SourceError when none does."""
    for modify in REFERENCE_MODIFIERS:
        modified = modify(src, text, ref)
        if modified is not None:
            return modified
    raise SourceError(f"nothing understands {'+' + text!r} after the model", where=ref,
                      hint="write MODEL+LORA_FILE[:STRENGTH]")
