"""The studio's Gradio Blocks: panels on the left, the live preview on the right, every event a Session call.

The UI holds no merge math: handlers call :class:`~studio.ui.session.Session` (which calls the library) and render
what it returns. Each browser tab gets its own Session in a ``gr.State``; heavy work runs in one concurrency group
whose size bounds parallel merges; slider releases use ``trigger_mode="always_last"`` so a newer value supersedes
queued older ones.
"""

from __future__ import annotations

import functools
import logging
import traceback
from pathlib import Path

import gradio as gr

from ..errors import StudioError
from . import preview_view as V
from .panels import analysis as analysis_panel
from .panels import export as export_panel
from .panels import history as history_panel
from .panels import models as models_panel
from .panels import optimize as optimize_panel
from .panels import preview as preview_panel
from .panels import recipe as recipe_panel
from .session import Session, StudioEnv, method_choices

log = logging.getLogger("studio.ui")

CSS = """
.gradio-container {max-width: 1600px !important}
#title h1 {margin-bottom: 0}
.section-title h4 {margin: 6px 8px 0 8px}
#latency {font-size: 1.05em}
#verdict {padding: 6px 10px; border-radius: 8px; background: var(--block-background-fill)}
.u-center {text-align: center; color: var(--body-text-color-subdued); padding: 8px 0}
#status:empty {display: none}
.method-doc {font-size: 0.9em; color: var(--body-text-color-subdued)}
"""

HEAVY = "heavy"


def _theme():
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate")


