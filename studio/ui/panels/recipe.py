"""Recipe panel: method picker, generated parameter controls, per-model sliders, per-layer / per-block sliders (a U
for SD blocks, a strip for LLM layers), presets and curve shortcuts, name-pattern rules, and the editable YAML."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..controls import CURVES

MAX_GLOBAL = 10      # global parameter slots
MAX_MODELS = 10      # per-model rows
MAX_PER_MODEL = 4    # per-model parameters shown per row
STRIP_SLOTS = 64     # LLM layers (+ EMB, HEAD) or Flux blocks
STRIP_COLS = 4
UNET_TOP, UNET_SIDE, UNET_MID = 4, 12, 3


def _hidden_slider(**kw):
    return gr.Slider(0, 1, value=0, step=0.01, visible=False, **kw)


def build(method_choices, preset_names) -> SimpleNamespace:
    ns = SimpleNamespace()
    with gr.Row():
        ns.method = gr.Dropdown(method_choices, label="Merge method", scale=4, elem_id="method",
                                info="weights move the result toward a model as they grow (mergekit convention)")
        ns.undo = gr.Button("↶ Undo", scale=1, elem_id="undo-recipe")
    ns.method_doc = gr.Markdown(elem_classes=["method-doc"])
    with gr.Group():
        gr.Markdown("#### Method parameters", elem_classes=["section-title"])
        ns.g_slider, ns.g_check, ns.g_drop = [], [], []
        with gr.Row(equal_height=True):
            for i in range(MAX_GLOBAL):
                ns.g_slider.append(_hidden_slider(elem_id=f"g-slider-{i}", min_width=220))
                ns.g_check.append(gr.Checkbox(visible=False, elem_id=f"g-check-{i}", min_width=160))
                ns.g_drop.append(gr.Dropdown(visible=False, elem_id=f"g-drop-{i}", min_width=160))
    with gr.Group():
        gr.Markdown("#### Per-model settings", elem_classes=["section-title"])
        ns.m_slider = []
        for r in range(MAX_MODELS):
            with gr.Row():
                row = [_hidden_slider(elem_id=f"m-slider-{r}-{k}", min_width=200) for k in range(MAX_PER_MODEL)]
            ns.m_slider.append(row)
    with gr.Group():
        gr.Markdown("#### Per-layer / per-block values", elem_classes=["section-title"])
        with gr.Row():
            ns.target = gr.Dropdown(label="Sliders below set", scale=3, elem_id="group-target",
                                    info="a per-block value overrides the plain slider for that block")
            ns.preset = gr.Dropdown(preset_names, value=None, label="Preset", scale=2, elem_id="preset",
                                    info="SuperMerger block shapes")
            ns.curve = gr.Dropdown(list(CURVES), value="ramp up", label="Curve", scale=2)
            ns.curve_lo = gr.Number(value=0.0, label="from", scale=1, min_width=70)
            ns.curve_hi = gr.Number(value=1.0, label="to", scale=1, min_width=70)
            ns.curve_btn = gr.Button("Apply curve", scale=1, elem_id="apply-curve")
        ns.layout_note = gr.Markdown()
        # strip: LLM layers in reading order
        ns.strip = []
        with gr.Column(visible=True) as ns.strip_box:
            for r in range(STRIP_SLOTS // STRIP_COLS):
                with gr.Row():
                    for c in range(STRIP_COLS):
                        ns.strip.append(_hidden_slider(elem_id=f"strip-{r * STRIP_COLS + c}", min_width=150))
        # U: IN blocks down the left, M00 at the bottom, OUT blocks up the right, BASE/VAE on top
        with gr.Column(visible=False) as ns.unet_box:
            with gr.Row():
                ns.u_top = [_hidden_slider(elem_id=f"u-top-{i}") for i in range(UNET_TOP)]
            with gr.Row():
                with gr.Column():
                    ns.u_left = [_hidden_slider(elem_id=f"u-left-{i}") for i in range(UNET_SIDE)]
                with gr.Column():
                    gr.Markdown("<div class='u-center'>IN ↓ · · · ↑ OUT</div>")
                    ns.u_mid = [_hidden_slider(elem_id=f"u-mid-{i}") for i in range(UNET_MID)]
                with gr.Column():
                    ns.u_right = [_hidden_slider(elem_id=f"u-right-{i}") for i in range(UNET_SIDE)]
        with gr.Accordion("Name-pattern rules (first match wins)", open=False):
            ns.rules = gr.Textbox(lines=3, label="One rule per line: tensor-name substring: value",
                                  placeholder="fc1: 0.5\nattn: 0.8", elem_id="rules")
            ns.rules_btn = gr.Button("Apply rules")
    with gr.Accordion("Recipe YAML (edit and apply; mergekit-compatible)", open=True):
        ns.yaml = gr.Code(language="yaml", interactive=True, lines=12, max_lines=30, elem_id="yaml", label="recipe.yml")
        with gr.Row():
            ns.yaml_apply = gr.Button("Apply YAML", variant="primary", elem_id="apply-yaml")
            ns.yaml_reset = gr.Button("Revert edits")
        ns.yaml_error = gr.Markdown(elem_id="yaml-error")
    return ns


def unet_slots(ns):
    return ns.u_top + ns.u_left + ns.u_mid + ns.u_right


def unet_assignment(groups: list[str]) -> list[str | None]:
    """Group id for every U slot (top, left, mid, right), None for an unused slot."""
    top = [g for g in groups if not g.startswith(("IN", "M", "OUT"))]
    left = [g for g in groups if g.startswith("IN")]
    mid = [g for g in groups if g.startswith("M") and not g.startswith("OUT")]
    right = list(reversed([g for g in groups if g.startswith("OUT")]))

    def fill(items, n):
        return (items + [None] * n)[:n]

    return fill(top, UNET_TOP) + fill(left, UNET_SIDE) + fill(mid, UNET_MID) + fill(right, UNET_SIDE)


def fits_unet(groups: list[str]) -> bool:
    top = [g for g in groups if not g.startswith(("IN", "M", "OUT"))]
    return (len(top) <= UNET_TOP and sum(g.startswith("IN") for g in groups) <= UNET_SIDE
            and sum(g.startswith("OUT") for g in groups) <= UNET_SIDE
            and sum(g.startswith("M") and not g.startswith("OUT") for g in groups) <= UNET_MID)
