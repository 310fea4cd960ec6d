"""Layouts inferred from key names, for architectures no hand-written table knows.

A *run* is a stack of repeated blocks: the keys whose first all-digit segment follows a stack name (``blocks``,
``layers``, ``h``, ``layer``, ``block``, ``resblocks``, ``*_blocks``, ``*_layers``): ``double_blocks.7.``,
``transformer_blocks.3.``, ``model.layers.4.``. Only the outermost index counts, so nested stacks stay inside their
block (``model.layers.3.mlp.experts.5.`` belongs to layer 3; ``input_blocks.4.1.transformer_blocks.0.`` to input
block 4). Keys outside every run go to ``IN`` (embeddings, patchify, time/text conditioning) or, when their name says
final norm / head / output, to ``OUT``: key order cannot decide this, since safetensors files store keys sorted.

Groups are ordered as the forward pass runs: IN, each run's blocks by index, OUT. Runs follow their first key's
appearance, except sibling pairs whose order is known (double before single, input/down before output/up, encoder
before decoder). Block ids: ``D00…`` double and ``S00…`` single blocks (Flux's naming, so they agree with its table),
``B00…`` for a lone run, otherwise a letter from the run's name (``I00…``/``O00…`` for input/output blocks).
Positions for gradient lists are group index / (G − 1), as in the hand-written block tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Layout

STACK_NAME = re.compile(r"^(?:\w*_)?(?:blocks|layers)$|^(?:h|layer|block|resblocks)$")
GENERIC_STACK = frozenset({"blocks", "layers", "h", "layer", "block", "resblocks"})
OUT_NAME = re.compile(r"^(final_layer|final_layer_norm|final_norm|norm_out|proj_out|conv_out|lm_head|head|ln_f|norm|out|"
                      r"output|classifier|score)$")
# (earlier, later): sibling runs that differ only in this segment run in this order whatever the key order
KNOWN_ORDER = {"double_blocks": 0, "single_blocks": 1, "transformer_blocks": 0, "single_transformer_blocks": 1,
               "input_blocks": 0, "output_blocks": 1, "down_blocks": 0, "up_blocks": 1, "encoder": 0, "decoder": 1}
DOUBLE, SINGLE = frozenset({"double_blocks"}), frozenset({"single_blocks", "single_transformer_blocks"})


def is_output(key: str, run_prefixes) -> bool:
    """Whether a key outside the runs is a final norm / head / output: the name of its module at the runs' level
    (below the longest prefix it shares with a run: ``model.norm`` beside ``model.layers``, ``lm_head`` at the top)
    says so. Deeper names do not count (``middle_block.1.proj_out`` is not an output)."""
    parts = key.split(".")
    depth = 0
    for prefix in run_prefixes:
        seg = prefix.split(".")
        n = 0
        while n < min(len(seg), len(parts) - 1) and seg[n] == parts[n]:
            n += 1
        depth = max(depth, n)
    return depth < len(parts) and OUT_NAME.match(parts[depth]) is not None


def split_run(key: str) -> tuple[str, int] | None:
    """``(run prefix, block index)`` of a key inside a run, else None."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            if i > 0 and STACK_NAME.match(parts[i - 1]):
                return ".".join(parts[:i]), int(part)
            return None
    return None


@dataclass
class Run:
    prefix: str
    first_seen: int
    indices: list[int]
    letter: str = "B"

    @property
    def segments(self) -> list[str]:
        return self.prefix.split(".")


def _known_rank_between(a: Run, b: Run) -> int | None:
    """b's rank minus a's where a and b are siblings differing in one known segment (double/single …), else None."""
    sa, sb = a.segments, b.segments
    if len(sa) != len(sb):
        return None
    diff = [(x, y) for x, y in zip(sa, sb) if x != y]
    if len(diff) == 1 and all(s in KNOWN_ORDER for s in diff[0]):
        return KNOWN_ORDER[diff[0][1]] - KNOWN_ORDER[diff[0][0]]
    return None


def _order_runs(runs: list[Run]) -> list[Run]:
    ordered = sorted(runs, key=lambda r: r.first_seen)
    # insertion sort: a known sibling order overrides first appearance, anything else keeps it
    out: list[Run] = []
    for r in ordered:
        pos = len(out)
        for j, q in enumerate(out):
            d = _known_rank_between(r, q)
            if d is not None and d > 0:
                pos = j
                break
        out.insert(pos, r)
    return out


def _run_word(run: Run) -> str:
    for seg in reversed(run.segments):
        if seg not in GENERIC_STACK:
            return re.sub(r"_(blocks|layers)$", "", seg)
    return "blocks"


