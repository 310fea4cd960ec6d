"""Task-vector statistics per layout group and for the whole model, streamed one tensor at a time.

For task vectors τ_i = θ_i − θ_base (i = 1…n, unweighted: the recipe's weights do not enter) and each group of
tensors (the layout's groups: ``EMB``, ``L00``…, ``HEAD``; SD blocks ``IN00``…) we report:

* ``sign_conflict`` — fraction of the group's entries where at least one τ_i > 0 and at least one τ_i < 0;
  ``sign_conflict_active`` — the same count over the entries where at least two τ_i are nonzero;
* ``mass_agreement`` — Σ|Σ_i τ_i| / Σ Σ_i |τ_i| (1 = no cancellation, small = the deltas cancel);
* ``pairwise_disagreement[i][j]`` — among entries where τ_i and τ_j are both nonzero, the fraction of opposite sign;
* ``elected_keep`` — TIES sign election γ = sign(Σ_i τ_i) (exact ties → +, as in mergekit); per model the fraction of
  its nonzero entries whose sign equals γ (``elected_keep_per_model``), and their mean over models;
* ``cosine[i][j]`` — cosine similarity of the flattened task vectors; ``norms[i]`` — their L2 norms.

With ``density`` the sign statistics are computed a second time (under ``"trimmed"``) after TIES top-k trimming of
every τ_i: per tensor (mergekit's convention), entries with |τ| ≥ the k-th largest magnitude, k = max(1, ⌊density·n⌋).

Only mergeable floating-point tensors present with the same shape in the base and every expert are counted.
Every quantity is a ratio of sums accumulated in float64 over chunks of at most ``CHUNK`` entries, so peak memory is
about (n + 2) copies of one chunk plus one full tensor per model when trimming — never a whole model. Undefined values
(0/0, e.g. the cosine of an all-zero task vector) are reported as ``None``.
"""

from __future__ import annotations

import math
import re
import time
from typing import Callable

import torch

from ..devices import resolve_device
from ..errors import StudioError
from ..layout import detect_layout, is_mergeable
from ..methods.order_statistics import kth_largest
from ..recipe import Recipe
from ..sources import DictSource, TensorSource, open_source

CHUNK = 1 << 22
SIGN_KEYS = ("sign_conflict", "sign_conflict_active", "mass_agreement", "pairwise_disagreement", "elected_keep",
             "elected_keep_per_model")

# tensor kinds for the block × kind heatmap (algorithms.md §5: attn qkv, attn out, mlp fc, mlp proj)
_KINDS = [
    ("attn_qkv", re.compile(r"(q_proj|k_proj|v_proj|qkv|query|key|value|to_q|to_k|to_v|c_attn|in_proj|wq|wk|wv)")),
    ("attn_out", re.compile(r"(o_proj|out_proj|attn\.proj|to_out|c_proj|dense\b|wo\b|attention\.output)")),
    ("mlp_in", re.compile(r"(gate_proj|up_proj|fc1|c_fc|mlp\.0|w1|w3|intermediate|ff\.net\.0|mlp\.fc\b|fc_in)")),
    ("mlp_out", re.compile(r"(down_proj|fc2|mlp\.2|w2|mlp\.proj|ff\.net\.2|fc_out|output\.dense)")),
    ("norm", re.compile(r"(norm|ln_|\.ln\d|layernorm|bn)")),
    ("embed", re.compile(r"(embed|wte|wpe|patch|pos_emb|cls_token|tok_emb)")),
]
KINDS = [k for k, _ in _KINDS] + ["other"]


def kind_of(key: str) -> str:
    """Rough tensor kind from its name (attn_qkv, attn_out, mlp_in, mlp_out, norm, embed, other)."""
    low = key.lower()
    for name, rx in _KINDS:
        if rx.search(low):
            return name
    return "other"


