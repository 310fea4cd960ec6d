"""Export panel: format, dtype, target, progress, and the written result (path, size, model card, recipe)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

FORMATS = ["single .safetensors file", "folder (weights + config + model card + recipe)"]
DTYPES = ["float16", "bfloat16", "float32"]


def build(default_dir: str) -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Streams the recipe tensor by tensor to disk (a few tensors in memory at a time). The output is "
                "written atomically; a non-empty target is refused unless you tick *overwrite*.")
    with gr.Row():
        ns.format = gr.Radio(FORMATS, value=FORMATS[0], label="Format", scale=3)
        ns.dtype = gr.Dropdown(DTYPES, value="float16", label="dtype", scale=1)
    with gr.Row():
        ns.folder = gr.Textbox(value=default_dir, label="Into folder", scale=3, elem_id="export-folder")
        ns.name = gr.Textbox(value="merged", label="Name", scale=2, elem_id="export-name")
        ns.overwrite = gr.Checkbox(label="overwrite", value=False, scale=1)
    ns.button = gr.Button("Export", variant="primary", elem_id="export-btn")
    ns.result = gr.Markdown(elem_id="export-result")
    with gr.Accordion("Model card", open=True):
        ns.card = gr.Markdown(elem_id="export-card")
    return ns
