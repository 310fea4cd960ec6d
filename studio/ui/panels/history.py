"""History panel: every previewed recipe with its numbers; restore one, or undo the last edit."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

HEADERS = ["#", "time", "method", "settings", "average", "metric", "latency ms"]


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Every preview is recorded. Click a row (or type its number) and restore it; *Undo* steps back "
                "through your edits.")
    ns.table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="history-table")
    with gr.Row():
        ns.entry = gr.Number(label="Entry #", precision=0, scale=1, elem_id="history-entry")
        ns.restore = gr.Button("Restore entry", scale=1, elem_id="history-restore")
        ns.undo = gr.Button("↶ Undo last edit", scale=1, elem_id="history-undo")
    return ns
