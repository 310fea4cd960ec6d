"""Preview panel: latency, accuracy bar chart, score table, text samples, image grid, the formula with numbers."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    ns.latency = gr.Markdown("Loading…", elem_id="latency")
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
