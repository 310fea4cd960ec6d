"""Analysis panel: a 1-D landscape over one setting, the 2-D task-vector plane of two experts (with the current
recipe and any learned trajectory marked), and the task-vector diagnostics figures."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

GRID_MIN, GRID_MAX, GRID_DEFAULT = 5, 15, 7


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    with gr.Column():
        gr.Markdown("#### Landscape along one setting")
        gr.Markdown("The preview score as one setting sweeps its range (one value for every layer; everything else "
                    "as in the recipe). The dashed line and the star mark your current value; thin lines are the "
                    "individual tasks.", elem_classes=["panel-note"])
        with gr.Row(equal_height=True):
            ns.target = gr.Dropdown(label="Sweep", scale=3, elem_id="sweep-target")
            ns.points = gr.Slider(5, 21, value=11, step=1, label="points", scale=2)
            ns.sweep_btn = gr.Button("Compute line", variant="primary", scale=1, elem_id="sweep-btn")
        ns.landscape = gr.Plot(show_label=False, visible=False, elem_id="landscape")
    with gr.Column():
        gr.Markdown("#### Task-vector plane")
        gr.Markdown("θ(α, β) = θ₀ + α·τ(x) + β·τ(y): every point merges the base with two experts' task vectors and "
                    "is scored by the preview evaluator. Markers: the base (0, 0), the two experts, their average "
                    "and your current recipe (projected onto the plane; hover for how far off it lies). A learned "
                    "run from the Optimize tab is drawn as its trajectory.", elem_classes=["panel-note"])
        with gr.Row(equal_height=True):
            ns.plane_x = gr.Dropdown(label="x: expert", scale=2, elem_id="plane-x")
            ns.plane_y = gr.Dropdown(label="y: expert", scale=2, elem_id="plane-y")
            ns.grid = gr.Slider(GRID_MIN, GRID_MAX, value=GRID_DEFAULT, step=1, label="grid size", info="points per axis",
                                scale=2, elem_id="plane-grid")
            ns.plane_btn = gr.Button("Compute plane", variant="primary", scale=1, elem_id="plane-btn")
        ns.plane_note = gr.Markdown(elem_id="plane-note")
        ns.plane = gr.Plot(show_label=False, visible=False, elem_id="plane")
    with gr.Column():
        gr.Markdown("#### Task-vector diagnostics")
        gr.Markdown("Sign conflicts, cosine similarity, pairwise disagreement and sizes of the task vectors "
                    "τᵢ = θᵢ − θ₀ per layer group: where they disagree, merges lose accuracy.",
                    elem_classes=["panel-note"])
        ns.diag_btn = gr.Button("Compute diagnostics", elem_id="diag-btn")
        ns.diag_note = gr.Markdown()
        ns.diag_plots = [gr.Plot(show_label=False, visible=False, elem_id=f"diag-{i}") for i in range(4)]
    return ns
