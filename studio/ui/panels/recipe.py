"""Recipe panel: method picker, generated parameter controls, per-model sliders, per-layer / per-block sliders (a U
for SD blocks, a strip for LLM layers), presets and curve shortcuts, name-pattern rules, and the editable YAML."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ...errors import StudioError
from ...recipe.edit import CURVES
from ..controls import controls_view

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
        ns.strip = []  # LLM layers in reading order
        with gr.Column(visible=True) as ns.strip_box:
            for r in range(STRIP_SLOTS // STRIP_COLS):
                with gr.Row():
                    for c in range(STRIP_COLS):
                        ns.strip.append(_hidden_slider(elem_id=f"strip-{r * STRIP_COLS + c}", min_width=150))
        # U: IN blocks down the left, M00 at the bottom, OUT blocks up the right, BASE/VAE on top
        with gr.Column(visible=False) as ns.unet_box:
            with gr.Row():
                ns.u_top = [_hidden_slider(elem_id=f"u-top-{i}") for i in range(UNET_TOP)]
            # three columns that never wrap: a column's default 320 px minimum made the OUT column fall below the IN
            # column (with an empty middle) whenever the control area was under ~1,000 px wide
            with gr.Row(equal_height=False, elem_id="u-row"):
                with gr.Column(min_width=120, scale=2):
                    ns.u_left = [_hidden_slider(elem_id=f"u-left-{i}", min_width=120) for i in range(UNET_SIDE)]
                with gr.Column(min_width=100, scale=1):
                    gr.Markdown("<div class='u-center'>IN ↓ · · · ↑ OUT</div>")
                    ns.u_mid = [_hidden_slider(elem_id=f"u-mid-{i}", min_width=100) for i in range(UNET_MID)]
                with gr.Column(min_width=120, scale=2):
                    ns.u_right = [_hidden_slider(elem_id=f"u-right-{i}", min_width=120) for i in range(UNET_SIDE)]
        ns.unet = ns.u_top + ns.u_left + ns.u_mid + ns.u_right
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
        with gr.Row(equal_height=True):  # named recipes in the workspace's recipes/ folder
            ns.save_name = gr.Textbox(label="Save as", placeholder="my-merge", scale=2, elem_id="save-name")
            ns.save_btn = gr.Button("Save recipe", scale=1, elem_id="save-recipe")
            ns.saved = gr.Dropdown(label="Saved recipes", scale=2, elem_id="saved-recipes")
            ns.open_btn = gr.Button("Open", scale=1, elem_id="open-recipe")
    with gr.Row(visible=False):  # for scripts and gradio_client: set any setting by its path
        ns.api_path = gr.Textbox(label="setting path")
        ns.api_value = gr.Number(label="value")
        ns.api_btn = gr.Button("set")
    return ns


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


def top_groups(groups: list[str]) -> list[str]:
    """The groups that get a slider: a MoE layer's router, shared expert and experts (``L07.expert03``) follow their
    layer's slider (``L07``); the YAML, the rules and ``--set`` address them one by one."""
    return [g for g in groups if "." not in g]


def slot_groups(groups: list[str], shape: str) -> tuple[bool, list[str | None], list[str | None]]:
    """(U shape?, the group of each strip slot, the group of each U slot)."""
    use_unet = shape == "unet" and fits_unet(groups)
    strip = [] if use_unet else top_groups(groups)[:STRIP_SLOTS]
    strip = strip + [None] * (STRIP_SLOTS - len(strip))
    unet = unet_assignment(groups) if use_unet else [None] * (UNET_TOP + 2 * UNET_SIDE + UNET_MID)
    return use_unet, strip, unet


# ----------------------------------------------------------------------------------------------------- render


def rendered(ns) -> list:
    return ([ns.method, ns.method_doc, *ns.g_slider, *ns.g_check, *ns.g_drop]
            + [sl for row in ns.m_slider for sl in row]
            + [ns.target, *ns.strip, *ns.unet, ns.strip_box, ns.unet_box, ns.layout_note, ns.rules, ns.yaml,
               ns.yaml_error, ns.saved])


