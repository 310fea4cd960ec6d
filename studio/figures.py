"""Plotly figures from :mod:`studio.analysis` numbers, shared by the studio and ``python -m studio analyze``'s HTML
report.

Colour conventions: fractions in [0, 1] use a sequential scale pinned to [0, 1] (so a pale cell always means a small
fraction); signed values (cosine similarity) use a diverging scale centred on 0 and pinned to [−1, 1]; landscapes use a
sequential scale over the observed range, turned so that the better end is bright (reversed for perplexity and loss),
on log10 when the scores span decades, with model names in white boxes. Every figure carries a title, axis titles and
hover text with the exact value. No gradio here (the HTML report runs without the UI): this module only imports
plotly.
"""

from __future__ import annotations

import html
import math

import numpy as np
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio

from .evaluate import lower_is_better
from .sources.resolve import short_name

SEQUENTIAL = "Viridis"
FRACTION = "Blues"
DIVERGING = "RdBu"
# plotly_white's page look (colours, grid, fonts) without its defaults for every trace type: plotly copies a
# figure's whole template into each new figure, and the full one costs 10–20 ms a figure — more than a slider
# release's merge and evaluation together; this one about 2 ms.
_WHITE = pio.templates["plotly_white"].layout.to_plotly_json()
TEMPLATE = go.layout.Template(layout={k: _WHITE[k] for k in (
    "autotypenumbers", "colorway", "font", "hovermode", "hoverlabel", "paper_bgcolor", "plot_bgcolor", "xaxis",
    "yaxis", "coloraxis", "colorscale", "shapedefaults", "annotationdefaults", "title")})
LAYOUT = dict(template=TEMPLATE, font=dict(size=12), margin=dict(l=70, r=30, t=60, b=60))
MARKER_STYLE = {
    "base": dict(symbol="square", color="#444444"),
    "average": dict(symbol="diamond", color="#ff7f0e"),
    "current": dict(symbol="star", color="#d62728", size=16),
}
EXPERT_STYLE = dict(symbol="circle", color="#ffffff", line=dict(color="#111111", width=2))
TRAJ_COLORS = ["#e377c2", "#17becf", "#bcbd22", "#8c564b", "#9467bd"]

STAT_ROWS = [
    ("sign_conflict", "sign conflict"),
    ("sign_conflict_active", "conflict (of entries ≥2 nonzero)"),
    ("mass_agreement", "mass agreement"),
    ("elected_keep", "elected-sign keep"),
]


def _figure(*traces) -> go.Figure:
    """A figure on the light template (see TEMPLATE), so plotly never copies its default one."""
    return go.Figure(list(traces), layout={"template": TEMPLATE})


def _names(stats: dict) -> list[str]:
    labels = stats.get("display_names") or {}
    names = [labels.get(m) or short_name(m) for m in stats.get("models", [])]
    # disambiguate equal short names
    return [f"{n} ({i})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _group_labels(stats: dict) -> list[str]:
    return [g["group"] for g in stats["groups"]]


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), **LAYOUT, **kw)
    return fig


# ------------------------------------------------------------------------------------------------ statistics
def sign_conflict_heatmap(stats: dict, include_overall: bool = True) -> go.Figure:
    """Groups (x, layout order) × statistics (y): sign conflict, conflict among active entries, mass agreement,
    elected-sign keep; with the trimmed variants when ``stats`` has a density. Sequential, pinned to [0, 1]."""
    groups = list(stats["groups"]) + ([stats["overall"]] if include_overall else [])
    xs = [g["group"] for g in groups]
    rows, labels = [], []
    variants = [("", None)]
    if stats.get("density") is not None:
        variants.append((f" · trimmed {stats['density']:g}", "trimmed"))
    for suffix, sub in variants:
        for key, label in STAT_ROWS:
            rows.append([(g[sub] or {}).get(key) if sub else g.get(key) for g in groups])
            labels.append(label + suffix)
    z = [[None if v is None else float(v) for v in r] for r in rows]
    text = [[_fmt(v) for v in r] for r in z]
    hover = [[f"{g.get('label', g['group'])}<br>{lab}: {_fmt(v, 4)}" for g, v in zip(groups, r)]
             for lab, r in zip(labels, z)]
    fig = _figure(go.Heatmap(z=z, x=xs, y=labels, zmin=0, zmax=1, colorscale=FRACTION, text=text,
                               texttemplate="%{text}" if len(xs) <= 30 else None, hovertext=hover,
                               hoverinfo="text", colorbar=dict(title="fraction"), xgap=1, ygap=1))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="layer / block group", type="category")
    return _layout(fig, f"Sign conflicts and agreement per group ({len(stats.get('models', []))} task vectors)",
                   height=max(300, 60 + 34 * len(labels)))