class StudioUI:
    """Builds the Blocks for one StudioEnv; ``demo`` is the gr.Blocks, ``launch()`` starts it."""

    def __init__(self, env: StudioEnv):
        self.env = env
        self.demo = self._build()

    # ------------------------------------------------------------------------------------------- helpers
    def _session(self, state) -> Session:
        return state if isinstance(state, Session) else self.env.new_session()

    def _render_controls(self, s: Session) -> list:
        cv = s.controls()
        r = self.r
        spec = s.spec
        out: list = [gr.update(value=cv.method)]
        out.append(f"**{spec.label or spec.name}** — {_first_line(spec.doc)}  "
                   + (f"<sub>needs a base model</sub>" if spec.needs_base else ""))
        # global slots
        for i in range(recipe_panel.MAX_GLOBAL):
            slot = cv.global_slots[i] if i < len(cv.global_slots) else None
            info = slot.info if slot else ""
            if slot and slot.per_group:
                info = (info + " · varies per layer (see below)").strip(" ·")
            if slot and slot.rules:
                info = (info + " · refined by name-pattern rules").strip(" ·")
            out.append(gr.update(visible=bool(slot and slot.kind == "slider"),
                                 **(dict(minimum=slot.minimum, maximum=slot.maximum, step=slot.step,
                                         value=slot.value, label=slot.label, info=info)
                                    if slot and slot.kind == "slider" else {})))
            out.append(gr.update(visible=bool(slot and slot.kind == "checkbox"),
                                 **(dict(value=slot.value, label=slot.label, info=info)
                                    if slot and slot.kind == "checkbox" else {})))
            out.append(gr.update(visible=bool(slot and slot.kind == "dropdown"),
                                 **(dict(choices=slot.choices, value=slot.value, label=slot.label, info=info)
                                    if slot and slot.kind == "dropdown" else {})))
        # per-model rows
        for ri in range(recipe_panel.MAX_MODELS):
            row = cv.model_rows[ri] if ri < len(cv.model_rows) else None
            for k in range(recipe_panel.MAX_PER_MODEL):
                slot = row.slots[k] if row and k < len(row.slots) else None
                if slot is None or slot.kind != "slider":
                    out.append(gr.update(visible=False))
                    continue
                info = slot.info + (" · varies per layer" if slot.per_group else "")
                out.append(gr.update(visible=True, minimum=slot.minimum, maximum=slot.maximum, step=slot.step,
                                     value=slot.value, label=f"{row.label} · {slot.label}", info=info))
        out.append(gr.update(choices=[(lab, t) for lab, t in cv.targets], value=cv.target,
                             interactive=bool(cv.targets)))
        lo, hi, step = cv.group_range
        use_unet = cv.layout_shape == "unet" and recipe_panel.fits_unet(cv.groups)
        values = dict(zip(cv.groups, cv.group_values))

        def group_update(g):
            if g is None or not cv.target:
                return gr.update(visible=False)
            lab = cv.group_labels.get(g, "")
            return gr.update(visible=True, minimum=lo, maximum=hi, step=step, value=values[g],
                             label=f"{g}" + (f" · {lab}" if lab and lab != g else ""))

        strip_groups = [] if use_unet else cv.groups[:recipe_panel.STRIP_SLOTS]
        for j in range(recipe_panel.STRIP_SLOTS):
            out.append(group_update(strip_groups[j] if j < len(strip_groups) else None))
        assignment = recipe_panel.unet_assignment(cv.groups) if use_unet else [None] * len(
            recipe_panel.unet_slots(r))
        for g in assignment:
            out.append(group_update(g))
        out.append(gr.update(visible=not use_unet))
        out.append(gr.update(visible=use_unet))
        note = (f"Layout **{cv.layout_name}** · {len(cv.groups)} groups · "
                + ("U-Net blocks (IN down the left, OUT up the right)" if use_unet else "layers in order"))
        if len(cv.groups) > recipe_panel.STRIP_SLOTS and not use_unet:
            note += f" · first {recipe_panel.STRIP_SLOTS} shown; use curves, presets or YAML for the rest"
        out.append(note)
        out.append(cv.rules_text)
        out.append(cv.yaml)
        out.append("")  # yaml error cleared
        out.append(cv.formula)
        return out

    def _render_models(self, s: Session) -> list:
        ok, verdict = s.dry_run()
        choices = s.model_choices()
        base = s.recipe.get("base_model")
        return [
            gr.update(value=s.family),
            verdict,
            s.models_table(),
            gr.update(choices=choices, value=s.included()),
            gr.update(choices=[("(none)", "")] + choices, value=base or ""),
            gr.update(choices=choices, value=base or (choices[0][1] if choices else None)),
            gr.update(choices=s.lora_choices()),
        ]

    def _render_preview(self, s: Session, pv, error: str | None = None) -> list:
        if pv is None or pv.superseded:
            return [gr.update(value=V.latency_text(pv)) if pv else gr.update(),
                    f"⚠ {error}" if error else "", gr.update(), gr.update(), gr.update(), gr.update(), gr.update()]
        headers, rows = V.score_table(pv)
        imgs = V.images(pv)
        raw = {"metric": pv.result.get("metric"), "average": pv.result.get("average"),
               "per_task": pv.result.get("per_task"), "latency_ms": round(pv.total_seconds * 1000, 1),
               "merge_ms": round(pv.merge_seconds * 1000, 1), "eval_ms": round(pv.eval_seconds * 1000, 1),
               "changed_tensors": pv.changed, "history_id": s.history[-1].id if s.history else None}
        return [V.latency_text(pv), f"⚠ {error}" if error else "", V.score_figure(pv),
                gr.update(value={"headers": headers, "data": rows}), V.samples_markdown(pv),
                gr.update(value=imgs, visible=bool(imgs)), raw]

    def _render_all(self, s: Session, pv=None, error: str | None = None) -> list:
        return ([s] + self._render_controls(s) + self._render_models(s) + self._render_preview(s, pv, error)
                + [s.history_rows()] + self._render_analysis_targets(s))

    def _render_analysis_targets(self, s: Session) -> list:
        from .controls import group_targets

        targets = group_targets(s.spec, s.recipe, s.labels)
        return [gr.update(choices=[(lab, t) for lab, t in targets], value=s.target)]

    def _run(self, state, edit, preview: bool = True):
        """Apply ``edit(session)``; on success re-preview. Errors become a warning and an error line, never a
        traceback."""
        s = self._session(state)
        error = None
        try:
            edit(s)
        except StudioError as e:
            error = str(e)
            gr.Warning(error)
        except Exception as e:  # a bug must not show a traceback to the user; it goes to the log
            log.error("edit failed: %s", traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
            gr.Warning(error)
        pv = None
        if preview:
            try:
                pv = s.preview()
            except StudioError as e:
                error = error or str(e)
                if not error.startswith(str(e)):
                    gr.Warning(str(e))
            except Exception as e:
                log.error("preview failed: %s", traceback.format_exc())
                error = error or f"{type(e).__name__}: {e}"
        return self._render_all(s, pv if pv is not None else s.last_preview, error)

    # ------------------------------------------------------------------------------------------- build
    def _build(self) -> gr.Blocks:
        env = self.env
        families = env.catalog.names()
        default_family = env.catalog.default_family()
        from ..layout.presets import preset_names

        with gr.Blocks(title="Merge Studio") as demo:
            state = gr.State(None, time_to_live=6 * 3600, delete_callback=lambda s: s.close() if s else None)
            with gr.Row(elem_id="title"):
                gr.Markdown("# Merge Studio\nMerge models, see the result change as you move a slider, "
                            "understand why, and export it.")
            if not families:
                gr.Markdown("⚠ **No demo zoo found.** Build it with `python -m studio zoo build`, or add your own "
                            "models in the Models tab.")
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Tabs():
                        with gr.Tab("Models", id="models"):
                            self.m = models_panel.build(families, default_family, env.roots.describe())
                        with gr.Tab("Recipe", id="recipe"):
                            self.r = recipe_panel.build(method_choices(), preset_names())
                        with gr.Tab("Analysis", id="analysis"):
                            self.a = analysis_panel.build()
                        with gr.Tab("Export", id="export"):
                            self.e = export_panel.build(env.export_dir or (str(env.roots.roots[0])
                                                                           if env.roots.roots else ""))
                        with gr.Tab("History", id="history"):
                            self.h = history_panel.build()
                        with gr.Tab("Optimize", id="optimize"):
                            methods, why = _learned_methods()
                            self.o = optimize_panel.build(methods, why)
                with gr.Column(scale=2, min_width=420):
                    gr.Markdown("### Preview")
                    self.p = preview_panel.build()
            # hidden API entry points (for scripts and gradio_client): set any setting by target id
            with gr.Row(visible=False):
                api_target = gr.Textbox(label="target")
                api_value = gr.Number(label="value")
                api_btn = gr.Button("set")
            self._wire(demo, state, api_target, api_value, api_btn)
        return demo

    def _outputs(self, state):
        r, m, p = self.r, self.m, self.p
        controls = [r.method, r.method_doc]
        for i in range(recipe_panel.MAX_GLOBAL):
            controls += [r.g_slider[i], r.g_check[i], r.g_drop[i]]
        for row in r.m_slider:
            controls += row
        controls.append(r.target)
        controls += r.strip + recipe_panel.unet_slots(r)
        controls += [r.strip_box, r.unet_box, r.layout_note, r.rules, r.yaml, r.yaml_error, p.formula]
        models = [m.family, m.verdict, m.table, m.include, m.base, m.lora_model, m.lora_ref]
        preview = [p.latency, p.status, p.plot, p.table, p.samples, p.gallery, p.raw]
        return [state] + controls + models + preview + [self.h.table, self.a.target]

    def _wire(self, demo, state, api_target, api_value, api_btn):
        r, m, p, e, h, a = self.r, self.m, self.p, self.e, self.h, self.a
        ALL = self._outputs(state)
        heavy = dict(concurrency_id=HEAVY, trigger_mode="always_last")

        def on_load(st):
            return self._run(st, lambda s: None)

        demo.load(on_load, [state], ALL, api_name="init", **heavy)

        def load_family(st, name):
            s = self._session(st)
            if not name:
                return self._run(s, lambda s: None)
            return self._run(s, lambda s: s.load_family(name))

        m.load.click(load_family, [state, m.family], ALL, api_name="load_family", **heavy)
        m.include.input(lambda st, refs: self._run(st, lambda s: s.set_included(refs or [])), [state, m.include],
                        ALL, api_name="set_models", **heavy)
        m.base.input(lambda st, ref: self._run(st, lambda s: s.set_base(ref or None)), [state, m.base], ALL,
                     api_name="set_base", **heavy)

        def add_model(st, ref):
            return self._run(st, lambda s: s.add_model(ref))

        m.add_btn.click(add_model, [state, m.add_ref], ALL, api_name="add_model", **heavy)
        m.lora_btn.click(lambda st, mod, lo, k: self._run(st, lambda s: s.add_lora(mod, lo, k)),
                         [state, m.lora_model, m.lora_ref, m.lora_strength], ALL, api_name="add_lora", **heavy)

        # recipe
        r.method.input(lambda st, name: self._run(st, lambda s: s.set_method(name)), [state, r.method], ALL,
                       api_name="set_method", **heavy)

        def global_edit(i, st, value):
            def edit(s):
                params = s.spec.global_params()
                if i < len(params):
                    s.set_global(params[i].name, value)
            return self._run(st, edit)

        for i in range(recipe_panel.MAX_GLOBAL):
            fn = functools.partial(global_edit, i)
            r.g_slider[i].release(fn, [state, r.g_slider[i]], ALL, api_visibility="undocumented", **heavy)
            r.g_check[i].input(fn, [state, r.g_check[i]], ALL, api_visibility="undocumented", **heavy)
            r.g_drop[i].input(fn, [state, r.g_drop[i]], ALL, api_visibility="undocumented", **heavy)

        def model_edit(ri, k, st, value):
            def edit(s):
                params = s.spec.per_model_params()
                if k < len(params) and ri < len(s.included()):
                    s.set_model_param(ri, params[k].name, value)
            return self._run(st, edit)

        for ri, row in enumerate(r.m_slider):
            for k, sl in enumerate(row):
                sl.release(functools.partial(model_edit, ri, k), [state, sl], ALL, api_visibility="undocumented",
                           **heavy)

        r.target.input(lambda st, t: self._run(st, lambda s: s.set_target(t), preview=False), [state, r.target],
                       ALL, api_name="set_target", **heavy)

        def strip_edit(j, st, value):
            def edit(s):
                groups = s.layout().groups
                if j < len(groups):
                    s.set_group_value(groups[j], value)
            return self._run(st, edit)

        for j, sl in enumerate(r.strip):
            sl.release(functools.partial(strip_edit, j), [state, sl], ALL, api_visibility="undocumented", **heavy)

        def unet_edit(j, st, value):
            def edit(s):
                g = recipe_panel.unet_assignment(s.layout().groups)[j]
                if g is not None:
                    s.set_group_value(g, value)
            return self._run(st, edit)

        for j, sl in enumerate(recipe_panel.unet_slots(r)):
            sl.release(functools.partial(unet_edit, j), [state, sl], ALL, api_visibility="undocumented", **heavy)

        r.preset.input(lambda st, name: self._run(st, lambda s: s.apply_preset(name)), [state, r.preset], ALL,
                       api_name="apply_preset", **heavy)
        r.curve_btn.click(lambda st, c, lo, hi: self._run(st, lambda s: s.apply_curve(c, lo, hi)),
                          [state, r.curve, r.curve_lo, r.curve_hi], ALL, api_name="apply_curve", **heavy)
        r.rules_btn.click(lambda st, text: self._run(st, lambda s: s.set_rules_text(text)), [state, r.rules], ALL,
                          api_name="set_rules", **heavy)

        def apply_yaml(st, text):
            s = self._session(st)
            try:
                s.set_yaml(text)
            except StudioError as e:
                out = self._render_all(s, s.last_preview)
                idx = ALL.index(r.yaml)
                out[idx] = gr.update()  # keep the user's text so they can fix it
                out[ALL.index(r.yaml_error)] = f"⚠ **Not applied:** {e}"
                return out
            return self._run(s, lambda s: None)

        r.yaml_apply.click(apply_yaml, [state, r.yaml], ALL, api_name="apply_yaml", **heavy)
        r.yaml_reset.click(lambda st: self._run(st, lambda s: None, preview=False), [state], ALL,
                           api_name="revert_yaml")
        undo = dict(fn=lambda st: self._run(st, _undo), inputs=[state], outputs=ALL, **heavy)
        r.undo.click(api_name="undo", **undo)
        h.undo.click(api_visibility="undocumented", **undo)
        p.preview_btn.click(lambda st: self._run(st, lambda s: None), [state], ALL, api_name="preview", **heavy)

        def api_set(st, target, value):
            def edit(s):
                from . import controls as C

                if target.startswith("group:"):
                    s.set_group_value(target[6:], value)
                    return
                C.target_param(s.spec, target)
                idx, name = C.parse_target(target)
                if idx is None:
                    s.set_global(name, value)
                else:
                    s.set_model_param(idx, name, value)
            return self._run(st, edit)

        api_btn.click(api_set, [state, api_target, api_value], ALL, api_name="set_param", **heavy)

        # history
        def pick(evt: gr.SelectData, table):
            try:
                row = evt.index[0]
                return int(table.iloc[row, 0]) if hasattr(table, "iloc") else int(table[row][0])
            except Exception:
                return gr.update()

        h.table.select(pick, [h.table], [h.entry], api_visibility="undocumented")
        h.restore.click(lambda st, n: self._run(st, lambda s: s.restore(int(n or 0))), [state, h.entry], ALL,
                        api_name="restore", **heavy)

        # export
        def do_export(st, fmt, dtype, folder, name, overwrite, progress=gr.Progress()):
            s = self._session(st)
            try:
                name = (name or "merged").strip()
                single = fmt == export_panel.FORMATS[0]
                if single and not name.endswith(".safetensors"):
                    name += ".safetensors"
                target = str(Path(folder or ".") / name)
                progress(0.0, desc="planning")
                res = s.export(target, dtype, bool(overwrite),
                               progress=lambda f: progress(float(f), desc="merging"))
                progress(1.0, desc="done")
            except StudioError as err:
                gr.Warning(str(err))
                return s, f"⚠ **Export failed:** {err}", ""
            from ..inspect import human_bytes

            files = "\n".join(f"- `{f}`" for f in res["files"][:12])
            msg = (f"✓ **Exported** to `{res['path']}` — {human_bytes(res['bytes'])} in {res['seconds']:.2f} s, "
                   f"{res['summary'].get('tensors')} tensors.\n\n{files}")
            gr.Info(f"Exported {human_bytes(res['bytes'])} to {res['path']}")
            return s, msg, _card_markdown(res["card"]) or f"```yaml\n{res['recipe']}\n```"

        e.button.click(do_export, [state, e.format, e.dtype, e.folder, e.name, e.overwrite],
                       [state, e.result, e.card], api_name="export", concurrency_id=HEAVY)

        # analysis
        def sweep(st, target, points, progress=gr.Progress()):
            s = self._session(st)
            try:
                progress(0.1, desc="sweeping")
                data = s.sweep(target or None, int(points))
            except StudioError as err:
                gr.Warning(str(err))
                return s, gr.update()
            return s, landscape_figure(data)

        a.sweep_btn.click(sweep, [state, a.target, a.points], [state, a.landscape], api_name="landscape",
                          concurrency_id=HEAVY)

        def diagnostics(st):
            s = self._session(st)
            note, figs = diagnostics_figures(s)
            ups = [gr.update(value=f, visible=True) for f in figs[:len(a.diag_plots)]]
            ups += [gr.update(visible=False)] * (len(a.diag_plots) - len(ups))
            return [s, note] + ups

        a.diag_btn.click(diagnostics, [state], [state, a.diag_note] + a.diag_plots, api_name="diagnostics",
                         concurrency_id=HEAVY)

        # optimize
        if getattr(self.o, "available", False):
            def learn(st, method, steps, progress=gr.Progress()):
                s = self._session(st)

                def cb(frac, msg=""):
                    progress(float(frac), desc=str(msg or "learning"))
                try:
                    note, fig = run_learned(s, method, int(steps), cb)
                except StudioError as err:
                    gr.Warning(str(err))
                    return self._render_all(s, s.last_preview, str(err)) + [f"⚠ {err}", gr.update()]
                out = self._run(s, lambda s: None)
                return out + [note, fig]

            self.o.run.click(learn, [state, self.o.method, self.o.steps], ALL + [self.o.result, self.o.plot],
                             api_name="learn", concurrency_id=HEAVY)

    def launch(self, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kw):
        self.demo.queue(default_concurrency_limit=self.env.max_parallel)
        return self.demo.launch(server_name=host, server_port=port, share=share, theme=_theme(), css=CSS,
                                allowed_paths=[str(p) for p in self.env.roots.roots], **kw)


def _card_markdown(card: str) -> str:
    """A model card for display: its YAML front matter as a code block instead of garbled markdown."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end > 0:
            return f"```yaml\n{card[3:end].strip()}\n```\n" + card[end + 4:]
    return card


def _undo(s: Session) -> None:
    if not s.undo():
        raise StudioError("nothing to undo")


def _first_line(doc: str) -> str:
    return (doc or "").strip().split("\n")[0]


def _learned_methods():
    try:
        from ..learn import run_learned  # noqa: F401
    except ImportError as e:
        return None, f"studio.learn.run_learned could not be imported: {e}"
    try:
        from ..learn import LEARNED_METHODS

        return list(LEARNED_METHODS), None
    except ImportError:
        return ["adamerging", "samerging"], None


def run_learned(s: Session, method: str, steps: int, progress):
    from ..learn import run_learned as learn

    fam = s.family_obj()
    if fam is None:
        raise StudioError("learned merging needs a demo family (its unlabeled data)")
    base = s.recipe.get("base_model") or str(fam.base)
    experts = [r for r in s.included() if r != base]
    with s.env.heavy:
        res = learn(method, base, experts, s.family, device=s.env.device, steps=steps, progress=progress)
    recipe = res.recipe.to_dict() if hasattr(res.recipe, "to_dict") else dict(res.recipe)
    s._set_recipe(recipe)
    import plotly.graph_objects as go

    fig = go.Figure()
    hist = getattr(res, "history", None) or []
    if hist:
        ys = [h.get("loss") if isinstance(h, dict) else h for h in hist]
        fig.add_scatter(y=ys, mode="lines", name="objective")
    fig.update_layout(height=300, template="plotly_white", xaxis_title="step", margin=dict(l=40, r=10, t=10, b=40))
    metrics = getattr(res, "metrics", None) or {}
    note = f"✓ Learned with **{method}** ({steps} steps). " + ", ".join(
        f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items())
    return note, fig


def landscape_figure(data: dict):
    import plotly.graph_objects as go

    xs = data["x"]
    fig = go.Figure()
    tasks = list((data["results"][0].get("per_task") or {})) if data["results"] else []
    for t in tasks:
        fig.add_scatter(x=xs, y=[r["per_task"].get(t) for r in data["results"]], mode="lines", name=t,
                        line=dict(width=1), opacity=0.55)
    fig.add_scatter(x=xs, y=[r.get("average") for r in data["results"]], mode="lines+markers", name="average",
                    line=dict(width=3, color=V.COLORS["merge"]))
    if data.get("current") is not None:
        fig.add_vline(x=data["current"], line_dash="dash", line_color=V.COLORS["previous"],
                      annotation_text="current recipe", annotation_position="top right")
    metric = data["results"][0].get("metric", "score") if data["results"] else "score"
    fig.update_layout(height=380, template="plotly_white", xaxis_title=data.get("label"), yaxis_title=metric,
                      margin=dict(l=40, r=10, t=30, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def diagnostics_figures(s: Session) -> tuple[str, list]:
    """Figures from studio.analysis + studio.ui.plots (the diagnostics engineer's); a note when absent."""
    try:
        from . import plots
        from .. import analysis
    except ImportError as e:
        return f"Diagnostics are not available in this build ({e}).", []
    base = s.recipe.get("base_model")
    experts = [r for r in s.included() if r != base]
    if not base or not experts:
        return "Diagnostics compare task vectors: choose a base and at least one other model.", []
    try:
        with s.env.heavy:
            figs = plots.studio_figures(analysis, base, experts, labels=s.labels)
    except StudioError as e:
        return f"⚠ {e}", []
    return f"Task vectors of {len(experts)} models against `{s.labels.get(base, base)}`.", figs


def build_app(env: StudioEnv | None = None) -> StudioUI:
    return StudioUI(env or StudioEnv())
