"""A session's history: every previewed recipe with its numbers, newest last (the History panel shows it newest
first, and restores an entry by its number)."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

MAX_HISTORY = 500


@dataclass
class HistoryEntry:
    id: int
    when: float
    recipe: dict
    method: str
    average: float | None
    per_task: dict
    metric: str
    latency_ms: float


def record(history: list[HistoryEntry], recipe: dict, result: dict, seconds: float) -> None:
    """Add a row for this preview; the same recipe previewed again (a re-run, a refused edit, new prompts) updates
    its latest row, keeping its number, instead of repeating it."""
    r = result or {}
    again = bool(history) and history[-1].recipe == recipe
    entry = HistoryEntry(
        id=history[-1].id + (0 if again else 1) if history else 1, when=time.time(), recipe=copy.deepcopy(recipe),
        method=recipe.get("merge_method", "?"), average=r.get("average"), per_task=dict(r.get("per_task") or {}),
        metric=r.get("metric", ""), latency_ms=round(seconds * 1000, 1))
    if again:
        history[-1] = entry
    else:
        history.append(entry)
    del history[:-MAX_HISTORY]


FIELDS = tuple(f.name for f in dataclasses.fields(HistoryEntry))


def dump(history: list[HistoryEntry]) -> list[dict]:
    """The history as plain data (JSON-able: the browser keeps it across page reloads). Entries are never changed
    once recorded (a re-run replaces its row), so their recipes are shared, not copied: this runs on every event."""
    return [{f: getattr(h, f) for f in FIELDS} for h in history]


def load(data) -> list[HistoryEntry]:
    """Entries from :func:`dump`'s data; malformed ones (the data comes from the page) are left out."""
    out = []
    for d in data if isinstance(data, list) else []:
        try:
            h = HistoryEntry(**d)
        except TypeError:
            continue
        if isinstance(h.id, int) and isinstance(h.recipe, dict) and isinstance(h.per_task, dict):
            out.append(h)
    return out[-MAX_HISTORY:]


def find(history: list[HistoryEntry], entry_id: int) -> HistoryEntry | None:
    return next((h for h in history if h.id == int(entry_id)), None)


def rows(history: list[HistoryEntry], label) -> list[list]:
    """Newest first: #, time, method, settings, average, metric, latency ms (``label(ref)`` names a model)."""
    return [[h.id, time.strftime("%H:%M:%S", time.localtime(h.when)), h.method, settings_summary(h.recipe, label),
             None if h.average is None else round(float(h.average), 4), h.metric, h.latency_ms]
            for h in reversed(history)]


def settings_summary(recipe: dict, label, limit: int = 120) -> str:
    parts = [f"{k}={_short(v)}" for k, v in (recipe.get("parameters") or {}).items()]
    for m in recipe.get("models") or []:
        parts += [f"{k}[{label(m['model'])}]={_short(v)}" for k, v in (m.get("parameters") or {}).items()]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return "per-layer" if isinstance(v, dict) or not all(isinstance(x, dict) for x in v) else "rules"
    return str(v)
