"""Turning a :class:`~studio.ui.session.Preview` into tables, a plotly bar chart, sample text and images.

Plain Python + plotly (no gradio). The diagnostics figures live in ``studio/ui/plots.py``; these are the preview's.
"""

from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = {"perplexity", "loss"}

COLORS = {"base": "#9ca3af", "expert": "#a5b4fc", "merge": "#4f46e5", "previous": "#f59e0b"}


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def expert_scores(pv) -> dict[str, float]:
    """Per task: the score of that task's own expert (when an input is labelled with the task's name)."""
    out = {}
    for task, v in ((pv.result or {}).get("per_task") or {}).items():
        inp = pv.inputs.get(task)
        if inp:
            s = _num((inp.get("per_task") or {}).get(task))
            if s is not None:
                out[task] = s
    return out


def score_table(pv) -> tuple[list[str], list[list[Any]]]:
    """Rows per task: base, its expert, the merge, change since the last preview, and merge ÷ expert."""
    r = pv.result or {}
    metric = r.get("metric", "score")
    per = r.get("per_task") or {}
    base = (pv.inputs.get("base") or {}).get("per_task") or {}
    experts = expert_scores(pv)
    prev = ((pv.previous or {}).get("per_task") or {})
    headers = ["task", f"base {metric}", f"expert {metric}", f"merge {metric}", "Δ since last", "merge ÷ expert"]
    rows = []

    def fmt(v):
        return None if v is None else round(float(v), 4)

    for task, v in per.items():
        v = _num(v)
        e = experts.get(task)
        p = _num(prev.get(task))
        rows.append([task, fmt(_num(base.get(task))), fmt(e), fmt(v), fmt(None if p is None or v is None else v - p),
                     fmt(v / e if (e and v is not None and metric not in LOWER_IS_BETTER) else
                         (e / v if e and v and metric in LOWER_IS_BETTER else None))])
    if per:
        avg = _num(r.get("average"))
        b_avg = _num((pv.inputs.get("base") or {}).get("average"))
        e_avg = sum(experts.values()) / len(experts) if experts else None
        p_avg = _num((pv.previous or {}).get("average"))
        rows.append(["average", fmt(b_avg), fmt(e_avg), fmt(avg),
                     fmt(None if p_avg is None or avg is None else avg - p_avg),
                     fmt(avg / e_avg if avg is not None and e_avg and metric not in LOWER_IS_BETTER else None)])
    return headers, rows


def score_figure(pv, title: str | None = None):
    """Grouped bars per task: base, the task's expert, the previous merge and the current merge."""
    import plotly.graph_objects as go

    r = pv.result or {}
    per = r.get("per_task") or {}
    metric = r.get("metric", "score")
    tasks = list(per)
    fig = go.Figure()
    base = (pv.inputs.get("base") or {}).get("per_task") or {}
    if base:
        fig.add_bar(name="base", x=tasks, y=[_num(base.get(t)) for t in tasks], marker_color=COLORS["base"])
    experts = expert_scores(pv)
    if experts:
        fig.add_bar(name="expert (own task)", x=tasks, y=[experts.get(t) for t in tasks],
                    marker_color=COLORS["expert"])
    prev = (pv.previous or {}).get("per_task") or {}
    if prev:
        fig.add_bar(name="previous merge", x=tasks, y=[_num(prev.get(t)) for t in tasks],
                    marker_color=COLORS["previous"], opacity=0.6)
    fig.add_bar(name="merge", x=tasks, y=[_num(per.get(t)) for t in tasks], marker_color=COLORS["merge"])
    avg = _num(r.get("average"))
    if avg is not None:
        fig.add_hline(y=avg, line_dash="dot", line_color=COLORS["merge"],
                      annotation_text=f"merge average {avg:.3f}", annotation_position="top left")
    fig.update_layout(barmode="group", height=330, margin=dict(l=40, r=10, t=40 if title else 10, b=40),
                      title=title, legend=dict(orientation="h", y=1.12, x=0), yaxis_title=metric,
                      template="plotly_white", bargap=0.2)
    if metric == "accuracy":  # evaluators may report fractions or percentages
        top = max([v for tr in fig.data for v in (tr.y or []) if v is not None] or [1.0])
        fig.update_yaxes(range=[0, 1.05 if top <= 1.0 else 105])
    return fig


def samples_markdown(pv) -> str:
    s = (pv.result or {}).get("samples")
    if not isinstance(s, dict) or not s:
        return ""
    per = (pv.result or {}).get("per_task") or {}
    lines = []
    if (pv.result or {}).get("metric") == "perplexity":
        lines.append("Perplexity per task: " + ", ".join(f"**{t}** {float(v):.2f}" for t, v in per.items()))
        lines.append("")
    for prompt, text in s.items():
        if isinstance(text, (list, tuple)):
            text = " / ".join(map(str, text))
        lines.append(f"**{prompt}** → {text}")
        lines.append("")
    return "\n".join(lines)


def images(pv) -> list:
    """The evaluator's sample images as a list of (PIL image, caption) for a gallery."""
    s = (pv.result or {}).get("samples")
    if s is None or isinstance(s, (dict, str)) and not _is_image_dict(s):
        return []
    items = s.items() if isinstance(s, dict) else enumerate(s if isinstance(s, (list, tuple)) else [s])
    out = []
    for cap, img in items:
        pil = to_pil(img)
        if pil is not None:
            out.append((pil, str(cap)))
    return out


def _is_image_dict(s) -> bool:
    return isinstance(s, dict) and any(to_pil(v) is not None for v in list(s.values())[:1])


def to_pil(img):
    try:
        from PIL import Image
    except ImportError:
        return None
    if isinstance(img, Image.Image):
        return img
    try:
        import numpy as np
        import torch

        if isinstance(img, torch.Tensor):
            img = img.detach().float().cpu().numpy()
        if isinstance(img, np.ndarray) and img.ndim in (2, 3):
            a = img
            if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
                a = a.transpose(1, 2, 0)
            if a.dtype != np.uint8:
                a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1.0 + 1e-6 else \
                    np.clip(a, 0, 255).astype(np.uint8)
            if a.ndim == 3 and a.shape[-1] == 1:
                a = a[..., 0]
            return Image.fromarray(a)
    except Exception:
        return None
    return None


def latency_text(pv) -> str:
    if pv is None:
        return "No preview yet."
    if pv.superseded:
        return "superseded by a newer change"
    r = pv.result or {}
    avg = _num(r.get("average"))
    head = f"**{r.get('metric', 'score')} {avg:.4f}**  ·  " if avg is not None else ""
    return (f"{head}updated in {pv.total_seconds * 1000:.0f} ms (merge {pv.merge_seconds * 1000:.0f} ms for "
            f"{pv.changed}/{pv.tensors} tensors, evaluate {pv.eval_seconds * 1000:.0f} ms)")
