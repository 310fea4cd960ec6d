"""Analysis panel: a 1-D landscape over one setting with the current recipe marked, and the diagnostics figures."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("#### Landscape\nScores as one setting sweeps its range (every other setting as in the recipe). "
                "The dashed line marks your current value.")
    with gr.Row():
        ns.target = gr.Dropdown(label="Sweep", scale=3, elem_id="sweep-target")
        ns.points = gr.Slider(5, 21, value=11, step=1, label="points", scale=2)
        ns.sweep_btn = gr.Button("Compute landscape", variant="primary", scale=1, elem_id="sweep-btn")
    ns.landscape = gr.Plot(label="Landscape", elem_id="landscape")
    gr.Markdown("#### Task-vector diagnostics")
    ns.diag_btn = gr.Button("Compute diagnostics", elem_id="diag-btn")
    ns.diag_note = gr.Markdown()
    ns.diag_plots = [gr.Plot(visible=False, elem_id=f"diag-{i}") for i in range(4)]
    return ns
