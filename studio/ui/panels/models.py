"""Models panel: the family, the sources with kind / architecture / parameters / dtype, the base, adding models and
LoRAs, and the header-only dry-run verdict."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

HEADERS = ["model", "role", "kind", "architecture", "params", "dtype", "layout · groups"]


def build(families: list[str], default_family: str | None, roots_text: str) -> SimpleNamespace:
    ns = SimpleNamespace()
    with gr.Row():
        ns.family = gr.Dropdown(families, value=default_family, label="Demo family", scale=3, elem_id="family",
                                info="tiny models built by `python -m studio zoo build`; switching reloads the recipe")
        ns.load = gr.Button("Load family", variant="secondary", scale=1, elem_id="load-family")
    with gr.Accordion("About this demo family", open=True, elem_id="family-about-box"):
        ns.about = gr.Markdown(elem_id="family-about")
        ns.samples = gr.Image(show_label=False, interactive=False, visible=False, elem_id="family-samples",
                              buttons=[], height=300)
    ns.verdict = gr.Markdown(elem_id="verdict")
    ns.table = gr.Dataframe(headers=HEADERS, label="Sources (read from headers only)", interactive=False,
                            wrap=True, elem_id="models-table",
                            column_widths=["12%", "10%", "18%", "19%", "11%", "12%", "18%"])
    with gr.Row():
        ns.include = gr.CheckboxGroup(label="Merge these models", scale=3, elem_id="include-models")
        ns.base = gr.Dropdown(label="Base model", scale=2, info="task-vector methods subtract it; "
                              "interpolation methods count it as one of the models")
    with gr.Accordion("Add your own model or LoRA", open=False):
        gr.Markdown(f"Paths must lie inside the folders this studio may read: `{roots_text}` "
                    "(start the app with `--allow DIR` to add one). Hub ids (`org/name[@rev]`) are read from the "
                    "local Hugging Face cache.")
        with gr.Row():
            ns.add_ref = gr.Textbox(label="Path, folder or hub id", placeholder="/data/models/my-finetune  or  org/name",
                                    scale=4)
            ns.add_btn = gr.Button("Add model", scale=1)
        with gr.Row():
            ns.lora_model = gr.Dropdown(label="Apply LoRA to", scale=2)
            ns.lora_ref = gr.Dropdown(label="LoRA (family LoRA or a path)", allow_custom_value=True, scale=3)
            ns.lora_strength = gr.Slider(-1, 2, value=1.0, step=0.05, label="strength", scale=2)
            ns.lora_btn = gr.Button("Add model + LoRA", scale=1)
        ns.add_info = gr.JSON(label="What was added", visible=False)
    return ns
