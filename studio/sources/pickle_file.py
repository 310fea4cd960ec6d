"""Pickle-based checkpoints (.bin, .pt, .pth, .ckpt), loaded only through ``torch.load(weights_only=True)``.

weights_only unpickling accepts tensors, plain containers and numbers; a file whose unpickling would import or call
anything else is refused before any of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import SourceError, UnsafeFileError
from .base import TensorInfo, TensorSource


def safe_torch_load(path: Path):
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format cannot be mapped
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "disallowed object"
        raise UnsafeFileError(
            f"refused to load: unpickling would execute code or build non-tensor objects ({first[:160]})",
            where=str(path), hint="nothing from the file was run; convert it to .safetensors with a tool you trust",
        ) from None
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        raise SourceError(f"cannot read checkpoint ({str(e).splitlines()[0][:200]})", where=str(path)) from None


def _tensor_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return {}


class PickleFile(TensorSource):
    def __init__(self, path: Path, ref: str | None = None, **kw):
        super().__init__(ref=ref or str(path), path=Path(path), kind=kw.pop("kind", "checkpoint"), **kw)
        self._tensors = _tensor_dict(safe_torch_load(self.path))
        if not self._tensors:
            raise SourceError("the file holds no tensors (expected a state dict)", where=str(path))
        self._index = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in self._tensors.items()}

    def _read(self, key):
        return self._tensors[key]
