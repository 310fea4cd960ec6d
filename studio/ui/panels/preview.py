"""Preview panel: latency, accuracy bar chart, score table, text samples, image grid, the formula with numbers."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ...devices import memory_use
from .. import preview_view as V

MAX_REQUEST = 16   # request settings a preview pipeline may declare (the text preview has 14)


def build() -> SimpleNamespace:
    ns = SimpleNamespace()
    ns.latency = gr.Markdown("Loading…", elem_id="latency")
    ns.memory = gr.Markdown(elem_id="memory")
    ns.status = gr.Markdown(elem_id="status")
    ns.plot = gr.Plot(label="Scores: base · expert · previous · merge", elem_id="score-plot")
    ns.table = gr.Dataframe(label="Per-task scores", interactive=False, elem_id="score-table",
                            column_widths=["20%", "14%", "14%", "14%", "20%", "18%"])
    ns.samples = gr.Markdown(elem_id="samples")
    with gr.Accordion("The same prompts on each input model", open=False, visible=False) as ns.input_box:
        ns.input_samples = gr.Markdown(elem_id="input-samples")
    # PNG, not gradio's default WebP: a downloaded image keeps its prompt, seed and recipe (drop it back to reopen)
    ns.image = gr.Image(label="Samples (fixed seeds)", visible=False, interactive=False, elem_id="sample-grid",
                        buttons=["download", "fullscreen"], format="png")
    ns.gallery = gr.Gallery(label="Samples (fixed seeds)", visible=False, columns=4, height="auto",
                            object_fit="contain", elem_id="gallery", format="png")
    with gr.Accordion("Preview settings (prompts, seeds, …)", open=True, visible=False) as ns.request_box:
        ns.req_text, ns.req_number, ns.req_check = [], [], []
        for i in range(MAX_REQUEST):  # slot by slot, so the shown controls keep the request's order
            ns.req_text.append(gr.Textbox(visible=False, elem_id=f"req-text-{i}"))
            ns.req_number.append(gr.Number(visible=False, elem_id=f"req-number-{i}", min_width=120))
            ns.req_check.append(gr.Checkbox(visible=False, elem_id=f"req-check-{i}"))
    with gr.Row():
        ns.preview_btn = gr.Button("↻ Re-run preview", size="sm", elem_id="preview-btn")
    with gr.Accordion("How this merge is computed", open=True):
        ns.formula = gr.Markdown(elem_id="formula")
    with gr.Accordion("Raw preview numbers", open=False):
        ns.raw = gr.JSON(elem_id="raw-preview")
    return ns


def live(ns) -> list:
    """What every re-preview may change: the formula and the preview itself (the status line included)."""
    return [ns.formula, ns.latency, ns.memory, ns.status, ns.plot, ns.table, ns.samples, ns.input_box,
            ns.input_samples, ns.image, ns.gallery, ns.raw]


def rendered(ns) -> list:
    return live(ns) + [ns.request_box, *ns.req_text, *ns.req_number, *ns.req_check]


def render(ns, s) -> dict:
    out = {ns.formula: {"value": s.formula()}}
    fields = s.previewing.request_fields()
    out[ns.request_box] = {"visible": bool(fields)}
    for i in range(MAX_REQUEST):
        f = fields[i] if i < len(fields) else None
        kind = None if f is None else "check" if f.kind == "bool" else "number" if f.kind in ("int", "float") \
            else "text"
        for k, comp in (("text", ns.req_text[i]), ("number", ns.req_number[i]), ("check", ns.req_check[i])):
            if kind != k:
                out[comp] = {"visible": False}
                continue
            label = f.name.replace("_", " ")
            props = {"visible": True, "label": label, "value": f.value}
            if k == "text":
                props["lines"] = 3 if f.kind == "lines" or f.name == "text" else 1
                props["info"] = {"lines": "one per line", "numbers": "comma-separated", "path": "a file inside the "
                                 "allowed folders (empty: none)"}.get(f.kind, "")
            if k == "number":
                props["precision"] = 0 if f.kind == "int" else None
            out[comp] = props
    return out


def render_preview(ns, s, pv) -> dict:
    """The preview's components for one Preview (a superseded one only updates the latency line)."""
    if pv.superseded:
        return {ns.latency: {"value": V.latency_text(pv)}}
    headers, rows = V.score_table(pv)
    metric = (pv.result or {}).get("metric", "score")
    imgs = V.images(pv)
    numbers = V.has_numbers(pv)
    inputs_text = V.inputs_markdown(pv)
    raw = {"metric": pv.result.get("metric"), "average": pv.result.get("average"),
           "per_task": pv.result.get("per_task"), "latency_ms": round(pv.total_seconds * 1000, 1),
           "merge_ms": round(pv.merge_seconds * 1000, 1), "eval_ms": round(pv.eval_seconds * 1000, 1),
           "changed_tensors": pv.changed, "history_id": s.history[-1].id if s.history else None}
    return {ns.latency: {"value": V.latency_text(pv)}, ns.memory: {"value": V.memory_text(memory_use(s.env.device))},
            ns.plot: {"value": V.score_figure(pv) if numbers else None, "visible": numbers},
            ns.table: {"value": {"headers": headers, "data": rows}, "label": f"Per-task {metric}",
                       "visible": numbers},
            ns.samples: {"value": V.samples_markdown(pv)}, ns.input_samples: {"value": inputs_text},
            ns.input_box: {"visible": bool(inputs_text)},   # images of the inputs are in the gallery instead
            ns.image: {"value": imgs[0][0] if len(imgs) == 1 else None, "visible": len(imgs) == 1},
            ns.gallery: {"value": imgs if len(imgs) > 1 else None, "visible": len(imgs) > 1},
            ns.raw: {"value": raw}}


def wire(ui) -> None:
    ns = ui.p
    # re-run = refresh: the whole page is sent again, as the session has it
    ui.on(ns.preview_btn.click, lambda s: None, api_name="preview", refresh=True)

    def set_field(i):
        def edit(s, value):
            fields = s.previewing.request_fields()
            if i < len(fields):
                s.previewing.set_request(fields[i].name, value)
        return edit

    for i in range(MAX_REQUEST):  # a text field applies on Enter or when it loses focus, as a number does
        for comp, events in ((ns.req_text[i], ("submit", "blur")), (ns.req_number[i], ("submit", "blur")),
                             (ns.req_check[i], ("input",))):
            for event in events:
                ui.on(getattr(comp, event), set_field(i), [comp], scope=[])
