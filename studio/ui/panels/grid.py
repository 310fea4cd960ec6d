"""Grid panel: two settings (or the method) against each other, one preview per pair, saved as a PNG whose metadata
holds each cell's recipe."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr


def build(default_dir: str) -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Each cell is the recipe with both settings replaced, re-merged (only what they touch) and previewed "
                "like the preview on the right: images from your prompts, text from your prompts, or the evaluator's "
                "numbers. Values: a list `0, 0.5, 1`, a range `0:1:5` (five values), or method names for "
                "`merge_method`.", elem_classes=["panel-note"])
    with gr.Row(equal_height=True):
        ns.x_path = gr.Dropdown(label="x: setting", allow_custom_value=True, scale=3, elem_id="grid-x-path")
        ns.x_values = gr.Textbox(value="0:1:3", label="x: values", scale=2, elem_id="grid-x-values")
    with gr.Row(equal_height=True):
        ns.y_path = gr.Dropdown(label="y: setting", allow_custom_value=True, scale=3, elem_id="grid-y-path")
        ns.y_values = gr.Textbox(value="0:1:3", label="y: values", scale=2, elem_id="grid-y-values")
    ns.button = gr.Button("Render grid", variant="primary", elem_id="grid-btn")
    ns.note = gr.Markdown(elem_id="grid-note")
    ns.image = gr.Image(show_label=False, interactive=False, visible=False, elem_id="grid-image",
                        buttons=["download", "fullscreen"])
    with gr.Row(equal_height=True):
        ns.folder = gr.Textbox(value=default_dir, label="Save into folder", scale=3)
        ns.name = gr.Textbox(value="grid.png", label="Name", scale=2, elem_id="grid-name")
        ns.overwrite = gr.Checkbox(label="overwrite", value=False, scale=1)
        ns.save = gr.Button("Save PNG", scale=1, elem_id="grid-save")
    ns.saved = gr.Markdown(elem_id="grid-saved")
    return ns


def rendered(ns) -> list:
    return [ns.x_path, ns.y_path]


def render(ns, s) -> dict:
    choices = s.grids.axis_choices()
    first = choices[0] if choices else None
    second = next((c for c in choices if c != first), first)
    return {ns.x_path: {"choices": choices, "value": first}, ns.y_path: {"choices": choices, "value": second}}


def wire(ui) -> None:
    ns = ui.g

    def grid(state, xp, xv, yp, yv, progress=gr.Progress()):
        s = ui.session(state)
        progress(0.0, desc="grid")
        g, err = ui.attempt(lambda: s.grids.render(f"{xp}={xv}", f"{yp}={yv}",
                                                   progress=ui.progress(progress, "grid")), "grid")
        if err:
            return f"⚠ {err}", gr.update()
        cells = len(g.x.values) * len(g.y.values)
        return (f"{cells} previews in {g.seconds:.1f} s.",
                gr.update(value=s.grids.picture(), visible=True))

    ns.button.click(ui.guard(grid, "grid"), [ui.state, ns.x_path, ns.x_values, ns.y_path, ns.y_values],
                    [ns.note, ns.image],
                    api_name="grid", concurrency_id=ui.HEAVY, show_progress_on=[ns.note])

    def save(state, folder, name, overwrite):
        s = ui.session(state)
        path, err = ui.attempt(lambda: s.grids.save(str(Path(folder or ".") / (name or "grid.png")),
                                                    bool(overwrite)), "save grid")
        return f"⚠ **Not saved:** {err}" if err else f"✓ Saved `{path}` (each cell's recipe is in its metadata)"

    ns.save.click(ui.guard(save, "save grid"), [ui.state, ns.folder, ns.name, ns.overwrite], [ns.saved],
                  api_name="save_grid",
                  concurrency_id=ui.HEAVY)
