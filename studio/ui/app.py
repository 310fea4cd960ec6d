"""The studio's Gradio Blocks: panels on the left, the live preview on the right, every event one Session call.

The UI holds no merge math and no recipe logic: each panel (``studio/ui/panels``) lays out its components, renders
the session into them and wires its own events through :meth:`StudioUI.on`, which runs the Session call, re-previews
when the recipe changed, and sends back **only what changed on the page** (a dict of updates, compared with what the
browser shows), so a slider release re-renders the preview and the touched controls, not the whole column.

Each browser tab gets its own Session in a ``gr.State``; heavy work runs in one concurrency group whose size bounds
parallel merges; slider releases use ``trigger_mode="always_last"`` so a newer value supersedes queued older ones.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import gradio as gr

from ..errors import StudioError
from ..layout.presets import preset_names
from .controls import bug_report
from .env import StudioEnv
from .browser import places
from .learning import choices as learned_choices
from .panels import analysis as analysis_panel
from .panels import export as export_panel
from .panels import files as files_panel
from .panels import grid as grid_panel
from .panels import history as history_panel
from .panels import models as models_panel
from .panels import optimize as optimize_panel
from .panels import preview as preview_panel
from .panels import recipe as recipe_panel
from .session import Session, method_choices

log = logging.getLogger("studio.ui")

CSS = """
.gradio-container {max-width: 1600px !important; overflow: visible !important}
#title h1 {margin-bottom: 0}
.section-title h4 {margin: 6px 8px 0 8px}
#latency {font-size: 1.05em}
#verdict {padding: 6px 10px; border-radius: 8px; background: var(--block-background-fill)}
.u-center {text-align: center; color: var(--body-text-color-subdued); padding: 8px 0}
#u-row {flex-wrap: nowrap !important}
#status:empty {display: none}
/* the preview stays in view while the controls scroll: the column sticks to the top and scrolls on its own */
#preview-column {position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px);
                 overflow-y: auto; flex-wrap: nowrap !important}
