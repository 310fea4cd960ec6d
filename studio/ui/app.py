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
                    f"⚠ {error}" if error else "", gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    gr.update()]
        headers, rows = V.score_table(pv)
        metric = (pv.result or {}).get("metric", "score")
        imgs = V.images(pv)
        raw = {"metric": pv.result.get("metric"), "average": pv.result.get("average"),
               "per_task": pv.result.get("per_task"), "latency_ms": round(pv.total_seconds * 1000, 1),
               "merge_ms": round(pv.merge_seconds * 1000, 1), "eval_ms": round(pv.eval_seconds * 1000, 1),
               "changed_tensors": pv.changed, "history_id": s.history[-1].id if s.history else None}
        return [V.latency_text(pv), f"⚠ {error}" if error else "", V.score_figure(pv),
                gr.update(value={"headers": headers, "data": rows}, label=f"Per-task {metric}"),
                V.samples_markdown(pv),
                gr.update(value=imgs[0][0] if len(imgs) == 1 else None, visible=len(imgs) == 1),
                gr.update(value=imgs if len(imgs) > 1 else None, visible=len(imgs) > 1), raw]

    def _render_all(self, s: Session, pv=None, error: str | None = None) -> list:
        return ([s] + self._render_controls(s) + self._render_models(s) + self._render_preview(s, pv, error)
                + [s.history_rows()] + self._render_extras(s))

    def _render_extras(self, s: Session) -> list:
        """The Analysis panel's choices (sweep target, plane experts) and the Optimize panel's readiness note."""
        from .controls import group_targets

        targets = group_targets(s.spec, s.recipe, s.labels)
        experts = s.experts()
        choices = [(s.labels.get(e, e), e) for e in experts]
        x = experts[0] if experts else None
        y = experts[1] if len(experts) > 1 else None
        out = [gr.update(choices=[(lab, t) for lab, t in targets], value=s.target),
               gr.update(choices=choices, value=x), gr.update(choices=choices, value=y)]
        if getattr(self.o, "available", False):
            out.append(learn_readiness(s))
        return out

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
        preview = [p.latency, p.status, p.plot, p.table, p.samples, p.image, p.gallery, p.raw]
        extras = [self.a.target, self.a.plane_x, self.a.plane_y]
        if getattr(self.o, "available", False):
            extras.append(self.o.state_note)
        return [state] + controls + models + preview + [self.h.table] + extras

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

        def about(name):
            md, sheet = family_about(self.env.catalog, name)
            return md, gr.update(value=sheet, visible=sheet is not None)

        demo.load(about, [m.family], [m.about, m.samples], api_visibility="undocumented")
        m.load.click(about, [m.family], [m.about, m.samples], api_visibility="undocumented")
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
            from ..describe import human_bytes

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
                progress(0.0, desc="sweeping")
                data = s.sweep(target or None, int(points), progress=_progress_cb(progress, "sweeping"))
            except StudioError as err:
                gr.Warning(str(err))
                return s, gr.update()
            return s, gr.update(value=sweep_figure(data), visible=True)

        a.sweep_btn.click(sweep, [state, a.target, a.points], [state, a.landscape], api_name="landscape",
                          concurrency_id=HEAVY)

        def plane(st, x, y, grid, progress=gr.Progress()):
            s = self._session(st)
            try:
                progress(0.0, desc="task-vector plane")
                data = s.landscape_plane(x or None, y or None, int(grid),
                                         progress=_progress_cb(progress, "task-vector plane"))
            except StudioError as err:
                gr.Warning(str(err))
                return s, f"⚠ {err}", gr.update()
            return s, plane_note(data), gr.update(value=plane_figure(data), visible=True)

        a.plane_btn.click(plane, [state, a.plane_x, a.plane_y, a.grid], [state, a.plane_note, a.plane],
                          api_name="landscape_plane", concurrency_id=HEAVY)

        def diagnostics(st, progress=gr.Progress()):
            s = self._session(st)
            progress(0.0, desc="task-vector statistics")
            note, figs = diagnostics_figures(s)
            ups = [gr.update(value=f, visible=True) for f in figs[:len(a.diag_plots)]]
            ups += [gr.update(visible=False)] * (len(a.diag_plots) - len(ups))
            return [s, note] + ups

        a.diag_btn.click(diagnostics, [state], [state, a.diag_note] + a.diag_plots, api_name="diagnostics",
                         concurrency_id=HEAVY)

        # optimize
        o = self.o
        if getattr(o, "available", False):
            LEARN_OUT = [o.result, o.actions, o.load_btn, o.plot, o.export_box, o.export_result]

            def learn(st, choice, steps, data, progress=gr.Progress()):
                s = self._session(st)
                try:
                    progress(0.0, desc="loading models")
                    lr = s.learn(choice, int(steps), progress=_progress_cb(progress, "learning"), data=data or None)
                except StudioError as err:
                    gr.Warning(str(err))
                    return self._render_all(s, s.last_preview) + [f"⚠ **Not learned:** {err}", gr.update(),
                                                                  gr.update(), gr.update(), gr.update(), ""]
                except Exception as err:  # a bug must not show a traceback; it goes to the log
                    log.error("learn failed: %s", traceback.format_exc())
                    gr.Warning(f"{type(err).__name__}: {err}")
                    return self._render_all(s, s.last_preview) + [f"⚠ **Failed:** {type(err).__name__}: {err}",
                                                                  gr.update(), gr.update(), gr.update(), gr.update(),
                                                                  ""]
                pv = s.preview_learned() if lr.recipe is None else s.last_preview
                gr.Info(f"{lr.label}: learned in {lr.seconds:.1f} s")
                return self._render_all(s, pv) + [learned_markdown(lr), gr.update(visible=True),
                                                  gr.update(visible=lr.recipe is not None),
                                                  gr.update(value=learned_figure(lr), visible=True),
                                                  gr.update(visible=lr.recipe is None), ""]

            o.run.click(learn, [state, o.method, o.steps, o.data], ALL + LEARN_OUT, api_name="learn",
                        concurrency_id=HEAVY)
            o.load_btn.click(lambda st: self._run(st, lambda s: s.load_learned()), [state], ALL,
                             api_name="load_learned", **heavy)

            def show_learned(st):
                s = self._session(st)
                try:
                    pv = s.preview_learned()
                except StudioError as err:
                    gr.Warning(str(err))
                    return self._render_all(s, s.last_preview, str(err))
                return self._render_all(s, pv)

            o.show_btn.click(show_learned, [state], ALL, api_name="preview_learned", **heavy)

            def export_learned(st, name, dtype, overwrite):
                s = self._session(st)
                env = self.env
                folder = env.export_dir or (str(env.roots.roots[0]) if env.roots.roots else ".")
                name = (name or "learned").strip()
                if not name.endswith(".safetensors"):
                    name += ".safetensors"
                try:
                    res = s.export_learned(str(Path(folder) / name), dtype, bool(overwrite))
                except StudioError as err:
                    gr.Warning(str(err))
                    return s, f"⚠ **Export failed:** {err}"
                from ..describe import human_bytes

                files = "\n".join(f"- `{f}`" for f in res["files"])
                return s, f"✓ **Exported** {human_bytes(res['bytes'])} in {res['seconds']:.2f} s\n\n{files}"

            o.export_btn.click(export_learned, [state, o.export_name, o.export_dtype, o.export_overwrite],
                               [state, o.export_result], api_name="export_learned", concurrency_id=HEAVY)

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