class _SignAcc:
    """Sums for the sign statistics of n task vectors (float64 / int64)."""

    def __init__(self, n: int):
        self.n = n
        self.numel = 0
        self.conflict = 0
        self.active = 0
        self.abs_of_sum = 0.0
        self.sum_of_abs = 0.0
        self.both = torch.zeros(n, n, dtype=torch.float64)
        self.disagree = torch.zeros(n, n, dtype=torch.float64)
        self.nonzero = torch.zeros(n, dtype=torch.float64)
        self.agree = torch.zeros(n, dtype=torch.float64)

    def add(self, T: torch.Tensor) -> None:
        """T: [n, m] float32 chunk of the (possibly trimmed) task vectors.

        Counts come from dot products of sign rows (exact: integers below 2²⁴ in float32 for chunks ≤ 2²²):
        ⟨|s_i|, |s_j|⟩ = entries where both are nonzero, ⟨s_i, s_j⟩ = agreements − disagreements,
        ⟨s_i, γ⟩ = (entries agreeing with the elected sign) − (entries against it).
        """
        n = self.n
        sgn = torch.sign(T)                                    # −1, 0, +1
        mag = sgn.abs()                                        # 1 where nonzero
        self.numel += T.shape[1]
        self.conflict += int(torch.count_nonzero((T.amax(0) > 0) & (T.amin(0) < 0)))
        self.active += int(torch.count_nonzero(mag.sum(0) >= 2))
        total = T.sum(0)
        self.abs_of_sum += float(torch.linalg.vector_norm(total, 1, dtype=torch.float64))
        gamma = total.ge_(0).to(torch.float32).mul_(2).sub_(1)  # elected sign, exact ties → +
        for i in range(n):
            nz_i = float(mag[i].sum())
            self.sum_of_abs += float(torch.linalg.vector_norm(T[i], 1, dtype=torch.float64))
            self.nonzero[i] += nz_i
            self.agree[i] += (nz_i + float(torch.dot(sgn[i], gamma))) / 2
            for j in range(i + 1, n):
                both = float(torch.dot(mag[i], mag[j]))
                dis = (both - float(torch.dot(sgn[i], sgn[j]))) / 2
                self.both[i, j] += both
                self.both[j, i] += both
                self.disagree[i, j] += dis
                self.disagree[j, i] += dis

    def merge(self, other: "_SignAcc") -> None:
        self.numel += other.numel
        self.conflict += other.conflict
        self.active += other.active
        self.abs_of_sum += other.abs_of_sum
        self.sum_of_abs += other.sum_of_abs
        self.both += other.both
        self.disagree += other.disagree
        self.nonzero += other.nonzero
        self.agree += other.agree

    def result(self) -> dict:
        n = self.n
        def pair(i, j):
            if i == j:
                return 0.0
            return _ratio(float(self.disagree[i, j]), float(self.both[i, j]))

        pairs = [[pair(i, j) for j in range(n)] for i in range(n)]
        per_model = [_ratio(float(self.agree[i]), float(self.nonzero[i])) for i in range(n)]
        defined = [v for v in per_model if v is not None]
        return {
            "sign_conflict": _ratio(self.conflict, self.numel),
            "sign_conflict_active": _ratio(self.conflict, self.active),
            "mass_agreement": _ratio(self.abs_of_sum, self.sum_of_abs),
            "pairwise_disagreement": pairs,
            "elected_keep": sum(defined) / len(defined) if defined else None,
            "elected_keep_per_model": per_model,
        }


class _GroupAcc:
    def __init__(self, n: int, trimmed: bool):
        self.n = n
        self.tensors = 0
        self.gram = torch.zeros(n, n, dtype=torch.float64)
        self.raw = _SignAcc(n)
        self.trim = _SignAcc(n) if trimmed else None

    def merge(self, other: "_GroupAcc") -> None:
        self.tensors += other.tensors
        self.gram += other.gram
        self.raw.merge(other.raw)
        if self.trim is not None:
            self.trim.merge(other.trim)

    def result(self) -> dict:
        n = self.n
        norms = [math.sqrt(max(float(self.gram[i, i]), 0.0)) for i in range(n)]
        def cosine(i, j):
            if norms[i] == 0 or norms[j] == 0:
                return None
            return max(-1.0, min(1.0, float(self.gram[i, j]) / (norms[i] * norms[j])))

        cos = [[cosine(i, j) for j in range(n)] for i in range(n)]
        out = {"tensors": self.tensors, "numel": self.raw.numel, "cosine": cos, "norms": norms}
        out.update(self.raw.result())
        out["trimmed"] = self.trim.result() if self.trim is not None else None
        return out


def _add_gram(gram: torch.Tensor, T: torch.Tensor) -> None:
    # pairwise dots rather than T @ T.T: a [n, m] × [m, n] product is slow on small, thread-contended CPUs
    n = T.shape[0]
    for i in range(n):
        for j in range(i, n):
            d = float(torch.dot(T[i], T[j]))
            gram[i, j] += d
            if i != j:
                gram[j, i] += d


def _ratio(a: float, b: float):
    return float(a) / float(b) if b else None


def _trim_threshold(tau: torch.Tensor, density: float) -> float | None:
    """Magnitude threshold keeping the top ``density`` fraction (None: keep all; +inf: keep none)."""
    n = tau.numel()
    if density >= 1 or n == 0:
        return None
    if density <= 0:
        return math.inf
    k = max(1, int(density * n))
    return float(kth_largest(tau.abs().reshape(-1), k))


def resolve_inputs(recipe_or_sources, base=None):
    """→ (base source, [expert sources], [names])."""
    if isinstance(recipe_or_sources, (str, dict)) or hasattr(recipe_or_sources, "merge_method"):
        r = recipe_or_sources
        if isinstance(r, str):
            r = Recipe.load(r)
        elif isinstance(r, dict):
            r = Recipe.from_dict(r)
        base_ref = base or r.base_model or next((sl.base_model for sl in r.slices or [] if sl.base_model), None)
        if base_ref is None:
            raise StudioError("task vectors need a base model, and this recipe has none",
                              hint="add base_model: to the recipe (the model the experts were fine-tuned from)")
        refs = []
        for m in r.input_models():
            if m.model != base_ref and m.model not in refs:
                refs.append(m.model)
        if not refs:
            raise StudioError("the recipe has no models besides the base", hint="list the fine-tuned models")
        return _open(base_ref), [_open(x) for x in refs], refs
    items = list(recipe_or_sources)
    if base is not None:
        items = [base] + items
    if len(items) < 2:
        raise StudioError("need a base model and at least one fine-tuned model")
    srcs = [_open(x) for x in items]
    return srcs[0], srcs[1:], [s.ref for s in srcs[1:]]