#preview-column > * {flex-shrink: 0}
/* … and its headline (score, latency) stays at the column's top while the column scrolls */
#latency {position: sticky; top: 0; z-index: 5; background: var(--background-fill-primary); padding: 2px 0}
.method-doc {font-size: 0.9em; color: var(--body-text-color-subdued)}
"""

# Gradio's slider commits its value on pointer release (a drag would otherwise re-merge on every pixel) and its number
# box on blur: keys would change what the slider shows but not the recipe. Arrow/Home/End/Page keys on a slider
# release it, and Enter in a slider's number box leaves the box, so keyboard edits commit like mouse edits.
KEYS_COMMIT = """
<script>
document.addEventListener("keyup", (e) => {
  const t = e.target;
  if (!(t instanceof HTMLInputElement)) return;
  const keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"];
  if (t.type === "range" && keys.includes(e.key)) t.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
  if (t.type === "number" && e.key === "Enter" && t.closest(".block")?.querySelector("input[type=range]")) t.blur();
}, true);
</script>
"""

PANELS = (models_panel, files_panel, recipe_panel, analysis_panel, grid_panel, export_panel, history_panel, optimize_panel,
          preview_panel)
# controls whose value a user sets in the browser (an event carrying it tells us what the page shows now)
VALUE_CONTROLS = (gr.Slider, gr.Number, gr.Checkbox, gr.CheckboxGroup, gr.Dropdown, gr.Radio, gr.Textbox, gr.Code)
_SHOWN_PV = "__preview__"  # view_cache key: the Preview object the page shows


def _theme():
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate")


class StudioUI:
    """Builds the Blocks for one StudioEnv; ``demo`` is the gr.Blocks, ``launch()`` starts it."""

    HEAVY = "heavy"  # the concurrency group of merges, evaluations and exports (its size: --max-parallel)

    def __init__(self, env: StudioEnv):
        self.env = env
        self._build()

    # ------------------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        env = self.env
        families = env.catalog.names()
        with gr.Blocks(title="Merge Studio") as demo:
            self.demo = demo
            self.state = gr.State(None, time_to_live=6 * 3600, delete_callback=forget_session)
            # the tab's recipe, family and history, kept by the browser: a reload comes back to them
            self.kept = gr.BrowserState(None, storage_key="merge-studio-session")
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
                            def files():
                                self.f = files_panel.build(places(env))
                            self.m = models_panel.build(families, env.catalog.default_family(),
                                                        env.roots.describe(), files)
                        with gr.Tab("Recipe", id="recipe"):
                            self.r = recipe_panel.build(method_choices(), preset_names())
                        with gr.Tab("Analysis", id="analysis"):
                            self.a = analysis_panel.build()
                        with gr.Tab("Grid", id="grid"):
                            self.g = grid_panel.build(env.default_dir("grids"))
                        with gr.Tab("Export", id="export"):
                            self.e = export_panel.build(env.default_export_dir())
                        with gr.Tab("History", id="history"):
                            self.h = history_panel.build()
                        with gr.Tab("Optimize", id="optimize"):
                            self.o = optimize_panel.build(learned_choices())
                with gr.Column(scale=2, min_width=420, elem_id="preview-column"):
                    gr.Markdown("### Preview")
                    self.p = preview_panel.build()
            self.views = [(models_panel, self.m), (files_panel, self.f), (recipe_panel, self.r), (analysis_panel, self.a),
                          (grid_panel, self.g), (history_panel, self.h), (optimize_panel, self.o),
                          (preview_panel, self.p)]
            self.outputs = [self.state, self.kept] + [c for panel, ns in self.views for c in panel.rendered(ns)]
            self.on(demo.load, lambda s, kept: s.resume(kept), [self.kept], api_name="init", refresh=True)
            for panel in PANELS:
                panel.wire(self)

    # ------------------------------------------------------------------------------------------- rendering
    def session(self, state) -> Session:
        return state if isinstance(state, Session) else self.env.new_session()

    def changes(self, s: Session, pv=None, error: str | None = None, skip: Sequence = (),
                override: dict | None = None, only: Sequence | None = None) -> dict:
        """Updates for what differs between the session and what the browser shows (``s.view_cache``), plus the
        preview when ``pv`` is one the browser has not shown yet. Always includes the session's state. ``skip``:
        components left as the user has them; ``override``: properties to show instead of the rendered ones;
        ``only``: the components the event may update (its outputs)."""
        shown = s.view_cache
        allowed = None if only is None else set(only)
        want: dict = {}
        for panel, ns in self.views:
            if allowed is None or any(c in allowed for c in panel.rendered(ns)):
                want.update(panel.render(ns, s))
        want[self.p.status] = {"value": f"⚠ {error}" if error else ""}
        want[self.kept] = {"value": s.snapshot()}
        want.update(override or {})
        out: dict[Any, Any] = {self.state: s}
        for comp, props in want.items():
            if comp in skip or (allowed is not None and comp not in allowed):
                continue
            seen = shown.setdefault(comp, {})
            diff = {k: v for k, v in props.items() if k not in seen or seen[k] != v}
            if diff:
                seen.update(diff)
                out[comp] = _update(diff)
        if pv is not None and shown.get(_SHOWN_PV) is not pv:
            shown[_SHOWN_PV] = pv
            out.update({c: _update(props) for c, props in preview_panel.render_preview(self.p, s, pv).items()})
        return out

    def resend(self, s: Session, comps: Sequence) -> None:
        """The controls a user just used show what the user set, not what was sent: forget what was sent, so their
        rendered value goes out again (an answer to an older event may have landed on them meanwhile)."""
        for comp in comps:
            if isinstance(comp, VALUE_CONTROLS):
                s.view_cache.get(comp, {}).pop("value", None)

    # ------------------------------------------------------------------------------------------- events
    def attempt(self, fn: Callable[[], Any], what: str) -> tuple[Any, str | None]:
        """``fn()``, with anything a user can cause shown as a one-line warning, and a bug logged with its
        traceback and shown as one line — never a traceback in the page."""
        try:
            return fn(), None
        except StudioError as e:
            gr.Warning(str(e))
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - a bug must not show a traceback to the user; it goes to the log
            msg = bug_report(what, e)
            gr.Warning(msg)
            return None, msg

    def guard(self, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        """An event handler that cannot fail in the page: a user's mistake anywhere in it (a number box sent empty)
        is a warning, a bug a logged one-line warning with an id; its outputs then stay as they are."""
        @functools.wraps(fn)  # keeps the signature: gradio finds the handler's gr.Progress argument through it
        def guarded(*args, **kwargs):
            out, err = self.attempt(lambda: fn(*args, **kwargs), what)
            return {} if err is not None else out
        return guarded

    def on(self, trigger, fn: Callable[..., Any], inputs: Sequence = (), *, api_name: str | None = None,
           preview: bool = True, refresh: bool = False, scope: Sequence | None = None):
        """Wire ``trigger`` (e.g. ``slider.release``) to ``fn(session, *values)``. After ``fn``, the recipe is
        re-previewed (``preview``) and only what changed is sent back (``refresh``: everything, as on a new page).

        ``scope``: the only components (besides the preview's) this event can change. Every output costs the page
        about a millisecond per event even when unchanged, so frequent events (a per-layer slider) name a small
        scope; structural ones (a method switch, undo) leave it None: the whole page."""
        comps = list(inputs)
        # the controls a user just used are outputs too: a refused or rounded value is set back at once
        outputs = self.outputs if scope is None else list(dict.fromkeys(
            [self.state, self.kept] + preview_panel.live(self.p) + list(scope) + comps))

        def handler(state, *values, progress=gr.Progress()):
            s = self.session(state)
            with s.events:
                if refresh:
                    s.view_cache.clear()
                    s.recheck()
                self.resend(s, comps)
                before = s.recipe
                _, error = self.attempt(lambda: fn(s, *values), "edit")
                pv = s.last_preview
                if preview and not (error and s.recipe == before):  # a refused edit changed nothing to preview
                    fresh, perr = self.attempt(lambda: s.preview(progress=self.progress(progress, "previewing")),
                                               "preview")
                    pv, error = fresh or pv, error or perr
                out, bug = self.attempt(lambda: self.changes(s, pv, error, only=None if scope is None else outputs),
                                        "rendering")
                return out if bug is None else {self.state: s, self.p.status: f"⚠ {bug}"}

        names = {"api_name": api_name} if api_name else {"api_visibility": "undocumented"}
        return trigger(handler, [self.state] + comps, outputs, **names, concurrency_id=self.HEAVY,
                       trigger_mode="always_last", show_progress_on=[self.p.latency])

    @staticmethod
    def progress(progress: gr.Progress, default: str) -> Callable[[float, str], None]:
        """A library ``progress(fraction, message)`` callback driving a gr.Progress bar."""
        def cb(frac, msg=""):
            progress(min(max(float(frac), 0.0), 1.0), desc=str(msg or default))
        return cb

    @staticmethod
    def undo(s: Session) -> None:
        if not s.undo():
            raise StudioError("nothing to undo")

    def launch(self, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kw):
        self.demo.queue(default_concurrency_limit=self.env.max_parallel)
        return self.demo.launch(server_name=host, server_port=port, share=share, theme=_theme(), css=CSS,
                                head=KEYS_COMMIT, allowed_paths=[str(p) for p in self.env.roots.roots], **kw)


def forget_session(s: Session | None) -> None:
    """A tab's state expired: its search stops after its current trial, and its resident model is dropped."""
    if s:
        s.searching.stop()
        s.close()


def _update(props: dict):
    """A value alone goes as the plain value (what gradio_client scripts read); anything more as gr.update."""
    return props["value"] if set(props) == {"value"} else gr.update(**props)


def build_app(env: StudioEnv | None = None) -> StudioUI:
    return StudioUI(env or StudioEnv())
