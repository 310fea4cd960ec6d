"""Streaming safetensors output.

Why our own writer: ``safetensors.torch.save_file`` needs every tensor of a shard in memory at once. The plan knows
every output tensor's name, shape and dtype before anything is computed, so we assign tensors to shards up front,
write each shard's header first, and append tensor bytes as results arrive. Peak memory is the tensors in flight,
not a shard. The files are standard safetensors (contiguous data, header padded with spaces to 8 bytes).

``ShardWriter`` writes the engine's planned shards; ``write_safetensors`` streams one file atomically from a
name → shape/dtype table and a fetch function (LoRA bakes, extractions, synthetic checkpoints); ``save_tensors``
writes a dict of tensors already in memory (learned weights, LoRA factors, small exports).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from typing import Callable

import torch
from tqdm import tqdm

from ..errors import StudioError
from ..sources.base import TensorInfo
from ..sources.safetensors_file import ST_NAMES
from .target import AtomicTarget, write_text


@dataclass
class ShardSpec:
    filename: str
    names: list[str] = field(default_factory=list)
    shapes: list[tuple] = field(default_factory=list)
    dtypes: list[torch.dtype] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        total = 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            n = 1
            for s in shape:
                n *= s
            total += n * dtype.itemsize
        return total


def plan_shards(entries: list[tuple[str, tuple, torch.dtype]], max_shard_bytes: int, prefix: str = "model",
                single_name: str | None = None) -> list[ShardSpec]:
    """Split (name, shape, dtype) entries, in order, into shards of at most ``max_shard_bytes`` (one big tensor may
    exceed it alone). Files are named ``{prefix}-0000k-of-0000n.safetensors``, or ``single_name`` when given."""
    shards: list[ShardSpec] = [ShardSpec("")]
    size = 0
    for name, shape, dtype in entries:
        n = dtype.itemsize
        for s in shape:
            n *= s
        if shards[-1].names and size + n > max_shard_bytes:
            shards.append(ShardSpec(""))
            size = 0
        shards[-1].names.append(name)
        shards[-1].shapes.append(tuple(shape))
        shards[-1].dtypes.append(dtype)
        size += n
    total = len(shards)
    for i, sh in enumerate(shards):
        sh.filename = single_name if single_name and total == 1 else f"{prefix}-{i + 1:05d}-of-{total:05d}.safetensors"
    return shards


def _header_bytes(spec: ShardSpec, metadata: dict[str, str] | None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes):
        n = dtype.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class ShardWriter:
    """Writes planned shards sequentially; ``write(name, tensor)`` must follow the planned order."""

    def __init__(self, folder: Path, shards: list[ShardSpec], metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.shards = shards
        self.metadata = metadata
        self._order = [(si, j, name) for si, sh in enumerate(shards) for j, name in enumerate(sh.names)]
        self._pos = 0
        self._file = None
        self._shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        si, j, expected = self._order[self._pos]
        if name != expected:
            raise RuntimeError(f"writer expected {expected}, got {name}")
        sh = self.shards[si]
        if tuple(tensor.shape) != sh.shapes[j] or tensor.dtype != sh.dtypes[j]:
            raise RuntimeError(f"{name}: planned {sh.shapes[j]} {sh.dtypes[j]}, got {tuple(tensor.shape)} {tensor.dtype}")
        if si != self._shard:
            self._close_file()
            self._file = open(self.folder / sh.filename, "wb")
            self._file.write(_header_bytes(sh, self.metadata))
            self._shard = si
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # reshape first: 0-dim tensors
        self._pos += 1
        if self._pos == len(self._order) or self._order[self._pos][0] != si:
            self._close_file()

    def _close_file(self):
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self):
        self._close_file()
        if not self._order:  # nothing to write is still a valid file: a header with no tensors
            with open(self.folder / self.shards[0].filename, "wb") as f:
                f.write(_header_bytes(self.shards[0], self.metadata))
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")

    def weight_map(self) -> dict[str, str]:
        return {name: sh.filename for sh in self.shards for name in sh.names}

    def total_size(self) -> int:
        return sum(sh.nbytes for sh in self.shards)


def write_index(folder: Path, writer: ShardWriter, index_name: str = "model.safetensors.index.json",
                extra_metadata: dict | None = None) -> None:
    meta = {"total_size": writer.total_size()}
    meta.update(extra_metadata or {})
    write_text(Path(folder) / index_name, json.dumps({"metadata": meta, "weight_map": writer.weight_map()}, indent=2))


def _written_dtype(stored: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    # integer and boolean tensors (position ids, masks) keep their dtype: casting them would change their meaning
    return dtype if dtype is not None and stored.is_floating_point else stored


def write_safetensors(path: Path, infos: dict[str, TensorInfo], fetch: Callable[[str], torch.Tensor],
                      metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                      progress: str | None = None) -> Path:
    """Write ``infos`` (name → shape/dtype, in order) to one file ``path`` atomically, calling ``fetch(name)`` per
    tensor; floating tensors are cast to ``dtype`` when given. ``progress``: a label for a tqdm bar. Returns ``path``."""
    path = Path(path)
    entries = [(name, tuple(info.shape), _written_dtype(info.dtype, dtype)) for name, info in infos.items()]
    with AtomicTarget(path, is_file=True) as tmp:
        # one shard with no size limit, named like the temporary file so that the rename completes it
        writer = ShardWriter(tmp.parent, plan_shards(entries, 1 << 62, single_name=tmp.name), metadata)
        items = entries
        if progress:
            items = tqdm(entries, desc=progress, unit="tensor", leave=False)
        for name, shape, out_dtype in items:
            t = fetch(name)
            if tuple(t.shape) != shape:
                raise StudioError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            writer.write(name, t.to(out_dtype))
            del t
        writer.close()
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Write ``tensors`` (in their order) as one ``.safetensors`` file atomically, floating ones cast to ``dtype``
    when given. Returns ``path``."""
    infos = {name: TensorInfo(tuple(t.shape), t.dtype) for name, t in tensors.items()}
    return write_safetensors(path, infos, tensors.__getitem__, metadata, dtype)