def kind_heatmap(stats: dict) -> go.Figure:
    """Sign-conflict fraction per group (x) × tensor kind (y: attn qkv, attn out, mlp in/out, …); blank = none."""
    kinds = stats.get("kinds", [])
    xs = _group_labels(stats)
    z = [[(stats["cells"].get(g, {}).get(k) or {}).get("sign_conflict") for g in xs] for k in kinds]
    hover = [[f"{g} · {k}: {_fmt(v, 4)}" for g, v in zip(xs, row)] for k, row in zip(kinds, z)]
    fig = _figure(go.Heatmap(z=z, x=xs, y=kinds, zmin=0, zmax=1, colorscale=FRACTION, hovertext=hover,
                               hoverinfo="text", colorbar=dict(title="conflict"), xgap=1, ygap=1))
    fig.update_yaxes(autorange="reversed", title="tensor kind")
    fig.update_xaxes(title="layer / block group", type="category")
    return _layout(fig, "Sign conflict per group and tensor kind", height=max(280, 80 + 34 * len(kinds)))


def _matrix(values, names, title, zmin, zmax, scale, what, zmid=None) -> go.Figure:
    z = [[None if v is None else float(v) for v in row] for row in values]
    text = [[_fmt(v, 2) for v in row] for row in z]
    hover = [[f"{names[i]} × {names[j]}<br>{what}: {_fmt(v, 4)}" for j, v in enumerate(row)] for i, row in enumerate(z)]
    fig = _figure(go.Heatmap(z=z, x=names, y=names, zmin=zmin, zmax=zmax, zmid=zmid, colorscale=scale, text=text,
                               texttemplate="%{text}", hovertext=hover, hoverinfo="text",
                               colorbar=dict(title=what), xgap=2, ygap=2))
    fig.update_yaxes(autorange="reversed")
    side = max(320, 140 + 50 * len(names))
    return _layout(fig, title, height=side, width=side + 160)


def cosine_matrix(stats: dict, group: str | None = None) -> go.Figure:
    """Cosine similarity between task vectors (whole model, or one group); diverging, centred on 0, pinned ±1."""
    g = stats["overall"] if group is None else next(x for x in stats["groups"] if x["group"] == group)
    where = "whole model" if group is None else g.get("label", group)
    return _matrix(g["cosine"], _names(stats), f"Task-vector cosine similarity ({where})", -1, 1, DIVERGING,
                   "cosine", zmid=0)


def disagreement_matrix(stats: dict, group: str | None = None, trimmed: bool = False) -> go.Figure:
    """Pairwise sign disagreement (fraction of entries, both nonzero, with opposite signs); sequential [0, 1]."""
    g = stats["overall"] if group is None else next(x for x in stats["groups"] if x["group"] == group)
    src = g["trimmed"] if trimmed and g.get("trimmed") else g
    what = "whole model" if group is None else g.get("label", group)
    if trimmed and g.get("trimmed"):
        what += f", trimmed {stats['density']:g}"
    return _matrix(src["pairwise_disagreement"], _names(stats), f"Pairwise sign disagreement ({what})", 0, 1,
                   FRACTION, "disagree")


