"""Preview panel: latency, accuracy bar chart, score table, text samples, image grid, the formula with numbers."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ...devices import memory_use
from .. import preview_view as V


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    ns.latency = gr.Markdown("Loading…", elem_id="latency")
    ns.memory = gr.Markdown(elem_id="memory")
    ns.status = gr.Markdown(elem_id="status")
    ns.plot = gr.Plot(label="Scores: base · expert · previous · merge", elem_id="score-plot")
    ns.table = gr.Dataframe(label="Per-task scores", interactive=False, elem_id="score-table",
                            column_widths=["20%", "14%", "14%", "14%", "20%", "18%"])
    ns.samples = gr.Markdown(elem_id="samples")
    ns.image = gr.Image(label="Samples (fixed seeds)", visible=False, interactive=False, elem_id="sample-grid",
                        buttons=["download", "fullscreen"])
    ns.gallery = gr.Gallery(label="Samples (fixed seeds)", visible=False, columns=4, height="auto",
                            object_fit="contain", elem_id="gallery")
    with gr.Row():
        ns.preview_btn = gr.Button("↻ Re-run preview", size="sm", elem_id="preview-btn")
    with gr.Accordion("How this merge is computed", open=True):
        ns.formula = gr.Markdown(elem_id="formula")
    with gr.Accordion("Raw preview numbers", open=False):
        ns.raw = gr.JSON(elem_id="raw-preview")
    return ns


def rendered(ns) -> list:
    """Every component a preview or an edit may change (the status line and the preview's are sent by the app)."""
    return [ns.formula, ns.latency, ns.memory, ns.status, ns.plot, ns.table, ns.samples, ns.image, ns.gallery, ns.raw]


def render(ns, s) -> dict:
    return {ns.formula: {"value": s.formula()}}


def render_preview(ns, s, pv) -> dict:
    """The preview's components for one Preview (a superseded one only updates the latency line)."""
    if pv.superseded:
        return {ns.latency: {"value": V.latency_text(pv)}}
    headers, rows = V.score_table(pv)
    metric = (pv.result or {}).get("metric", "score")
    imgs = V.images(pv)
    raw = {"metric": pv.result.get("metric"), "average": pv.result.get("average"),
           "per_task": pv.result.get("per_task"), "latency_ms": round(pv.total_seconds * 1000, 1),
           "merge_ms": round(pv.merge_seconds * 1000, 1), "eval_ms": round(pv.eval_seconds * 1000, 1),
           "changed_tensors": pv.changed, "history_id": s.history[-1].id if s.history else None}
    return {ns.latency: {"value": V.latency_text(pv)}, ns.memory: {"value": V.memory_text(memory_use(s.env.device))},
            ns.plot: {"value": V.score_figure(pv)},
            ns.table: {"value": {"headers": headers, "data": rows}, "label": f"Per-task {metric}"},
            ns.samples: {"value": V.samples_markdown(pv)},
            ns.image: {"value": imgs[0][0] if len(imgs) == 1 else None, "visible": len(imgs) == 1},
            ns.gallery: {"value": imgs if len(imgs) > 1 else None, "visible": len(imgs) > 1},
            ns.raw: {"value": raw}}


def wire(ui) -> None:
    # re-run = refresh: the whole page is sent again, as the session has it
    ui.on(ui.p.preview_btn.click, lambda s: None, api_name="preview", refresh=True)
