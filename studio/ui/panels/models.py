"""Models panel: the family, the sources with kind / architecture / parameters / dtype, the base, adding models and
LoRAs, and the header-only dry-run verdict."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


HEADERS = ["model", "role", "kind", "architecture", "params", "dtype", "layout · groups"]
BLOCK_HEADERS = ["group", "what", "tensors", "params", "example keys"]


def build(families: list[str], default_family: str | None, roots_text: str, files=None) -> SimpleNamespace:
    """``files()``: builds the file browser right under the family row (its panel is ``panels/files.py``)."""
    ns = SimpleNamespace()
    with gr.Row():
        ns.family = gr.Dropdown(families, value=default_family, label="Demo family", scale=3, elem_id="family",
                                info="tiny models built by `python -m studio zoo build`; choosing one loads its recipe")
        ns.new = gr.Button("New recipe", variant="secondary", scale=1, elem_id="new-recipe")
    if files is not None:
        files()
    with gr.Accordion("About these models", open=True, elem_id="family-about-box"):
        ns.about = gr.Markdown(elem_id="family-about")
        ns.samples = gr.Image(show_label=False, interactive=False, visible=False, elem_id="family-samples",
                              buttons=[], height=300)
    ns.verdict = gr.Markdown(elem_id="verdict")
    ns.table = gr.Dataframe(headers=HEADERS, label="Sources (read from headers only)", interactive=False,
                            wrap=True, elem_id="models-table",
                            column_widths=["12%", "10%", "18%", "19%", "11%", "12%", "18%"])
    with gr.Accordion("Block map", open=False, elem_id="block-map-box") as ns.block_box:
        ns.block_map = gr.Dataframe(headers=BLOCK_HEADERS, interactive=False, wrap=True, elem_id="block-map",
                                    column_widths=["12%", "20%", "8%", "9%", "51%"], max_height=420)
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
    return ns


def rendered(ns) -> list:
    return [ns.family, ns.about, ns.samples, ns.verdict, ns.table, ns.block_box, ns.block_map, ns.include, ns.base,
            ns.lora_model, ns.lora_ref]


def render(ns, s) -> dict:
    choices = s.shelf.choices()
    base = s.recipe.get("base_model")
    about, sheet = s.env.catalog.about(s.family)  # the models on screen: a demo family's, or the user's own
    title, blocks = s.block_map()
    return {ns.family: {"value": s.family}, ns.about: {"value": about},
            ns.samples: {"value": sheet, "visible": sheet is not None}, ns.verdict: {"value": s.dry_run()[1]},
            ns.table: {"value": {"headers": HEADERS, "data": s.models_table()}},
            ns.block_box: {"label": title}, ns.block_map: {"value": {"headers": BLOCK_HEADERS, "data": blocks}},
            ns.include: {"choices": choices, "value": s.included()},
            ns.base: {"choices": [("(none)", "")] + choices, "value": base or ""},
            ns.lora_model: {"choices": choices, "value": base or (choices[0][1] if choices else None)},
            ns.lora_ref: {"choices": s.lora_choices()}}


def wire(ui) -> None:
    ns = ui.m

    def load_family(s, name):
        if name:
            s.load_family(name)

    ui.on(ns.family.input, load_family, [ns.family], api_name="load_family")
    ui.on(ns.new.click, lambda s: s.new_recipe(), api_name="new_recipe")

    ui.on(ns.include.input, lambda s, refs: s.set_included(refs or []), [ns.include], api_name="set_models")
    ui.on(ns.base.input, lambda s, ref: s.set_base(ref or None), [ns.base], api_name="set_base")
    ui.on(ns.add_btn.click, lambda s, ref: s.add_model(ref), [ns.add_ref], api_name="add_model")
    ui.on(ns.lora_btn.click, lambda s, mod, lo, k: s.add_lora(mod, lo, k),
          [ns.lora_model, ns.lora_ref, ns.lora_strength], api_name="add_lora")
