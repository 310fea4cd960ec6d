"""Analysis panel: a 1-D landscape over one setting, the 2-D task-vector plane of two experts (with the current
recipe and any learned trajectory marked), a grid over two settings (with a search's trials drawn), and the
task-vector diagnostics figures."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ... import figures
from ..controls import path_choices

GRID_MIN, GRID_MAX, GRID_DEFAULT = 5, 15, 7
DIAGNOSTIC_PLOTS = 4


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
        gr.Markdown("#### Landscape over two settings")
        gr.Markdown("The preview score over a grid of two settings (everything else as in the recipe); the star marks "
                    "your current values. When the last search in the Optimize tab varied both, its trials are drawn "
                    "on top, in trial order.", elem_classes=["panel-note"])
        with gr.Row(equal_height=True):
            ns.params_x = gr.Dropdown(label="x: setting", scale=2, elem_id="params-x")
            ns.params_y = gr.Dropdown(label="y: setting", scale=2, elem_id="params-y")
            ns.params_grid = gr.Slider(GRID_MIN, GRID_MAX, value=GRID_DEFAULT, step=1, label="grid size",
                                       info="points per axis", scale=2, elem_id="params-grid")
            ns.params_btn = gr.Button("Compute grid", variant="primary", scale=1, elem_id="params-btn")
        ns.params_note = gr.Markdown(elem_id="params-note")
        ns.params_plot = gr.Plot(show_label=False, visible=False, elem_id="params-plane")
    with gr.Column():
        gr.Markdown("#### Task-vector diagnostics")
        gr.Markdown("Sign conflicts, cosine similarity, pairwise disagreement and sizes of the task vectors "
                    "τᵢ = θᵢ − θ₀ per layer group: where they disagree, merges lose accuracy.",
                    elem_classes=["panel-note"])
        ns.diag_btn = gr.Button("Compute diagnostics", elem_id="diag-btn")
        ns.diag_note = gr.Markdown()
        ns.diag_plots = [gr.Plot(show_label=False, visible=False, elem_id=f"diag-{i}")
                         for i in range(DIAGNOSTIC_PLOTS)]
    return ns


def rendered(ns) -> list:
    return [ns.target, ns.plane_x, ns.plane_y, ns.params_x, ns.params_y]


def render(ns, s) -> dict:
    experts = s.experts()
    choices = [(s.label(e), e) for e in experts]
    target = None if s.target is None else str(s.target)
    return {ns.target: {"choices": path_choices(s.recipe, s.label), "value": target},
            ns.plane_x: {"choices": choices, "value": experts[0] if experts else None},
            ns.plane_y: {"choices": choices, "value": experts[1] if len(experts) > 1 else None},
            **params_axes(ns, s)}


def params_axes(ns, s) -> dict:
    """The two-settings axes: the last search's first two settings when it varied two, else the first two."""
    axes = s.landscapes.axis_choices()
    run = s.searching.run
    picks = (run.settings if run is not None and len(run.settings) > 1 else []) or [v for _, v in axes]
    return {ns.params_x: {"choices": axes, "value": picks[0] if picks else None},
            ns.params_y: {"choices": axes, "value": picks[1] if len(picks) > 1 else None}}


def plane_note(data: dict) -> str:
    cur = next((m for m in data["markers"] if m["name"] == "current"), None)
    parts = [f"{data['evaluations']} merges scored in {data['seconds']:.1f} s."]
    if cur is not None:
        parts.append(f"Current recipe: {data['score_name']} {cur['score']:.4g}"
                     + (f", {cur['residual']:.0%} of its task-vector change lies off this plane (the other experts)"
                        if cur.get("residual", 0) > 0.01 else ", on the plane") + ".")
    if data.get("note"):
        parts.append(data["note"])
    return " ".join(parts)


def wire(ui) -> None:
    ns = ui.a
    heavy = dict(concurrency_id=ui.HEAVY)

    def sweep(state, target, points, progress=gr.Progress()):
        s = ui.session(state)
        progress(0.0, desc="sweeping")
        data, err = ui.attempt(lambda: s.landscapes.sweep(target or None, points,
                                                          progress=ui.progress(progress, "sweeping")), "sweep")
        return gr.update() if err else gr.update(value=figures.sweep_line(data), visible=True)

    ns.sweep_btn.click(ui.guard(sweep, "sweep"), [ui.state, ns.target, ns.points], [ns.landscape],
                       api_name="landscape", **heavy)

    def plane(state, x, y, grid, progress=gr.Progress()):
        s = ui.session(state)
        progress(0.0, desc="task-vector plane")
        data, err = ui.attempt(lambda: s.landscapes.plane(x or None, y or None, grid,
                                                          progress=ui.progress(progress, "task-vector plane")),
                               "task-vector plane")
        if err:
            return f"⚠ {err}", gr.update()
        return plane_note(data), gr.update(value=figures.landscape_contour(data), visible=True)

    ns.plane_btn.click(ui.guard(plane, "task-vector plane"), [ui.state, ns.plane_x, ns.plane_y, ns.grid],
                       [ns.plane_note, ns.plane],
                       api_name="landscape_plane", **heavy)

    def params(state, x, y, grid, progress=gr.Progress()):
        s = ui.session(state)
        progress(0.0, desc="two-settings grid")
        data, err = ui.attempt(lambda: s.landscapes.params_plane(x, y, grid,
                                                                 progress=ui.progress(progress, "two-settings grid")),
                               "two-settings grid")
        if err:
            return f"⚠ {err}", gr.update()
        note = f"{data['evaluations']} merges scored in {data['seconds']:.1f} s. {data['note']}"
        return note, gr.update(value=figures.landscape_contour(data), visible=True)

    ns.params_btn.click(ui.guard(params, "two-settings grid"), [ui.state, ns.params_x, ns.params_y, ns.params_grid],
                        [ns.params_note, ns.params_plot], api_name="landscape_params", **heavy)

    def diagnostics(state, progress=gr.Progress()):
        s = ui.session(state)
        progress(0.0, desc="task-vector statistics")
        stats, err = ui.attempt(s.landscapes.statistics, "diagnostics")
        figs = [] if err else figures.diagnostic_figures(stats, limit=DIAGNOSTIC_PLOTS)
        note = (f"⚠ {err}" if err else
                f"Task vectors of {len(stats['models']) - 1} models against `{s.label(stats['models'][0])}`.")
        return [note] + [gr.update(value=figs[i], visible=True) if i < len(figs) else gr.update(visible=False)
                         for i in range(DIAGNOSTIC_PLOTS)]

    ns.diag_btn.click(ui.guard(diagnostics, "diagnostics"), [ui.state], [ns.diag_note] + ns.diag_plots,
                      api_name="diagnostics", **heavy)
