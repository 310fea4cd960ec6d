"""The HTML report of ``python -m studio search``: convergence per objective, setting importances, and for several
objectives the Pareto front, over a summary of the search and its best recipe."""

from __future__ import annotations

import html

from ..figures import param_importance_figure, pareto_figure, report_html, search_convergence
from .study import Search, _optuna, best_trials, completed, trial_rows

# fANOVA fits a forest to the trials: below this many it explains noise
MIN_TRIALS_FOR_IMPORTANCE = 10


def importances(study, search: Search) -> list[tuple[str, dict[str, float] | str]]:
    """Per objective: ``(name, {setting: share of variance})`` or ``(name, why there is none)``."""
    n = len(completed(study))
    if len(search.dims) < 2:
        return [(o.name, "one setting searched: nothing to compare its importance with") for o in search.objectives]
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return [(o.name, f"{n} completed trials: importances need at least {MIN_TRIALS_FOR_IMPORTANCE}")
                for o in search.objectives]
    optuna = _optuna()
    out = []
    for i, o in enumerate(search.objectives):
        try:
            got = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=search.seed),
                target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError, ZeroDivisionError) as e:  # e.g. every trial scored the same
            out.append((o.name, f"no importances ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"))
            continue
        out.append((o.name, {k: float(v) for k, v in got.items()}))
    return out


def _summary(study, search: Search, name: str, storage: str | None, best: list) -> str:
    rows = trial_rows(study, search)
    states = [r["state"] for r in rows]
    seconds = sum(r["seconds"] or 0 for r in rows)
    objectives = ", ".join(f"{html.escape(o.name)} ({d[:3]})" for o, d in zip(search.objectives, search.directions))
    table = [("search", f"{html.escape(name)} in {html.escape(storage or 'memory')}"),
             ("sampler", f"{search.sampler} · seed {search.seed} · batches of {search.batch}"),
             ("objectives", objectives),
             ("settings", ", ".join(f"{html.escape(d.name)} ∈ [{d.low:g}, {d.high:g}]" for d in search.dims)),
             ("trials", f"{states.count('complete')} complete, {states.count('fail')} failed, "
                        f"{seconds:.1f} s of merging and scoring")]
    if best:
        label = "best trial" if len(best) == 1 else f"Pareto front ({len(best)} trials)"
        table.append((label, "<br>".join(
            f"trial {t.number}: " + ", ".join(f"{html.escape(o.name)} = {v:.5g}" for o, v in zip(search.objectives,
                                                                                             t.values))
            for t in best)))
    body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                   for k, v in table)
    return f"<table>{body}</table>"


def build_search_report(study, search: Search, name: str = "search", storage: str | None = None,
                        title: str = "Merge Studio search") -> str:
    """HTML text with every figure (plotly.js inlined once)."""
    rows = trial_rows(study, search)
    best = best_trials(study, search)
    names = [o.name for o in search.objectives]
    sections: list = [("Summary", _summary(study, search, name, storage, best))]
    for o, d in zip(names, search.directions):
        sections.append((f"Convergence: {o}", search_convergence(rows, o, d)))
    if len(names) > 1:
        sections.append(("Pareto front", pareto_figure(rows, names, search.directions, [t.number for t in best])))
    for o, got in importances(study, search):
        sections.append((f"Setting importance: {o}", param_importance_figure(got, o) if isinstance(got, dict)
                         else f"<p>{html.escape(got)}</p>"))
    if best:
        sections.append(("Best recipe" if len(best) == 1 else f"First recipe of the front (trial {best[0].number})",
                         f"<pre>{html.escape(best[0].user_attrs.get('recipe', ''))}</pre>"))
    return report_html(sections, title=title)