def _open(x) -> TensorSource:
    if isinstance(x, TensorSource):
        return x
    if isinstance(x, dict):
        return DictSource(x)
    return open_source(str(x))


def task_vector_stats(recipe_or_sources, density: float | None = None,
                      progress: Callable[[float, str], None] | None = None, device: str = "cpu",
                      base=None, chunk: int = CHUNK) -> dict:
    """Sign-conflict, agreement, similarity and norm statistics of the task vectors, per group and overall.

    ``recipe_or_sources``: a Recipe (or a YAML path / dict) — τ_i for every input model other than its base_model —
    or a sequence ``[base, expert, …]`` of references, TensorSources or state dicts (``base=`` puts a base in front).
    ``density``: also report the sign statistics after per-tensor top-k trimming (``"trimmed"``).
    ``progress(fraction, message)`` is called after every tensor.

    Returns a JSON-able dict: ``models`` (expert names), ``layout``, ``group_order``, ``labels``, ``density``,
    ``groups`` (list, layout order, each ``{"group", "label", "tensors", "numel", "sign_conflict",
    "sign_conflict_active", "mass_agreement", "pairwise_disagreement", "elected_keep", "elected_keep_per_model",
    "cosine", "norms", "trimmed"}``), ``overall`` (same keys, whole model), ``kinds`` (tensor kinds) and
    ``cells`` (``{group: {kind: {"sign_conflict", "mass_agreement", "numel"}}}`` for the group × kind heatmap),
    ``skipped`` (tensors left out and why), ``seconds``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    base_src, experts, names = resolve_inputs(recipe_or_sources, base)
    if density is not None and not 0 <= float(density) <= 1:
        raise StudioError(f"density must be in [0, 1], got {density}")
    n = len(experts)
    layout = detect_layout(base_src)
    trimmed = density is not None
    groups: dict[str, _GroupAcc] = {}
    cells: dict[str, dict[str, _SignAcc]] = {}
    skipped: list[str] = []
    keys = base_src.keys()
    for idx, key in enumerate(keys):
        info = base_src.info(key)
        if not is_mergeable(key, info.dtype) or info.numel == 0:
            continue
        missing = [s.ref for s in experts if key not in s or s.info(key).shape != info.shape]
        if missing:
            skipped.append(f"{key}: absent or reshaped in {missing[0]}")
            continue
        g = layout.group_of(key)
        acc = groups.setdefault(g, _GroupAcc(n, trimmed))
        cell = cells.setdefault(g, {}).setdefault(kind_of(key), _SignAcc(n))
        acc.tensors += 1
        with torch.no_grad():
            b = base_src.get(key).to(dev, torch.float32).reshape(-1)
            taus = []
            for s in experts:
                taus.append(s.get(key).to(dev, torch.float32).reshape(-1) - b)
                s.release(key)
            base_src.release(key)
            del b
            thr = [_trim_threshold(t, float(density)) for t in taus] if trimmed else None
            P = taus[0].numel()
            for start in range(0, P, chunk):
                T = torch.stack([t[start:start + chunk] for t in taus])
                _add_gram(acc.gram, T)
                acc.raw.add(T)
                cell.add(T)
                if trimmed:
                    for i, th in enumerate(thr):
                        if th is not None:
                            T[i].masked_fill_(T[i].abs() < th, 0.0)
                    acc.trim.add(T)
                del T
            del taus
        if progress is not None:
            progress((idx + 1) / len(keys), f"task vectors: {key}")
    if not groups:
        raise StudioError("no tensor is shared by the base and every model", where=base_src.ref,
                          hint="the models must share an architecture; run `python -m studio inspect` on them")
    order = [g for g in layout.groups if g in groups] + [g for g in groups if g not in layout.groups]
    overall = _GroupAcc(n, trimmed)
    out_groups = []
    for g in order:
        overall.merge(groups[g])
        out_groups.append({"group": g, "label": layout.labels.get(g, g), **groups[g].result()})
    kinds_used = [k for k in KINDS if any(k in cells[g] for g in cells)]
    out_cells = {g: {k: {"sign_conflict": _ratio(c.conflict, c.numel),
                         "mass_agreement": _ratio(c.abs_of_sum, c.sum_of_abs), "numel": c.numel}
                     for k, c in cells[g].items()} for g in order}
    return {
        "models": names,
        "base": base_src.ref,
        "layout": layout.name,
        "group_order": order,
        "labels": {g: layout.labels.get(g, g) for g in order},
        "density": density,
        "groups": out_groups,
        "overall": {"group": "overall", "label": "whole model", **overall.result()},
        "kinds": kinds_used,
        "cells": out_cells,
        "skipped": skipped,
        "device": str(dev),
        "seconds": time.perf_counter() - t0,
    }
