"""Lazy tensor sources: keys, shapes and dtypes come from headers; tensor data is read only when asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SourceError


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class TensorSource:
    """A read-only, lazily loaded mapping from tensor names to tensors.

    Subclasses fill ``_index`` (name → TensorInfo) from headers and implement ``_read``.
    """

    ref: str
    path: Path
    kind: str = "safetensors"
    config: dict | None = None
    metadata: dict = field(default_factory=dict)
    folder: Path | None = None  # the folder whose side files (tokenizer, configs) belong to this model

    def __post_init__(self):
        self._index: dict[str, TensorInfo] = {}

    # -- mapping interface ------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def info(self, key: str) -> TensorInfo:
        try:
            return self._index[key]
        except KeyError:
            raise SourceError(f"tensor {key!r} not found", where=self.ref) from None

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor (CPU, stored dtype). The result may share memory with a read-only mapping: don't write."""
        self.info(key)
        return self._read(key)

    def release(self, key: str) -> None:
        """Hint that ``key`` was consumed and its backing memory may be dropped (no-op unless memory-mapped)."""

    def _read(self, key: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def items(self):
        for k in self._index:
            yield k, self.get(k)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: self.get(k).clone() for k in self._index}

    # -- summaries ----------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return sum(i.numel for i in self._index.values())

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._index.values())

    def dtype_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self._index.values():
            name = str(i.dtype).replace("torch.", "")
            out[name] = out.get(name, 0) + 1
        return out

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ref!r}, {len(self._index)} tensors)"


class DictSource(TensorSource):
    """Tensors already in memory (tests, live previews, learned merges)."""

    def __init__(self, tensors: dict[str, torch.Tensor], ref: str = "<memory>", config: dict | None = None,
                 kind: str = "memory"):
        super().__init__(ref=ref, path=Path(ref), kind=kind, config=config)
        self._tensors = tensors
        self._index = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}

    def _read(self, key):
        return self._tensors[key]


class SubsetSource(TensorSource):
    """Some of a source's tensors under their own names (one module of a multimodal model). Not with the whole
    model's config (its layer count is another module's): ``config`` is what the caller says holds for the subset."""

    def __init__(self, inner: TensorSource, keys, config: dict | None = None):
        super().__init__(ref=inner.ref, path=inner.path, kind=inner.kind, config=config,
                         metadata=dict(inner.metadata), folder=inner.folder)
        self.inner = inner
        self._index = {k: inner.info(k) for k in keys}

    def _read(self, key):
        return self.inner.get(key)

    def release(self, key):
        self.inner.release(key)


class PrefixedSource(TensorSource):
    """Several sources seen as one, each under a key prefix (diffusers pipelines: ``unet.``, ``vae.``, ...)."""

    def __init__(self, parts: dict[str, TensorSource], ref: str, path: Path, kind: str, config: dict | None = None):
        super().__init__(ref=ref, path=path, kind=kind, config=config, folder=path)
        self.parts = parts
        self._route: dict[str, tuple[TensorSource, str]] = {}
        for prefix, src in parts.items():
            for k in src.keys():
                full = f"{prefix}.{k}"
                self._route[full] = (src, k)
                self._index[full] = src.info(k)

    def _read(self, key):
        src, k = self._route[key]
        return src.get(k)

    def release(self, key):
        src, k = self._route[key]
        src.release(k)

    def close(self):
        for s in self.parts.values():
            s.close()
