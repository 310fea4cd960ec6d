"""History panel: every previewed recipe with its numbers; restore one, or undo the last edit."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

HEADERS = ["#", "time", "method", "settings", "average", "metric", "latency ms"]


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Every preview is recorded. Click a row (or type its number) and restore it; *Undo* steps back "
                "through your edits.")
    ns.table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="history-table",
                            column_widths=["6%", "11%", "14%", "39%", "10%", "10%", "10%"])
    with gr.Row():
        ns.entry = gr.Number(None, label="Entry #", precision=0, scale=1, elem_id="history-entry")
        ns.restore = gr.Button("Restore entry", scale=1, elem_id="history-restore")
        ns.undo = gr.Button("↶ Undo last edit", scale=1, elem_id="history-undo")
    return ns


def rendered(ns) -> list:
    return [ns.table]


def render(ns, s) -> dict:
    return {ns.table: {"value": {"headers": HEADERS, "data": s.history_rows()}}}


def wire(ui) -> None:
    ns = ui.h

    def pick(evt: gr.SelectData, table):
        try:
            row = evt.index[0]
            return int(table.iloc[row, 0]) if hasattr(table, "iloc") else int(table[row][0])
        except (IndexError, KeyError, TypeError, ValueError):  # a click on a header or an empty table
            return gr.update()

    ns.table.select(pick, [ns.table], [ns.entry], api_visibility="undocumented")
    ui.on(ns.restore.click, lambda s, n: s.restore(None if n is None else int(n)), [ns.entry], api_name="restore")
    ui.on(ns.undo.click, ui.undo)