def _progress_cb(progress, default: str):
    """A library ``progress(fraction, message)`` callback driving a gr.Progress bar."""
    def cb(frac, msg=""):
        progress(min(max(float(frac), 0.0), 1.0), desc=str(msg or default))
    return cb


def family_about(catalog, name: str | None):
    """The Models tab's note on a demo family: its description and tasks (markdown), and its picture (or None)."""
    if not name:
        return "No demo family loaded: add your own models below.", None
    try:
        fam = catalog.get(name)
    except StudioError as e:
        return f"⚠ {e}", None
    docs = getattr(fam, "task_docs", None) or {}
    rows = [f"| `{t}` | {docs.get(t, '')} |" for t in fam.tasks]
    md = "\n".join([f"**{name}** — {getattr(fam, 'description', '')}", "", "| task | what it is |", "|---|---|",
                    *rows])
    sheet_fn = getattr(fam, "sample_sheet", None)
    sheet = sheet_fn() if sheet_fn else None
    if sheet is not None:
        md += "\n\nBelow: test images of each task, one row per task in this order."
    return md, sheet


def _learned_methods():
    """The Optimize panel's method choices [(label, choice)], or (None, why) when studio.learn is missing."""
    try:
        from ..learn import run_learned  # noqa: F401
    except ImportError as e:
        return None, f"studio.learn could not be imported: {e}"
    from .session import LEARNED_CHOICES

    return [(label, key) for key, (label, _, _) in LEARNED_CHOICES.items()], None