def _assign_letters(runs: list[Run]) -> None:
    if len(runs) == 1 and not (set(runs[0].segments) & (DOUBLE | SINGLE)):
        runs[0].letter = "B"
        return
    has_single = any(r.segments[-1] in SINGLE for r in runs)
    for r in runs:
        last = r.segments[-1]
        if last in DOUBLE or (last == "transformer_blocks" and has_single):
            r.letter = "D"
        elif last in SINGLE:
            r.letter = "S"
        else:
            r.letter = _run_word(r)[:1].upper() or "B"
    for rename in (lambda r: _run_word(r).upper()[:2], lambda r: f"R{runs.index(r)}"):
        clashing = _clashing(runs)
        if not clashing:
            return
        for r in clashing:
            r.letter = rename(r)


def _clashing(runs: list[Run]) -> list[Run]:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.letter] = seen.get(r.letter, 0) + 1
    return [r for r in runs if seen[r.letter] > 1]


class InferredLayout(Layout):
    """IN, each run's blocks in forward order, OUT: inferred from key names (see the module docstring)."""

    def __init__(self, runs: list[Run], has_in: bool, has_out: bool):
        self.runs = runs
        self._run_of = {r.prefix: r for r in runs}
        self._block_id: dict[tuple[str, int], str] = {}
        groups, labels = [], {}
        if has_in:
            groups.append("IN")
            labels["IN"] = "inputs and embeddings"
        for r in runs:
            width = max(2, len(str(max(r.indices))))
            for i in r.indices:
                gid = f"{r.letter}{i:0{width}d}"
                self._block_id[(r.prefix, i)] = gid
                groups.append(gid)
                labels[gid] = f"{r.prefix} {i}"
        if has_out:
            groups.append("OUT")
            labels["OUT"] = "final norm, head and outputs"
        desc = ", ".join(f"{r.prefix} × {len(r.indices)}" for r in runs)
        super().__init__(name="inferred", groups=groups, labels=labels, shape="strip",
                         description=f"inferred from key names: {desc}")

    def block_at(self, prefix: str, index: int) -> str | None:
        """The block id of ``<prefix>.<index>.``: its own, or for an index this layout was not built with the run's
        nearest block; None when no run has that prefix."""
        block = self._block_id.get((prefix, index))
        run = self._run_of.get(prefix)
        if block is None and run is not None:
            block = self._block_id[(prefix, min(run.indices, key=lambda i: abs(i - index)))]
        return block

    def group_of(self, key: str) -> str:
        hit = split_run(key)
        block = self.block_at(*hit) if hit is not None else None
        if block is not None:
            return block
        if is_output(key, [r.prefix for r in self.runs]):
            return "OUT" if "OUT" in self.groups else self.groups[-1]
        return "IN" if "IN" in self.groups else self.groups[0]


def infer_layout(keys) -> InferredLayout | None:
    """The block layout that key names imply; None when no key is inside a run of blocks."""
    runs: dict[str, Run] = {}
    outside = []
    for n, k in enumerate(keys):
        hit = split_run(k)
        if hit is None:
            outside.append(k)
            continue
        prefix, i = hit
        run = runs.setdefault(prefix, Run(prefix, n, []))
        run.indices.append(i)
    if not runs:
        return None
    n_out = sum(is_output(k, runs) for k in outside)
    has_in, has_out = n_out < len(outside), n_out > 0
    for r in runs.values():
        r.indices = sorted(set(r.indices))
    ordered = _order_runs(list(runs.values()))
    _assign_letters(ordered)
    return InferredLayout(ordered, has_in, has_out)


def detect_inferred_layout(keys, config, source):
    """Detector hook for studio.layout.DETECTORS, tried last: models with a run of blocks nothing above recognises."""
    return infer_layout(keys)


@dataclass
class BlockRow:
    group: str
    label: str
    tensors: int
    params: int
    examples: list[str]


def block_map(layout: Layout, source, examples: int = 3) -> list[BlockRow]:
    """One row per group of ``layout`` in its order: tensors, parameters and a few example keys from ``source``."""
    keys_by_group = layout.group_keys(source.keys())
    rows = []
    for g in layout.groups + [g for g in keys_by_group if g not in layout.groups]:
        keys = keys_by_group.get(g, [])
        rows.append(BlockRow(g, layout.labels.get(g, g), len(keys), sum(source.info(k).numel for k in keys),
                             keys[:examples]))
    return rows