def _slot_props(slot, label: str | None = None) -> dict:
    # whether a setting varies by layer is said in the per-layer section (it changes with every per-layer slider,
    # and a plain slider's hint is not re-sent then); rules change only through the rules box
    info = slot.info
    if slot.rules:
        info = (info + " · refined by name-pattern rules").strip(" ·")
    props = {"visible": True, "value": slot.value, "label": label or slot.label, "info": info}
    if slot.kind == "slider":
        props.update(minimum=slot.minimum, maximum=slot.maximum, step=slot.step)
    if slot.kind == "dropdown":
        props["choices"] = slot.choices
    return props


def render(ns, s) -> dict:
    """What the Recipe panel shows for session ``s`` (every component, as properties)."""
    spec = s.spec
    cv = controls_view(s.recipe, s.layout(), s.target, s.label)
    doc = (spec.doc or "").strip().split("\n")[0]
    out: dict = {ns.method: {"value": cv.method}, ns.saved: {"choices": s.saved.names()},
                 ns.method_doc: {"value": f"**{spec.label or spec.name}** — {doc}  "
                                          + ("<sub>needs a base model</sub>" if spec.needs_base else "")}}
    for i in range(MAX_GLOBAL):
        slot = cv.global_slots[i] if i < len(cv.global_slots) else None
        for kind, comp in (("slider", ns.g_slider[i]), ("checkbox", ns.g_check[i]), ("dropdown", ns.g_drop[i])):
            out[comp] = _slot_props(slot) if slot and slot.kind == kind else {"visible": False}
    for ri, sliders in enumerate(ns.m_slider):
        row = cv.model_rows[ri] if ri < len(cv.model_rows) else None
        for k, comp in enumerate(sliders):
            slot = row.slots[k] if row and k < len(row.slots) else None
            out[comp] = (_slot_props(slot, f"{row.label} · {slot.label}")
                         if slot is not None and slot.kind == "slider" else {"visible": False})
    out[ns.target] = {"choices": cv.targets, "value": cv.target, "interactive": bool(cv.targets)}
    lo, hi, step = cv.group_range
    values = dict(zip(cv.groups, cv.group_values))
    use_unet, strip, unet = slot_groups(cv.groups, cv.layout_shape)
    for comp, g in zip(ns.strip + ns.unet, strip + unet):
        if g is None or not cv.target:
            out[comp] = {"visible": False}
            continue
        lab = cv.group_labels.get(g, "")
        out[comp] = {"visible": True, "minimum": lo, "maximum": hi, "step": step, "value": values[g],
                     "label": g + (f" · {lab}" if lab and lab != g else "")}
    out[ns.strip_box] = {"visible": not use_unet}
    out[ns.unet_box] = {"visible": use_unet}
    note = (f"Layout **{cv.layout_name}** · {len(cv.groups)} groups · "
            + ("U-Net blocks (IN down the left, OUT up the right)" if use_unet else "layers in order"))
    shown = len(top_groups(cv.groups))
    if shown < len(cv.groups):
        note += (f" · {shown} sliders: each layer's sets its router and experts too — set one expert in the "
                 f"YAML (`L07.expert03: 0.5`)")
    if shown > STRIP_SLOTS and not use_unet:
        note += f" · first {STRIP_SLOTS} shown; use curves, presets or YAML for the rest"
    if cv.target:
        label = dict((t, lab) for lab, t in cv.targets).get(cv.target, cv.target)
        distinct = len(set(cv.group_values))
        note += (f"  \n**{label}**: " + (f"{distinct} different values across the groups (they override the plain "
                                           f"slider above)" if distinct > 1 else "one value for every group"))
    out[ns.layout_note] = {"value": note}
    out[ns.rules] = {"value": cv.rules_text}
    out[ns.yaml] = {"value": s.yaml()}
    out[ns.yaml_error] = {"value": ""}
    return out


# ----------------------------------------------------------------------------------------------------- events