def cosine_by_group(stats: dict) -> go.Figure:
    """Each pair's cosine similarity per group: pairs (y) × groups (x); diverging, centred on 0."""
    names = _names(stats)
    n = len(names)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    xs = _group_labels(stats)
    z = [[g["cosine"][i][j] for g in stats["groups"]] for i, j in pairs]
    ys = [f"{names[i]} · {names[j]}" for i, j in pairs]
    hover = [[f"{g} · {y}: {_fmt(v, 4)}" for g, v in zip(xs, row)] for y, row in zip(ys, z)]
    fig = _figure(go.Heatmap(z=z, x=xs, y=ys, zmin=-1, zmax=1, zmid=0, colorscale=DIVERGING, hovertext=hover,
                               hoverinfo="text", colorbar=dict(title="cosine"), xgap=1, ygap=1))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="layer / block group", type="category")
    return _layout(fig, "Task-vector cosine similarity per group", height=max(260, 100 + 30 * len(pairs)))


def norms_figure(stats: dict, relative: bool = False) -> go.Figure:
    """L2 norm of each task vector per group (grouped bars; ``relative``: divided by √(entries) = RMS)."""
    fig = _figure()
    xs = _group_labels(stats)
    for i, name in enumerate(_names(stats)):
        ys = []
        for g in stats["groups"]:
            v = g["norms"][i]
            ys.append(v / math.sqrt(g["numel"]) if relative and g["numel"] else v)
        fig.add_bar(x=xs, y=ys, name=name,
                    hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>")
    fig.update_xaxes(title="layer / block group", type="category")
    fig.update_yaxes(title="RMS of τ (‖τ‖/√n)" if relative else "‖τ‖₂", rangemode="tozero")
    return _layout(fig, "Task-vector size per group" + (" (RMS per entry)" if relative else " (L2 norm)"),
                   barmode="group", height=380, legend=dict(orientation="h", y=-0.25))


def stats_figures(stats: dict) -> list[tuple[str, go.Figure]]:
    """The standard set for a report or the UI, in reading order."""
    figs = [("Sign conflicts", sign_conflict_heatmap(stats))]
    if len(stats.get("models", [])) >= 2:
        figs.append(("Cosine similarity", cosine_matrix(stats)))
        figs.append(("Pairwise sign disagreement", disagreement_matrix(stats, trimmed=False)))
        if stats.get("density") is not None:
            figs.append(("Pairwise sign disagreement (trimmed)", disagreement_matrix(stats, trimmed=True)))
        figs.append(("Cosine per group", cosine_by_group(stats)))
    figs.append(("Norms", norms_figure(stats)))
    if stats.get("kinds"):
        figs.append(("Conflicts by tensor kind", kind_heatmap(stats)))
    return figs


def diagnostic_figures(stats: dict, limit: int = 4) -> list[go.Figure]:
    """The studio's diagnostics: the first ``limit`` figures in the order a reader needs them (sign conflicts,
    cosine matrix, pairwise disagreement, norms, then the rest). Model names from ``stats["display_names"]``."""
    order = ["Sign conflicts", "Cosine similarity", "Pairwise sign disagreement", "Norms"]
    figs = dict(stats_figures(stats))
    chosen = [figs[k] for k in order if k in figs]
    chosen += [f for k, f in figs.items() if k not in order]
    return chosen[:limit]


# ------------------------------------------------------------------------------------------------ landscapes
def _marker_style(name: str) -> dict:
    style = dict(size=13, line=dict(color="#111111", width=1))
    style.update(MARKER_STYLE.get(name, EXPERT_STYLE))
    return style


def _marker_hover(m: dict, score_name: str) -> str:
    parts = [f"<b>{html.escape(short_name(m['name']))}</b>", f"{score_name}: {_fmt(m.get('score'), 4)}"]
    if m.get("residual"):
        parts.append(f"off-plane: {m['residual']:.1%}")
    return "<br>".join(parts)


def spans_decades(values) -> bool:
    """Whether positive values span a factor of ten or more (perplexity running from 20 to 300k): drawn on a log
    scale, else the interesting part is one flat line at the bottom. ``values``: a list or a grid (None: no score)."""
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    return vals.size > 0 and vals.min() > 0 and vals.max() / vals.min() >= 10


def landscape_line(result: dict) -> go.Figure:
    """A 1-D sweep: the score over the setting, the current value as a dashed line and a star; a log scale when the
    scores span decades."""
    name = result.get("score_name", "score")
    fig = _figure(go.Scatter(x=result["x"]["values"], y=result["z"], mode="lines+markers", name=name,
                               hovertemplate=f"{result['x']['label']}: %{{x:.4g}}<br>{name}: %{{y:.4g}}<extra></extra>"))
    for m in result.get("markers", []):
        if m.get("x") is None:
            continue
        fig.add_vline(x=m["x"], line_dash="dash", line_color="#d62728")
        fig.add_trace(go.Scatter(x=[m["x"]], y=[m["score"]], mode="markers", name=short_name(m["name"]),
                                 marker=_marker_style(m["name"]), hovertext=[_marker_hover(m, name)],
                                 hoverinfo="text"))
    fig.update_xaxes(title=result["x"]["label"])
    log = spans_decades(result["z"])
    fig.update_yaxes(title=name + (" (log scale)" if log else ""), type="log" if log else None)
    return _layout(fig, f"{name} as {result['x']['label']} varies", height=380, showlegend=True)


def _contour_colours(name: str, z) -> tuple[list, dict, dict]:
    """(the z to colour by, the colour bar, the contour lines) of a plane: Viridis turned so that the better end is
    bright (reversed for perplexity and loss), log10 of the score when it spans decades (the colour bar in the
    score's own units; line labels would read in log units, so the lines go unlabelled), else lines labelled in white
    with a dark shadow, readable on every colour of the scale."""
    better = "lower" if lower_is_better(name) else "higher"
    colorbar = dict(title=dict(text=f"{name}<br><sup>bright = better ({better})</sup>", side="right"))
    contours = dict(showlines=True, showlabels=True,
                    labelfont=dict(size=10, color="white", shadow="0px 0px 3px rgba(0,0,0,0.9)"))
    if not spans_decades(z):
        return z, colorbar, contours
    grid = np.asarray(z, dtype=float)
    shown = np.where(grid > 0, np.log10(np.where(grid > 0, grid, 1.0)), np.nan)
    lo, hi = math.floor(np.nanmin(shown)), math.ceil(np.nanmax(shown))
    steps = (1,) if hi - lo > 2 else (1, 2, 5)  # a decade or two: 1-2-5 ticks, else the bar shows one number
    ticks = [math.log10(m) + t for t in range(lo, hi + 1) for m in steps]
    colorbar.update(title=dict(text=f"{name} (log scale)<br><sup>bright = better ({better})</sup>", side="right"),
                    tickvals=ticks, ticktext=[f"{10 ** t:,.0f}" if t >= 0 else f"{10 ** t:.2g}" for t in ticks])
    return shown.tolist(), colorbar, dict(contours, showlabels=False)


def _marker_label(fig: go.Figure, m: dict) -> None:
    """A model's name in a white box above its marker: dark text that reads on any colour of the plane."""
    fig.add_annotation(x=m["x"], y=m["y"], text=html.escape(short_name(m["name"])), showarrow=False, yshift=16,
                       font=dict(size=11, color="#111111"), bgcolor="rgba(255,255,255,0.85)", bordercolor="#444444",
                       borderwidth=1, borderpad=2)


def landscape_contour(result: dict, show_markers: bool = True) -> go.Figure:
    """A 2-D grid as filled contours (z rows over y), with markers and projected trajectories on top."""
    name = result.get("score_name", "score")
    xs, ys = result["x"]["values"], result["y"]["values"]
    z, colorbar, contours = _contour_colours(name, result["z"])
    fig = _figure(go.Contour(
        z=z, x=xs, y=ys, customdata=result["z"], colorscale=SEQUENTIAL, reversescale=lower_is_better(name),
        colorbar=colorbar, ncontours=15, contours=contours, line=dict(color="rgba(255,255,255,0.5)", width=1),
        hovertemplate=f"x: %{{x:.3g}}<br>y: %{{y:.3g}}<br>{name}: %{{customdata:.4g}}<extra></extra>"))
    for n, t in enumerate(result.get("trajectories", [])):
        color = TRAJ_COLORS[n % len(TRAJ_COLORS)]
        hover = [f"{html.escape(str(t['name']))} · step {s}" + (f"<br>{name}: {_fmt(v, 4)}" if v is not None else "")
                 + (f"<br>off-plane: {r:.1%}" if r else "")
                 for s, v, r in zip(t.get("step", range(len(t["x"]))), t.get("score") or [None] * len(t["x"]),
                                    t.get("residual") or [0] * len(t["x"]))]
        fig.add_trace(go.Scatter(x=t["x"], y=t["y"], mode="lines+markers", name=str(t["name"]),
                                 line=dict(color=color, width=2), marker=dict(size=5, color=color),
                                 hovertext=hover, hoverinfo="text"))
        if t["x"]:
            fig.add_trace(go.Scatter(x=[t["x"][-1]], y=[t["y"][-1]], mode="markers", showlegend=False,
                                     marker=dict(symbol="triangle-up", size=11, color=color,
                                                 line=dict(color="#111111", width=1)),
                                     hovertext=[hover[-1]], hoverinfo="text"))
    if show_markers:
        for m in result.get("markers", []):
            if m.get("x") is None or m.get("y") is None:
                continue
            fig.add_trace(go.Scatter(x=[m["x"]], y=[m["y"]], mode="markers", name=short_name(m["name"]),
                                     marker=_marker_style(m["name"]), hovertext=[_marker_hover(m, name)],
                                     hoverinfo="text"))
            _marker_label(fig, m)
    fig.update_xaxes(title=result["x"]["label"], range=[min(xs), max(xs)])
    fig.update_yaxes(title=result["y"]["label"], range=[min(ys), max(ys)])
    titles = {"task_plane": "Task-vector plane", "params": "Recipe parameters", "random_plane": "Random plane"}
    title = f"{name} — {titles.get(result.get('kind'), 'landscape')}"
    if result.get("kind") == "random_plane":
        title += f" around the current merge (filter-normalised, seed {result.get('seed')})"
    return _layout(fig, title, height=560, legend=dict(orientation="h", y=-0.18))


def landscape_figure(result: dict) -> go.Figure:
    """Line for a 1-D result, contour for a 2-D one."""
    return landscape_line(result) if "y" not in result else landscape_contour(result)


def sweep_line(result: dict) -> go.Figure:
    """A 1-D sweep (:func:`landscape_line`) with each task's score as a thin line underneath, when the result holds
    the evaluator's full result per point (``results``)."""
    fig = landscape_line(result)
    xs = result["x"]["values"]
    rows = result.get("results") or []
    tasks = list((rows[0].get("per_task") or {})) if rows else []
    for t in tasks:
        fig.add_scatter(x=xs, y=[r["per_task"].get(t) for r in rows], mode="lines", name=t, line=dict(width=1),
                        opacity=0.45)
    if tasks:
        fig.data = fig.data[-len(tasks):] + fig.data[:-len(tasks)]  # tasks drawn underneath
    fig.update_layout(legend=dict(orientation="h", y=-0.25), height=420)
    return fig


# ------------------------------------------------------------------------------------------------ previews
PREVIEW_COLORS = {"base": "#9ca3af", "expert": "#a5b4fc", "merge": "#4f46e5", "previous": "#f59e0b"}


def preview_scores(result: dict, base: dict | None = None, experts: dict | None = None,
                   previous: dict | None = None, title: str | None = None) -> go.Figure:
    """Grouped bars per task: the base, the task's own expert, the previous merge and the current merge, with the
    merge's average as a dotted line. ``result``: an evaluator result (``metric``, ``average``, ``per_task``);
    ``base``, ``previous``: per-task scores; ``experts``: per task, its expert's score on it.

    Built in one constructor call from plain dicts: this figure is redrawn on every slider release, and plotly's
    incremental ``add_*`` / ``update_*`` calls validate the whole figure each time (≈ 4× slower)."""
    per = result.get("per_task") or {}
    metric = result.get("metric", "score")
    tasks = list(per)
    series = (("base", base, "base", 1.0), ("expert (own task)", experts, "expert", 1.0),
              ("previous merge", previous, "previous", 0.6), ("merge", per, "merge", 1.0))
    bars = [dict(name=name, scores=scores, color=PREVIEW_COLORS[key], opacity=opacity)
            for name, scores, key, opacity in series if scores or key == "merge"]
    data = [go.Bar(name=b["name"], x=tasks, y=[_number((b["scores"] or {}).get(t)) for t in tasks],
                   marker_color=b["color"], opacity=b["opacity"]) for b in bars]
    layout = dict(template=TEMPLATE, barmode="group", height=330, bargap=0.2, title=title,
                  margin=dict(l=40, r=10, t=40 if title else 10, b=40), legend=dict(orientation="h", y=1.12, x=0),
                  yaxis=dict(title=metric))
    avg = _number(result.get("average"))
    if avg is not None:
        layout["shapes"] = [dict(type="line", xref="paper", x0=0, x1=1, y0=avg, y1=avg,
                                 line=dict(dash="dot", color=PREVIEW_COLORS["merge"]))]
        layout["annotations"] = [dict(xref="paper", x=1, y=avg, xanchor="right", yanchor="bottom", showarrow=False,
                                      text=f"merge average {avg:.4g}", bgcolor="rgba(255,255,255,0.85)",
                                      font=dict(color=PREVIEW_COLORS["merge"]))]
    if metric == "accuracy":  # evaluators may report fractions or percentages
        top = max([v for tr in data for v in tr.y if v is not None] or [1.0])
        layout["yaxis"]["range"] = [0, 1.05 if top <= 1.0 else 105]
    return go.Figure(data, layout)


def learned_curve(label: str, history: Sequence, metrics: dict) -> go.Figure:
    """The objective per step of a learned merge (closed-form methods: before and after, as two points)."""
    fig = _figure()
    hist = [h.get("loss") if isinstance(h, dict) else h for h in history or []]
    if hist:
        fig.add_scatter(x=list(range(1, len(hist) + 1)), y=hist, mode="lines", name="objective",
                        line=dict(color=PREVIEW_COLORS["merge"], width=2))
        title = f"{label}: objective per step"
    else:
        ys = [metrics.get("objective_start"), metrics.get("objective_end")]
        if all(isinstance(v, (int, float)) for v in ys):
            fig.add_scatter(x=["before", "after"], y=ys, mode="lines+markers", name="objective",
                            line=dict(color=PREVIEW_COLORS["merge"], width=2))
        title = f"{label}: closed-form (no training curve)"
    fig.update_layout(height=300, template=TEMPLATE, xaxis_title="step",
                      yaxis_title=str(metrics.get("objective") or "objective"), title=dict(text=title, x=0.01),
                      margin=dict(l=60, r=20, t=50, b=50), showlegend=False)
    return fig


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ HTML report
def report_html(sections: Sequence[tuple[str, go.Figure | str]], title: str = "Merge Studio analysis",
                intro: str = "") -> str:
    """A self-contained HTML page: each section is (heading, figure or HTML text); plotly.js is inlined once."""
    parts, first = [], True
    for heading, item in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(item, go.Figure):
            parts.append(item.to_html(full_html=False, include_plotlyjs=True if first else False,
                                      config={"displaylogo": False, "responsive": True}))
            first = False
        else:
            parts.append(f"<div class='note'>{item}</div>")
    body = "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:24px auto;padding:0 16px;
color:#222}} h1{{font-size:1.6em}} h2{{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}}
.note{{color:#444}} table{{border-collapse:collapse}} td,th{{padding:2px 10px;border-bottom:1px solid #eee;
text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>{intro}
{body}
</body></html>"""


# ------------------------------------------------------------------------------------------------ searches
SEARCH_COLORS = {"trial": "#9ecae1", "best": "#d62728", "front": "#d62728", "other": "#bdbdbd"}


def _completed(rows: Sequence[dict], *names: str) -> list[dict]:
    return [r for r in rows if r.get("state") == "complete" and all(r.get(n) is not None for n in names)]


def search_convergence(rows: Sequence[dict], objective: str, direction: str) -> go.Figure:
    """One objective of a search: every completed trial's value as a point, the best so far as a step line."""
    done = _completed(rows, objective)
    xs, ys = [r["trial"] for r in done], [float(r[objective]) for r in done]
    better = max if direction == "maximize" else min
    running = [better(ys[:i + 1]) for i in range(len(ys))] if ys else []
    fig = _figure()
    fig.add_scatter(x=xs, y=ys, mode="markers", name="trial", marker=dict(color=SEARCH_COLORS["trial"], size=7),
                    hovertemplate="trial %{x}<br>%{y:.5g}<extra></extra>")
    fig.add_scatter(x=xs, y=running, mode="lines", name="best so far",
                    line=dict(color=SEARCH_COLORS["best"], width=2, shape="hv"),
                    hovertemplate="best after trial %{x}: %{y:.5g}<extra></extra>")
    word = "higher" if direction == "maximize" else "lower"
    return _layout(fig, f"{objective} per trial and best so far ({word} is better)", xaxis_title="trial",
                   yaxis_title=objective, height=380)


def param_importance_figure(importances: dict[str, float], objective: str) -> go.Figure:
    """How much of the objective's variance each searched setting explains (fANOVA), largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                         marker_color=SEARCH_COLORS["best"], hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    return _layout(fig, f"setting importance for {objective}", xaxis_title="share of variance explained",
                   xaxis_range=[0, 1], height=max(260, 60 + 28 * len(items)))


def pareto_figure(rows: Sequence[dict], objectives: Sequence[str], directions: Sequence[str],
                  front: Sequence[int]) -> go.Figure:
    """The first two objectives of every completed trial, the Pareto front highlighted and joined in order."""
    x_name, y_name = objectives[0], objectives[1]
    done = _completed(rows, x_name, y_name)
    on = set(front)
    fig = _figure()
    for label, pick, style in (("trial", lambda r: r["trial"] not in on, dict(color=SEARCH_COLORS["other"], size=7)),
                               ("Pareto front", lambda r: r["trial"] in on,
                                dict(color=SEARCH_COLORS["front"], size=10, symbol="diamond"))):
        sel = sorted((r for r in done if pick(r)), key=lambda r: r[x_name])
        fig.add_scatter(x=[r[x_name] for r in sel], y=[r[y_name] for r in sel], name=label,
                        mode="lines+markers" if label == "Pareto front" else "markers", marker=style,
                        line=dict(color=SEARCH_COLORS["front"], width=1, dash="dot"),
                        text=[f"trial {r['trial']}" for r in sel],
                        hovertemplate="%{text}<br>" + f"{x_name} %{{x:.5g}}<br>{y_name} %{{y:.5g}}<extra></extra>")
    words = [("higher" if d == "maximize" else "lower") for d in directions[:2]]
    extra = f" (first 2 of {len(objectives)} objectives)" if len(objectives) > 2 else ""
    return _layout(fig, f"Pareto front{extra}: {x_name} ({words[0]} better) vs {y_name} ({words[1]} better)",
                   xaxis_title=x_name, yaxis_title=y_name, height=460)
