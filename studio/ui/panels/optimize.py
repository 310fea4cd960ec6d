"""Optimize panel: learned merges (AdaMerging, SAMerging, FDA, Fisher, RegMean) on the family's unlabeled data or a
folder of the user's own, with progress, the loss curve, and what to do with the result: load learned coefficients
into the sliders, or preview and export learned weights. The method list and each method's hyperparameter controls
come from the learners' declarations (``studio.learn``'s ``@learner`` registry). Below them, a black-box search
over the recipe's settings (``panels/search.py``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ... import figures
from ...describe import human_bytes
from ..learning import learned_markdown
from . import search as search_panel

DTYPES = ["float16", "bfloat16", "float32"]
MAX_HPARAMS = 10     # hyperparameter slots (no learner declares more drawable ones: a test checks)


def build(methods: list[tuple[str, str]], default_name: str = "learned") -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Learns a merge of the models ticked in the Models tab from each task's *unlabeled* inputs (labels "
                "are never read). **Coefficient methods** (AdaMerging, SAMerging) learn one weight per model and "
                "tensor: *Load into sliders* makes them your recipe (undo brings yours back). **Weight methods** "
                "(FDA, Fisher, RegMean) produce merged weights directly: they are previewed and can be exported "
                "here. *Steps* are optimisation steps (FDA: anchor-construction steps); Fisher and RegMean are "
                "closed-form and ignore them.", elem_classes=["panel-note"])
    with gr.Row(equal_height=True):
        ns.method = gr.Dropdown(methods, value=methods[0][1] if methods else None, label="Learned method",
                                scale=3, elem_id="learn-method")
        ns.steps = gr.Slider(5, 1000, value=100, step=5, label="steps", scale=2, elem_id="learn-steps")
        ns.run = gr.Button("Learn", variant="primary", scale=1, elem_id="learn-btn")
    ns.data = gr.Textbox(label="Unlabeled data (optional)", elem_id="learn-data",
                         placeholder="a folder with a subfolder per merged model (images or .txt) — empty: the demo "
                                     "family's unlabeled splits")
    with gr.Accordion("Hyperparameters (the method's declared defaults)", open=False):
        ns.hp_number, ns.hp_check, ns.hp_drop = [], [], []
        with gr.Row(equal_height=True):  # slot by slot, so the shown controls keep the declared order
            for i in range(MAX_HPARAMS):
                ns.hp_number.append(gr.Number(visible=False, elem_id=f"learn-hp-{i}", min_width=160))
                ns.hp_check.append(gr.Checkbox(visible=False, elem_id=f"learn-hp-check-{i}", min_width=160))
                ns.hp_drop.append(gr.Dropdown(visible=False, elem_id=f"learn-hp-drop-{i}", min_width=160))
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
    with gr.Accordion("Search settings against an objective (black-box)", open=False, elem_id="search-box"):
        ns.search = search_panel.build()
    return ns


def rendered(ns) -> list:
    return [ns.method, ns.state_note, *ns.hp_number, *ns.hp_check, *ns.hp_drop, *search_panel.rendered(ns.search)]


def render(ns, s) -> dict:
    lc = s.learning
    out = {ns.method: {"value": lc.choice}, ns.state_note: {"value": lc.readiness()},
           **search_panel.render(ns.search, s)}
    shown = lc.params()
    for i in range(MAX_HPARAMS):
        p, value = shown[i] if i < len(shown) else (None, None)
        kind = None if p is None else "drop" if p.choices else "check" if p.kind is bool else "number"
        for k, comp in (("number", ns.hp_number[i]), ("check", ns.hp_check[i]), ("drop", ns.hp_drop[i])):
            if kind != k:
                out[comp] = {"visible": False}
                continue
            props = {"visible": True, "label": p.title, "value": value,
                     "info": p.doc + (" (empty: the method's default)" if p.default is None else "")}
            if k == "drop":
                props["choices"] = list(p.choices)
            if k == "number" and p.range:
                props.update(minimum=p.range[0], maximum=p.range[1])
            out[comp] = props
    return out


def wire(ui) -> None:
    ns = ui.o
    search_panel.wire(ui, ns.search)
    ui.on(ns.method.input, lambda s, choice: s.learning.choose(choice), [ns.method], preview=False)
    for i in range(MAX_HPARAMS):
        for comp in (ns.hp_number[i], ns.hp_check[i], ns.hp_drop[i]):
            ui.on(comp.input, lambda s, v, i=i: s.learning.set_param(i, v), [comp], preview=False)
    after = [ns.result, ns.actions, ns.load_btn, ns.plot, ns.export_box, ns.export_result]

    def learn(state, choice, steps, data, progress=gr.Progress()):
        s = ui.session(state)
        ui.resend(s, [ns.method])
        progress(0.0, desc="loading models")
        lr, err = ui.attempt(lambda: s.learning.learn(choice, int(steps), progress=ui.progress(progress, "learning"),
                                                      data=data or None), "learn")
        if err:
            return {**ui.changes(s, s.last_preview, err), ns.result: f"⚠ **Not learned:** {err}"}
        pv = s.learning.preview() if lr.recipe is None else s.last_preview
        gr.Info(f"{lr.label}: learned in {lr.seconds:.1f} s")
        return {**ui.changes(s, pv), ns.result: learned_markdown(lr), ns.actions: gr.update(visible=True),
                ns.load_btn: gr.update(visible=lr.recipe is not None),
                ns.plot: gr.update(value=figures.learned_curve(lr.label, lr.result.history, lr.result.metrics),
                                   visible=True),
                ns.export_box: gr.update(visible=lr.recipe is None), ns.export_result: ""}

    ns.run.click(ui.guard(learn, "learn"), [ui.state, ns.method, ns.steps, ns.data], ui.outputs + after,
                 api_name="learn",
                 concurrency_id=ui.HEAVY, show_progress_on=[ns.result])
    ui.on(ns.load_btn.click, lambda s: s.learning.load(), api_name="load_learned")
    ui.on(ns.show_btn.click, lambda s: s.learning.preview(), api_name="preview_learned", preview=False)

    def export(state, name, dtype, overwrite):
        s = ui.session(state)
        name = (name or "learned").strip()
        target = Path(ui.env.default_export_dir()) / (name if name.endswith(".safetensors") else name + ".safetensors")
        res, err = ui.attempt(lambda: s.learning.export(str(target), dtype, bool(overwrite)), "export")
        if err:
            return f"⚠ **Export failed:** {err}"
        files = "\n".join(f"- `{f}`" for f in res["files"])
        return f"✓ **Exported** {human_bytes(res['bytes'])} in {res['seconds']:.2f} s\n\n{files}"

    ns.export_btn.click(ui.guard(export, "export learned"),
                        [ui.state, ns.export_name, ns.export_dtype, ns.export_overwrite], [ns.export_result],
                        api_name="export_learned", concurrency_id=ui.HEAVY)
