"""Files panel (in the Models tab): a file browser over the folders this studio may read, what each entry is, one
button that does what the entry is for, and a drop zone for recipes, merged models and images with merge settings."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

HEADERS = ["name", "what it is"]


def build(places: list[tuple[str, str]]) -> SimpleNamespace:
    ns = SimpleNamespace()
    with gr.Accordion("Open your files — models, LoRAs, VAEs, recipes, evaluation data", open=False,
                      elem_id="files-box"):
        with gr.Row():
            ns.place = gr.Dropdown(places, value=None, label="Folder", allow_custom_value=True, scale=5,
                                   elem_id="files-place",
                                   info="the folders this studio may read; type a folder inside one to go there")
            ns.up = gr.Button("⬆ Up", scale=1, min_width=80, elem_id="files-up")
        ns.where = gr.Markdown(elem_id="files-where")
        ns.table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, max_height=280, elem_id="files-table",
                                column_widths=["60%", "40%"])
        ns.row = gr.Number(visible=False, precision=0)
        with gr.Row():
            ns.open = gr.Button("Open", variant="primary", elem_id="files-open")
            ns.start = gr.Button("New recipe with it", visible=False, elem_id="files-start")
        ns.message = gr.Markdown(elem_id="files-message")
        ns.drop = gr.File(label="…or drop a recipe YAML, a merged .safetensors or a PNG with merge settings here",
                          file_types=[".yml", ".yaml", ".png", ".safetensors"], type="filepath", height=110,
                          elem_id="files-drop")
    return ns


def rendered(ns) -> list:
    return [ns.place, ns.where, ns.table, ns.open, ns.start, ns.message]


def render(ns, s) -> dict:
    f = s.files
    chosen = f.selected
    where = (f"`{f.cwd}` · {len(f.entries)} entries" if f.cwd is not None else "Choose a folder to list it.")
    if chosen is not None:
        where += f" — selected **{chosen.name}** ({chosen.label})"
    return {ns.place: {"value": f.place}, ns.where: {"value": where},
            ns.table: {"value": {"headers": HEADERS, "data": f.rows()}},
            ns.open: {"value": f.open_label(), "interactive": chosen is not None},
            ns.start: {"visible": chosen is not None and chosen.action == "model"},
            ns.message: {"value": f.message}}


def wire(ui) -> None:
    ns = ui.f

    def pick(evt: gr.SelectData):
        try:
            return int(evt.index[0])
        except (IndexError, TypeError, ValueError):  # a click on a header
            return gr.update()

    scope = rendered(ns)
    ui.on(ns.place.input, lambda s, place: s.files.go(place), [ns.place], preview=False, scope=scope)
    ui.on(ns.up.click, lambda s: s.files.up(), preview=False, scope=scope)
    picked = ns.table.select(pick, None, [ns.row], api_visibility="undocumented", queue=False)
    ui.on(picked.then, lambda s, row: s.files.select(int(row)), [ns.row], preview=False, scope=scope)
    ui.on(ns.open.click, lambda s: s.files.open(), api_name="open_file")
    ui.on(ns.start.click, lambda s: s.files.start_with(), api_name="new_recipe_with_file")
    ui.on(ns.drop.upload, lambda s, path: s.files.drop(path), [ns.drop], api_name="drop_file")
