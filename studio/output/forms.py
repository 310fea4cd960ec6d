"""What an output holds, when it is not the plan's tensors under the plan's names: the tensors of another layout.

A merge runs in its reference model's naming; the target may want another (an SD pipeline written as one ldm file, an
ldm checkpoint written as a diffusers folder). An :class:`OutputForm` lists the written tensors as
:class:`OutputEntry` items, each made of one or more of the plan's outputs (``parts``) by a small ``build``: the same
tensor, a reshape, a transpose, a slice of rows, rows concatenated. The :class:`Assembler` takes the plan's outputs in
plan order and hands back each entry as soon as its parts are in, keeping a part only until its last entry is written —
so the writer still streams, with at most a few tensors held (q, k and v waiting for their fused ``in_proj``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..sources.base import TensorInfo


def same(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0]


def concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Rows of the parts one after the other (q, k, v → a fused in_proj)."""
    return torch.cat(parts, dim=0)


def transposed(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0].t()


@dataclass(frozen=True)
class Rows:
    """Rows ``start:stop`` of the one part (a fused in_proj → q, k or v)."""
    start: int
    stop: int

    def __call__(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0][self.start:self.stop]


@dataclass(frozen=True)
class Reshape:
    """The one part in another shape with the same elements (a 1×1 conv ↔ a Linear)."""
    shape: tuple[int, ...]

    def __call__(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0].reshape(self.shape)


@dataclass(frozen=True)
class OutputEntry:
    name: str                                  # the name written
    info: TensorInfo                           # shape and dtype written
    parts: tuple[str, ...]                     # the plan's output keys it is made of
    build: Callable[[list[torch.Tensor]], torch.Tensor] = same


@dataclass
class OutputForm:
    """The tensors an output holds, in write order, and how its folder is laid out.

    ``components``: a folder output splits the names at their first dot into component folders (diffusers pipelines:
    ``unet.…`` → ``unet/``), whose weight files are named ``stems[component]`` (default
    ``diffusion_pytorch_model``). ``side_files(folder)``: writes the folder's configs instead of copying the reference
    model's. ``left_out``: plan outputs with no place in this form (named in the merge's warnings)."""

    entries: list[OutputEntry]
    components: bool = False
    stems: dict[str, str] = field(default_factory=dict)
    side_files: Callable[[Path], None] | None = None
    library: str | None = None
    left_out: list[str] = field(default_factory=list)


def identity_form(outputs: dict[str, TensorInfo], components: bool = False,
                  stems: dict[str, str] | None = None) -> OutputForm:
    """The plan's outputs as they are (same names, same tensors)."""
    return OutputForm([OutputEntry(k, info, (k,)) for k, info in outputs.items()], components, dict(stems or {}))


def in_write_order(entries: list[OutputEntry], plan_order: list[str]) -> list[OutputEntry]:
    """``entries`` sorted by when their last part arrives (stable), so each can be written as soon as it is whole."""
    position = {k: i for i, k in enumerate(plan_order)}
    return sorted(entries, key=lambda e: max(position[p] for p in e.parts))


class Assembler:
    """Feed the plan's outputs in plan order (``feed(key, tensor)``); get back (entry, tensor) pairs in the entries'
    order as they become complete. ``entries`` must be :func:`in_write_order` of the same plan order."""

    def __init__(self, entries: list[OutputEntry]):
        self.entries = entries
        self.uses = Counter(p for e in entries for p in e.parts)
        self.held: dict[str, torch.Tensor] = {}
        self.next = 0

    def feed(self, key: str, tensor: torch.Tensor) -> list[tuple[OutputEntry, torch.Tensor]]:
        if self.uses[key]:
            self.held[key] = tensor
        ready = []
        while self.next < len(self.entries) and all(p in self.held for p in self.entries[self.next].parts):
            entry = self.entries[self.next]
            ready.append((entry, entry.build([self.held[p] for p in entry.parts])))
            for p in entry.parts:
                self.uses[p] -= 1
                if not self.uses[p]:
                    del self.held[p]
            self.next += 1
        return ready

    def done(self) -> bool:
        return self.next == len(self.entries)
