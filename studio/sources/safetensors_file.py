"""safetensors files read through our own header parser and a copy-on-write mmap.

Why not ``safetensors.safe_open``: its ``get_tensor`` copies every tensor out of the mapping, and the engine then
converts to float32, a second full pass over memory. A ``torch.frombuffer`` view on the mapping lets the float32
conversion be the only copy, which is a measurable share of a streaming merge's time. The header format is tiny and
stable (8-byte little-endian length + JSON), so parsing it here costs nothing and lets ``inspect`` read many files'
headers without mapping them. The header is checked whole when a file is opened, as safetensors' own reader checks
it, so a damaged file fails there with the tensor named, and every read after trusts its offsets.
"""

from __future__ import annotations

import json
import math
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
# Bits per element of every dtype the format names, ours or not: the header is checked as safetensors' own reader
# checks it, so a file it accepts opens here (and one with a dtype torch lacks fails on that, not on its size).
ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
           "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
           "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
MAX_HEADER = 100 * 1024 * 1024
ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


def _count(v) -> bool:
    return type(v) is int and v >= 0  # (not bool: JSON true is no size)


def _name(name: str) -> str:
    """A tensor name as a message shows it: quoted, escaped (one line), and cut short when it is long."""
    text = repr(name)
    return text if len(text) <= 80 else text[:60] + "…" + text[-16:]


def _checked(header, path: Path, data_bytes: int) -> tuple[dict, dict]:
    """The header's tensor entries and ``__metadata__``, after checking the whole header once, as safetensors itself
    does: every entry a mapping with a known dtype, a shape of non-negative integers and two offsets spanning exactly
    itemsize × numel bytes; the entries, sorted by offset, tile the data section from 0 to its last byte with no gap
    and no overlap. Every later read trusts these numbers."""
    def bad(what, name=None):
        return SourceError(what if name is None else f"tensor {_name(name)} {what}", where=str(path),
                           hint="the file is damaged or was not written as safetensors; re-download or re-export it")

    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object of tensor entries")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ is not a mapping of names to strings")
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict):
            raise bad(f"has a {type(e).__name__} for its entry, not a mapping of {', '.join(ENTRY_FIELDS)}", name)
        missing = [f for f in ENTRY_FIELDS if f not in e]
        if missing:
            raise bad(f"has no {' or '.join(missing)} in its entry", name)
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ST_BITS:
            raise bad(f"has an unknown dtype {str(dtype)[:20]!r}", name)
        if not isinstance(shape, list) or not all(map(_count, shape)):
            raise bad(f"has shape {str(shape)[:40]}, not a list of non-negative integers", name)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)):
            raise bad(f"has data_offsets {str(offsets)[:40]}, not two non-negative integers", name)
        bits = ST_BITS[dtype] * math.prod(shape)
        start, end = offsets
        if bits % 8 or end - start != bits // 8:
            raise bad(f"spans {end - start} bytes, but {dtype} of shape {shape} takes {bits / 8:g}", name)
        spans.append((start, end, name))
    spans.sort()
    at = 0
    for start, end, name in spans:
        if start != at:
            raise bad(f"starts at byte {start} of the data, " + (f"inside another tensor (which ends at {at})"
                      if start < at else f"leaving bytes {at}–{start} unused"), name)
        if end > data_bytes:
            raise bad(f"ends at byte {end}, past the end of the data ({data_bytes} bytes): the file is truncated", name)
        at = end
    if at != data_bytes:
        raise bad(f"the file has {data_bytes - at} bytes after its last tensor that no header entry covers")
    return header, meta


def read_header(path: Path) -> tuple[dict, dict, int]:
    """Return (tensor entries, __metadata__, byte offset of the data section). Reads only the header, and checks all
    of it against the file's size (:func:`_checked`): a SourceError names what does not hold."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) != 8:
                raise SourceError("file is too short to be safetensors", where=str(path))
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise SourceError(f"not a safetensors file (header length {n} in a file of {size} bytes)",
                                  where=str(path))
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        msg = str(e).splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SourceError(f"cannot read safetensors header ({msg})", where=str(path)) from None
    entries, meta = _checked(header, Path(path), size - 8 - n)
    return entries, meta, 8 + n


class SafetensorsFile(TensorSource):
    def __init__(self, path: Path, ref: str | None = None, **kw):
        super().__init__(ref=ref or str(path), path=Path(path), kind=kw.pop("kind", "safetensors"), **kw)
        entries, meta, self._data_start = read_header(self.path)  # checked whole: reads below trust its numbers
        self.metadata = dict(meta)
        self._entries = {}
        end = 0
        for name, e in entries.items():
            try:
                dtype = ST_DTYPES[e["dtype"]]
            except KeyError:
                raise SourceError(f"tensor {_name(name)} has unsupported dtype {e['dtype']!r}", where=str(path),
                                  hint=f"supported: {', '.join(ST_DTYPES)}") from None
            self._index[name] = TensorInfo(tuple(e["shape"]), dtype)
            self._entries[name] = tuple(e["data_offsets"])
            end = max(end, e["data_offsets"][1])
        self._size = self._data_start + end  # the file's size when its header was checked
        self._mm: mmap.mmap | None = None
        self._lock = threading.Lock()  # the engine reads from several threads; map the file once

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mm is None:
                with open(self.path, "rb") as fh:  # mmap keeps its own handle; ours can close at once
                    size = os.fstat(fh.fileno()).st_size
                    if size != self._size:
                        raise SourceError(f"the file changed since it was opened ({self._size} bytes, now {size})",
                                          where=self.ref, hint="open it again")
                    # ACCESS_COPY: a writable (copy-on-write) view, so torch.frombuffer needs no copy and warns
                    # about nothing; we never write to it, and the file on disk can never change through it.
                    self._mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) if size else None
            return self._mm

    def _read(self, key: str) -> torch.Tensor:
        info = self._index[key]
        start, _ = self._entries[key]
        count = info.numel
        if count == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        mm = self._map()
        offset = self._data_start + start
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
