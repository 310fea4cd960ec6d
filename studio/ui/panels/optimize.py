"""Optimize panel: learned merges (AdaMerging, SAMerging, FDA, Fisher, RegMean) on the family's unlabeled data or a
folder of the user's own, with progress, the loss curve, and what to do with the result: load learned coefficients
into the sliders, or preview and export learned weights."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

DTYPES = ["float16", "bfloat16", "float32"]


def build(methods: list[tuple[str, str]] | None, unavailable: str | None, default_name: str = "learned"
          ) -> SimpleNamespace:
    ns = SimpleNamespace()
    if unavailable:
        ns.available = False
        gr.Markdown(f"**Learned merging is not available in this build.** ({unavailable})")
        return ns
    ns.available = True
    gr.Markdown("Learns a merge of the models ticked in the Models tab from each task's *unlabeled* inputs (labels "
                "are never read). **Coefficient methods** (AdaMerging, SAMerging) learn one weight per model and "
                "tensor: *Load into sliders* makes them your recipe (undo brings yours back). **Weight methods** "
                "(FDA, Fisher, RegMean) produce merged weights directly: they are previewed and can be exported "
                "here. *Steps* are optimisation steps (FDA: anchor-construction steps); Fisher and RegMean are "
                "closed-form and ignore them.", elem_classes=["panel-note"])
    with gr.Row(equal_height=True):
        ns.method = gr.Dropdown(methods or [], value=(methods or [(None, None)])[0][1], label="Learned method",
                                scale=3, elem_id="learn-method")
        ns.steps = gr.Slider(5, 1000, value=100, step=5, label="steps", scale=2, elem_id="learn-steps")
        ns.run = gr.Button("Learn", variant="primary", scale=1, elem_id="learn-btn")
    ns.data = gr.Textbox(label="Unlabeled data (optional)", elem_id="learn-data",
                         placeholder="a folder with a subfolder per merged model (images or .txt) — empty: the demo "
                                     "family's unlabeled splits")
    ns.state_note = gr.Markdown(elem_id="learn-note")
    ns.result = gr.Markdown(elem_id="learn-result")
    with gr.Row(visible=False) as ns.actions:
        ns.load_btn = gr.Button("Load into sliders", variant="primary", elem_id="learn-load")
        ns.show_btn = gr.Button("Show learned weights in the preview", elem_id="learn-show")
    ns.plot = gr.Plot(show_label=False, visible=False, elem_id="learn-plot")
    with gr.Group(visible=False) as ns.export_box:
        gr.Markdown("#### Export the learned weights", elem_classes=["section-title"])
        with gr.Row(equal_height=True):
            ns.export_name = gr.Textbox(value=default_name, label="File name (.safetensors, in the export folder)",
                                        scale=3, elem_id="learn-export-name")
            ns.export_dtype = gr.Dropdown(DTYPES, value="float16", label="dtype", scale=1)
            ns.export_overwrite = gr.Checkbox(label="overwrite", value=False, scale=1)
            ns.export_btn = gr.Button("Export weights", scale=1, elem_id="learn-export-btn")
        ns.export_result = gr.Markdown(elem_id="learn-export-result")
    return ns
