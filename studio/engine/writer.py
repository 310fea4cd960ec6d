"""Streaming safetensors output.

Why our own writer: ``safetensors.torch.save_file`` needs every tensor of a shard in memory at once. The plan knows
every output tensor's name, shape and dtype before anything is computed, so we assign tensors to shards up front,
write each shard's header first, and append tensor bytes as results arrive. Peak memory is the tensors in flight,
not a shard. The files are standard safetensors (contiguous data, header padded with spaces to 8 bytes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sources.safetensors_file import ST_NAMES


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
    (Path(folder) / index_name).write_text(json.dumps({"metadata": meta, "weight_map": writer.weight_map()}, indent=2))
