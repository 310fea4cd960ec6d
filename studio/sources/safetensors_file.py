"""safetensors files read through our own header parser and a copy-on-write mmap.

Why not ``safetensors.safe_open``: its ``get_tensor`` copies every tensor out of the mapping, and the engine then
converts to float32, a second full pass over memory. A ``torch.frombuffer`` view on the mapping lets the float32
conversion be the only copy, which is a measurable share of a streaming merge's time. The header format is tiny and
stable (8-byte little-endian length + JSON), so parsing it here costs nothing and lets ``inspect`` read many files'
headers without mapping them.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import struct
from pathlib import Path

import torch

from ..errors import SourceError
from .base import TensorInfo, TensorSource

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[dict, dict, int]:
    """Return (tensor entries, __metadata__, byte offset of the data section). Reads only the header."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SourceError("file is too short to be safetensors", where=str(path))
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise SourceError("not a safetensors file (implausible header length)", where=str(path))
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read safetensors header ({e})", where=str(path)) from None
    meta = header.pop("__metadata__", None) or {}
    return header, meta, 8 + n


class SafetensorsFile(TensorSource):
    def __init__(self, path: Path, ref: str | None = None, **kw):
        super().__init__(ref=ref or str(path), path=Path(path), kind=kw.pop("kind", "safetensors"), **kw)
        entries, meta, self._data_start = read_header(self.path)
        self.metadata = dict(meta)
        self._entries = {}
        for name, e in entries.items():
            try:
                dtype = ST_DTYPES[e["dtype"]]
            except KeyError:
                raise SourceError(f"tensor {name!r} has unsupported dtype {e.get('dtype')!r}", where=str(path)) from None
            self._index[name] = TensorInfo(tuple(e["shape"]), dtype)
            self._entries[name] = tuple(e["data_offsets"])
        self._mm: mmap.mmap | None = None
        self._lock = threading.Lock()  # the engine reads from several threads; map the file once

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mm is None:
                with open(self.path, "rb") as fh:  # mmap keeps its own handle; ours can close at once
                    size = os.fstat(fh.fileno()).st_size
                    # ACCESS_COPY: a writable (copy-on-write) view, so torch.frombuffer needs no copy and warns
                    # about nothing; we never write to it, and the file on disk can never change through it.
                    self._mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) if size else None
            return self._mm

    def _read(self, key: str) -> torch.Tensor:
        info = self._index[key]
        start, end = self._entries[key]
        count = info.numel
        if count == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        mm = self._map()
        offset = self._data_start + start
        if end - start != info.nbytes:
            raise SourceError(f"tensor {key!r}: header offsets do not match its shape", where=self.ref)
        if offset % info.dtype.itemsize:  # unaligned data (rare writers): copy the bytes instead of viewing them
            buf = bytearray(mm[offset:offset + info.nbytes])
            return torch.frombuffer(buf, dtype=info.dtype, count=count).reshape(info.shape)
        return torch.frombuffer(mm, dtype=info.dtype, count=count, offset=offset).reshape(info.shape)

    def release(self, key: str) -> None:
        """Drop the mapped pages of a tensor already consumed, so a streaming merge's resident memory stays at the
        tensors in flight instead of growing to the size of every input (the page cache keeps the data)."""
        if self._mm is None or key not in self._entries:
            return
        start, end = self._entries[key]
        lo = (self._data_start + start) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = self._data_start + end
        if hi > lo:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError, AttributeError):  # platforms without madvise: memory is merely higher
                pass

    def close(self):
        # Tensors handed out may still view the mapping; dropping our reference lets it close when they are gone.
        self._mm = None


class MultiFileSource(TensorSource):
    """Several files holding disjoint tensors of one model (sharded checkpoints)."""

    def __init__(self, files: list[TensorSource], ref: str, path: Path, kind: str, **kw):
        super().__init__(ref=ref, path=path, kind=kind, **kw)
        self.files = files
        self._owner: dict[str, TensorSource] = {}
        for f in files:
            for k in f.keys():
                if k in self._owner:
                    raise SourceError(f"tensor {k!r} appears in two shards", where=ref)
                self._owner[k] = f
                self._index[k] = f.info(k)
        if files and not self.metadata:
            self.metadata = dict(files[0].metadata)

    def _read(self, key):
        return self._owner[key].get(key)

    def release(self, key):
        self._owner[key].release(key)

    def close(self):
        for f in self.files:
            f.close()