def learn_readiness(s: Session) -> str:
    """One line for the Optimize panel: what a run would merge, or why it cannot run on this family."""
    fam = s.family_obj()
    if fam is None:
        data_note = ("Give a folder of **unlabeled data** above: a subfolder per merged model (named after its "
                     "label), holding images or .txt files.")
    elif getattr(fam, "kind", "") == "diffusion":
        return (f"⚠ The **{s.family}** family has no task data (its experts are styles, not tasks), so there is "
                "nothing to learn from. Switch to the vision or text family in the Models tab.")
    else:
        data_note = f"Data: the {s.family} family's unlabeled splits, unless you give a folder above."
    experts = s.experts()
    if not s.recipe.get("base_model") or not experts:
        return "⚠ Choose a base model and at least one expert in the Models tab."
    names = ", ".join(s.labels.get(e, e) for e in experts)
    return (f"Will merge **{len(experts)}** experts ({names}) into "
            f"`{s.labels.get(s.recipe['base_model'], 'base')}`. {data_note}")


def _fmt_num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def learned_markdown(lr) -> str:
    """What a learned run produced: its scores next to the recipe's, and what to do next."""
    metric = lr.scores.get("metric", "score")
    lower = metric in V.LOWER_IS_BETTER
    avg = lr.scores.get("average")
    cur = (lr.current or {}).get("average")
    head = f"✓ **{lr.label}** learned in {lr.seconds:.1f} s"
    if avg is None:
        head += " (no evaluator for these models: judge them by the objective, or export and test them)"
    else:
        head += f" — average {metric} **{avg:.4g}**"
    if cur is not None and avg is not None:
        better = (avg < cur) if lower else (avg > cur)
        head += f" (your recipe: {cur:.4g}, {'better' if better else 'not better'})"
    m = lr.result.metrics
    bits = []
    for k, lab in (("objective_start", "objective before"), ("objective_end", "after"), ("steps", "steps")):
        if m.get(k) is not None:
            bits.append(f"{lab} {_fmt_num(m[k])}")
    per = lr.scores.get("per_task") or {}
    rows = ["| task | " + " | ".join(per) + " |", "|---|" + "---|" * len(per),
            "| learned | " + " | ".join(f"{float(v):.4g}" for v in per.values()) + " |"] if per else []
    if lr.current and lr.current.get("per_task"):
        rows.append("| your recipe | " + " | ".join(
            f"{float(lr.current['per_task'].get(t, float('nan'))):.4g}" for t in per) + " |")
    nxt = ("*Load into sliders* to make the learned coefficients your recipe (per-tensor weights, shown as "
           "name-pattern rules; Undo brings your recipe back)." if lr.recipe is not None else
           "These are merged weights, not a recipe: the preview shows them now; any edit returns the preview to "
           "your recipe. Export them below.")
    return "\n\n".join(x for x in [head, " · ".join(bits), "\n".join(rows), nxt] if x)


def learned_figure(lr):
    """The loss per step of a learned run (closed-form methods: the objective before/after as two points)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    hist = [h.get("loss") if isinstance(h, dict) else h for h in (lr.result.history or [])]
    m = lr.result.metrics
    if hist:
        fig.add_scatter(x=list(range(1, len(hist) + 1)), y=hist, mode="lines", name="objective",
                        line=dict(color=V.COLORS["merge"], width=2))
        title = f"{lr.label}: objective per step"
    else:
        ys = [m.get("objective_start"), m.get("objective_end")]
        if all(isinstance(v, (int, float)) for v in ys):
            fig.add_scatter(x=["before", "after"], y=ys, mode="lines+markers", name="objective",
                            line=dict(color=V.COLORS["merge"], width=2))
        title = f"{lr.label}: closed-form (no training curve)"
    fig.update_layout(height=300, template="plotly_white", xaxis_title="step", yaxis_title=str(m.get("objective")
                                                                                               or "objective"),
                      title=dict(text=title, x=0.01), margin=dict(l=60, r=20, t=50, b=50), showlegend=False)
    return fig


def sweep_figure(data: dict):
    """studio.ui.plots' line of the average, with each task's score as a thin line underneath."""
    from .. import figures as plots

    fig = plots.landscape_line(data)
    xs = data["x"]["values"]
    rows = data.get("results") or []
    tasks = list((rows[0].get("per_task") or {})) if rows else []
    for n, t in enumerate(tasks):
        fig.add_scatter(x=xs, y=[r["per_task"].get(t) for r in rows], mode="lines", name=t,
                        line=dict(width=1), opacity=0.45)
    fig.data = fig.data[-len(tasks):] + fig.data[:-len(tasks)] if tasks else fig.data  # tasks drawn underneath
    fig.update_layout(legend=dict(orientation="h", y=-0.25), height=420)
    return fig


def plane_figure(data: dict):
    from .. import figures as plots

    return plots.landscape_contour(data)


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


def diagnostics_figures(s: Session) -> tuple[str, list]:
    """Figures from studio.analysis + studio.ui.plots (the diagnostics engineer's); a note when absent."""
    try:
        from .. import figures as plots
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