def wire(ui) -> None:
    ns = ui.r
    ui.on(ns.method.input, lambda s, name: s.set_method(name), [ns.method], api_name="set_method")

    def set_global(i):
        def edit(s, value):
            params = [p for p in s.spec.global_params() if not p.compat]  # the slots show these, in this order
            if i < len(params):
                s.set_value(f"parameters.{params[i].name}", value)
        return edit

    # a per-layer value changes the recipe's text, the per-layer note, the preview and the history: nothing else;
    # a plain slider also gives every group its value
    group_scope = [ns.yaml, ns.yaml_error, ns.layout_note, ui.h.table]
    slider_scope = group_scope + ns.strip + ns.unet
    for i in range(MAX_GLOBAL):
        ui.on(ns.g_slider[i].release, set_global(i), [ns.g_slider[i]], scope=slider_scope)
        ui.on(ns.g_check[i].input, set_global(i), [ns.g_check[i]])
        ui.on(ns.g_drop[i].input, set_global(i), [ns.g_drop[i]])

    def set_model(ri, k):
        def edit(s, value):
            params = [p for p in s.spec.per_model_params() if not p.compat]
            if k < len(params) and ri < len(s.included()):
                s.set_value(f"models.{ri}.{params[k].name}", value)
        return edit

    for ri, row in enumerate(ns.m_slider):
        for k, sl in enumerate(row):
            ui.on(sl.release, set_model(ri, k), [sl], scope=slider_scope)
    ui.on(ns.target.input, lambda s, t: s.set_target(t), [ns.target], api_name="set_target", preview=False)

    def set_group(j, which):
        def edit(s, value):
            layout = s.layout()
            g = slot_groups(list(layout.groups), layout.shape)[which][j]
            if g is not None:
                s.set_group_value(g, value)
        return edit

    for j, sl in enumerate(ns.strip):
        ui.on(sl.release, set_group(j, 1), [sl], scope=group_scope)
    for j, sl in enumerate(ns.unet):
        ui.on(sl.release, set_group(j, 2), [sl], scope=group_scope)
    ui.on(ns.preset.input, lambda s, name: s.apply_preset(name), [ns.preset], api_name="apply_preset")
    ui.on(ns.curve_btn.click, lambda s, c, lo, hi: s.apply_curve(c, lo, hi), [ns.curve, ns.curve_lo, ns.curve_hi],
          api_name="apply_curve")
    ui.on(ns.rules_btn.click, lambda s, text: s.set_rules_text(text), [ns.rules], api_name="set_rules")

    def apply_yaml(state, text):
        s = ui.session(state)
        ui.resend(s, [ns.yaml])
        try:
            ignored = s.set_yaml(text)
        except StudioError as e:  # keep the user's text so they can fix it, and say what is wrong beside it
            return ui.changes(s, s.last_preview, skip=[ns.yaml],
                              override={ns.yaml_error: {"value": f"⚠ **Not applied:** {e}"}})
        pv, error = ui.attempt(s.preview, "preview")
        said = {ns.yaml_error: {"value": "".join(f"⚠ {w}  \n" for w in ignored)}} if ignored else None
        return ui.changes(s, pv or s.last_preview, error, override=said)

    ns.yaml_apply.click(ui.guard(apply_yaml, "apply YAML"), [ui.state, ns.yaml], ui.outputs, api_name="apply_yaml",
                        concurrency_id=ui.HEAVY,
                        show_progress_on=[ui.p.latency])
    # the draft arrives with the event, so the page's YAML differs from the recipe's and is sent back
    ui.on(ns.yaml_reset.click, lambda s, draft: None, [ns.yaml], api_name="revert_yaml", preview=False)
    ui.on(ns.undo.click, ui.undo, api_name="undo")
    ui.on(ns.save_btn.click, lambda s, name: s.saved.save(name), [ns.save_name], api_name="save_recipe",
          preview=False)
    ui.on(ns.open_btn.click, lambda s, name: s.saved.open(name), [ns.saved], api_name="open_recipe")
    ui.on(ns.api_btn.click, lambda s, path, value: s.set_value(path, value), [ns.api_path, ns.api_value],
          api_name="set_param")
