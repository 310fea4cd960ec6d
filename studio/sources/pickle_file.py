"""Pickle-based checkpoints (.bin, .pt, .pth, .ckpt), loaded only through ``torch.load(weights_only=True)``.

weights_only unpickling accepts tensors, plain containers and numbers; a file whose unpickling would import or call
anything else is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..errors import SourceError, UnsafeFileError
from .base import TensorInfo, TensorSource

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(e: BaseException) -> str:
    """One line of what torch said: the weights-only unpickler's own verdict when it gives one (its message is a
    page of advice around it), else the first line; ANSI colour codes removed."""
    text = _ANSI.sub("", str(e))
    _, marker, verdict = text.partition("WeightsUnpickler error:")
    if marker:
        return " ".join(re.split(r"\s(?:Please use|Check the documentation)", verdict)[0].split())[:160]
    text = " ".join(text.split())[:160]
    return text if len(text) > 24 else f"{type(e).__name__} {text}".strip()  # a bare KeyError('101') says '101'


def safe_torch_load(path: Path):
    # torch warns on stderr about what it reads (a pickle protocol other than 2, a TorchScript archive) before it
    # fails or succeeds; the studio's own message says what matters, and the CLI's stderr stays one line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy format cannot be mapped
        except pickle.UnpicklingError as e:
            raise UnsafeFileError(
                f"refused to load: unpickling would execute code or build non-tensor objects ({_reason(e)})",
                where=str(path), hint="nothing from the file was run; convert it to .safetensors with a tool you trust",
            ) from None
        except Exception as e:  # noqa: BLE001 - see below
            # weights_only unpickling runs nothing from the file, so whatever it raises on bytes that are not a
            # checkpoint (EOFError, KeyError, IndexError, zip and struct errors, …) says only that
            raise SourceError(f"cannot read checkpoint ({_reason(e)})", where=str(path)) from None


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
