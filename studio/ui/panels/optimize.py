"""Optimize panel: learned merges (AdaMerging, SAMerging, …) run with progress; the learned recipe loads into the
sliders."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


def build(methods: list[str] | None, unavailable: str | None) -> SimpleNamespace:
    ns = SimpleNamespace()
    if unavailable:
        ns.available = False
        gr.Markdown(f"**Learned merging is not available in this build.** ({unavailable})")
        return ns
    ns.available = True
    gr.Markdown("Learns merge coefficients from the family's *unlabeled* data, starting from the current models. "
                "The learned recipe replaces the sliders (undo brings yours back).")
    with gr.Row():
        ns.method = gr.Dropdown(methods or [], value=(methods or [None])[0], label="Learned method", scale=3)
        ns.steps = gr.Slider(5, 500, value=50, step=5, label="steps", scale=2)
        ns.run = gr.Button("Learn", variant="primary", scale=1, elem_id="learn-btn")
    ns.result = gr.Markdown()
    ns.plot = gr.Plot(label="Training trajectory")
    return ns
