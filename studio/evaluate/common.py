"""The shape every evaluator returns, and the two budgets."""

from __future__ import annotations

import re

from ..errors import StudioError

BUDGETS = ("preview", "report")
# metrics whose smaller numbers are the better model: ratios invert them, plots colour them bright
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})


def lower_is_better(score_name: str) -> bool:
    """Whether a score called ``score_name`` ("perplexity", "average perplexity", "val_loss") is better smaller."""
    return any(word in LOWER_IS_BETTER for word in re.split(r"[\s_]+", str(score_name).lower()))


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise StudioError(f"unknown evaluation budget {budget!r}", hint="use preview or report")


def result(metric: str, per_task: dict[str, float], samples, table: dict | None = None,
           notes: list[str] | None = None) -> dict:
    """``{"metric", "per_task", "average", "samples"}`` — the one shape of an evaluation.

    Two optional keys, present only when given:

    - ``"table"``: structured per-item results (the LLM preview's own evaluation set:
      ``{"file", "items", "match", "scoring", "accuracy": {name: %}, "rows": [{"line", "kind", "prompt", "expected",
      "answer", "correct", …}]}`` — see :func:`studio.preview.evalset.score_eval_set`);
    - ``"notes"``: sentences a person should read beside the numbers (e.g. "the tokenizer has no chat template: the
      prompts were used as they are").
    """
    values = list(per_task.values())
    out = {
        "metric": metric,
        "per_task": dict(per_task),
        "average": sum(values) / len(values) if values else float("nan"),
        "samples": samples,
    }
    if table is not None:
        out["table"] = table
    if notes:
        out["notes"] = list(notes)
    return out


def normalized(per_task: dict[str, float], reference: dict[str, float], metric: str) -> float:
    """Mean over tasks of value / reference (for perplexity, reference / value: higher is better everywhere)."""
    ratios = []
    for task, value in per_task.items():
        ref = reference[task]
        ratios.append(ref / value if lower_is_better(metric) else value / ref)
    return sum(ratios) / len(ratios)
