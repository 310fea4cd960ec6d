"""Export panel: format, dtype, target, progress, and the written result (path, size, model card, recipe)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ...describe import human_bytes
from ...output.quantize import SCHEMES
from ..exporting import export_recipe

FORMATS = ["single .safetensors file", "folder (weights + config + model card + recipe)", "single .gguf file"]
# fp8 and the GGUF types are quantized from the float32 merge; the result says how far they moved the weights
DTYPES = ["float16", "bfloat16", "float32", *SCHEMES]


def build(default_dir: str) -> SimpleNamespace:
    ns = SimpleNamespace()
    gr.Markdown("Streams the recipe tensor by tensor to disk (a few tensors in memory at a time). The output is "
                "written atomically; a non-empty target is refused unless you tick *overwrite*.")
    with gr.Row():
        ns.format = gr.Radio(FORMATS, value=FORMATS[0], label="Format", scale=3, elem_id="export-format")
        ns.dtype = gr.Dropdown(DTYPES, value="float16", label="dtype", scale=1)
    with gr.Row():
        ns.folder = gr.Textbox(value=default_dir, label="Into folder", scale=3, elem_id="export-folder")
        ns.name = gr.Textbox(value="merged", label="Name", scale=2, elem_id="export-name")
        ns.overwrite = gr.Checkbox(label="overwrite", value=False, scale=1)
    ns.button = gr.Button("Export", variant="primary", elem_id="export-btn")
    ns.result = gr.Markdown(elem_id="export-result")
    with gr.Accordion("Model card", open=True):
        ns.card = gr.Markdown(elem_id="export-card")
    return ns


def rendered(ns) -> list:
    return []


def render(ns, s) -> dict:
    return {}


def card_markdown(card: str) -> str:
    """A model card for display: its YAML front matter as a code block instead of garbled markdown."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end > 0:
            return f"```yaml\n{card[3:end].strip()}\n```\n" + card[end + 4:]
    return card


def quantization_line(summary: dict) -> str:
    """The quantization error of a quantized export, overall (relative Frobenius and max |error|)."""
    q = summary.get("quantization")
    if not q:
        return ""
    o = q["overall"]
    return (f" Quantized **{q['scheme']}**: {o['tensors']} tensors, relative error {o['relative_error']:.2e}, "
            f"max |error| {o['max_abs_error']:.2e}.")


def wire(ui) -> None:
    ns = ui.e

    def export(state, fmt, dtype, folder, name, overwrite, progress=gr.Progress()):
        s = ui.session(state)
        name = (name or "merged").strip()
        suffix = {FORMATS[0]: ".safetensors", FORMATS[2]: ".gguf"}.get(fmt)
        if suffix and not name.endswith(suffix):
            name += suffix
        progress(0.0, desc="planning")
        target = str(Path(folder or ".") / name)
        res, err = ui.attempt(lambda: export_recipe(s, target, dtype, bool(overwrite),
                                                    progress=lambda f: progress(float(f), desc="merging")), "export")
        if err:
            return f"⚠ **Export failed:** {err}", ""
        progress(1.0, desc="done")
        files = "\n".join(f"- `{f}`" for f in res["files"][:12])
        gr.Info(f"Exported {human_bytes(res['bytes'])} to {res['path']}")
        return (f"✓ **Exported** to `{res['path']}` — {human_bytes(res['bytes'])} in {res['seconds']:.2f} s, "
                f"{res['summary'].get('tensors')} tensors.{quantization_line(res['summary'])}\n\n{files}",
                card_markdown(res["card"]) or f"```yaml\n{res['recipe']}\n```")

    ns.button.click(ui.guard(export, "export"), [ui.state, ns.format, ns.dtype, ns.folder, ns.name, ns.overwrite],
                    [ns.result, ns.card],
                    api_name="export", concurrency_id=ui.HEAVY)
