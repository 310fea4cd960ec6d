"""The self-contained HTML report of ``python -m studio analyze``: statistics figures, optional landscapes."""

from __future__ import annotations

import html

from ..figures import landscape_figure, report_html, stats_figures


def _table(stats: dict) -> str:
    ov = stats["overall"]
    rows = [("models", ", ".join(html.escape(m) for m in stats["models"])), ("base", html.escape(stats["base"])),
            ("layout", f"{html.escape(stats['layout'])} · {len(stats['groups'])} groups · {ov['tensors']} tensors · "
                       f"{ov['numel']:,} entries"),
            ("sign conflict (whole model)", _pct(ov["sign_conflict"])),
            ("mass agreement", _pct(ov["mass_agreement"])),
            ("elected-sign keep", _pct(ov["elected_keep"]))]
    if ov.get("trimmed"):
        rows.append((f"sign conflict after trimming to density {stats['density']:g}",
                     _pct(ov["trimmed"]["sign_conflict"])))
    if stats.get("skipped"):
        rows.append(("tensors left out", f"{len(stats['skipped'])} (e.g. {html.escape(stats['skipped'][0])})"))
    rows.append(("task-vector statistics computed in", f"{stats['seconds']:.2f} s on {stats.get('device', 'cpu')}"))
    body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


NOTES = ("<p>τ<sub>i</sub> = θ<sub>i</sub> − θ<sub>base</sub>. <b>Sign conflict</b>: fraction of entries where some τ "
         "is positive and another negative. <b>Mass agreement</b>: Σ|Σ<sub>i</sub>τ<sub>i</sub>| / ΣΣ<sub>i</sub>"
         "|τ<sub>i</sub>| (1 = nothing cancels). <b>Elected-sign keep</b>: share of each model's nonzero entries whose "
         "sign matches the TIES elected sign sign(Σ<sub>i</sub>τ<sub>i</sub>). Trimming keeps each tensor's top-k "
         "magnitudes per model (mergekit's per-tensor convention).</p>")


def build_report(stats: dict, landscapes: list[dict] | None = None, title: str = "Merge Studio analysis",
                 recipe_text: str | None = None) -> str:
    """HTML text with every figure (plotly.js inlined once)."""
    sections: list = [("Summary", _table(stats) + NOTES)]
    sections += stats_figures(stats)
    for res in landscapes or []:
        label = {"task_plane": "Landscape: task-vector plane", "params": "Landscape: recipe parameters",
                 "random_plane": "Landscape: random plane", "param1d": "Landscape: one setting"}
        sections.append((label.get(res.get("kind"), "Landscape"), landscape_figure(res)))
        sections.append(("", f"<p>{res.get('evaluations', 0)} evaluations in {res.get('seconds', 0):.2f} s.</p>"))
    if recipe_text:
        sections.append(("Recipe", f"<pre>{html.escape(recipe_text)}</pre>"))
    return report_html([(h, s) for h, s in sections], title=title)
