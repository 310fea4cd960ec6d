"""The live preview of one session: the resident merge (:class:`~studio.engine.live.LiveMerger`) and what judges it —
plain Python.

What judges a merge follows the models in the recipe, never a demo family's leftovers:

* a demo family is loaded (its models, or models of the same kind added to it) → the family's evaluator (accuracy,
  perplexity, style);
* otherwise → the preview pipeline of the reference model (:mod:`studio.preview`: images from the user's prompts, text
  from the user's prompts, perplexity, accuracy on their own evaluation set), fed in place by the live merger;
* a model no pipeline can show → merge only (the dry run, export, diagnostics still work).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..engine import build_plan
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..preview import Previewer, previewer_for
from ..recipe import edit as E
from . import history as H
from .preview_view import Preview

Progress = Callable[[float, str], None]   # progress(fraction 0…1, message)


class FamilyJudge:
    """A demo family's evaluator on the merged state; the inputs' scores come from the catalogue's cache."""

    def __init__(self, env, family: str):
        self.env, self.family = env, family
        self.evaluator = env.catalog.evaluator(family)
        self.metric = str(getattr(self.evaluator, "metric", "") or "score")

    def attach(self, live: LiveMerger) -> None:
        pass

    def refresh(self, changed: list[str]) -> None:
        pass

    def evaluate(self, live: LiveMerger, changed: list[str]) -> dict:
        return self.evaluator.evaluate(live.state)

    def input(self, ref: str) -> dict:
        return self.env.catalog.input_score(self.family, ref, self.env.opener)


class PipelineJudge:
    """A preview pipeline (:class:`studio.preview.Previewer`) rendering the session's request; each input model's
    render is cached per request."""

    def __init__(self, previewer: Previewer, request: Any, opener):
        self.previewer, self.request, self.opener = previewer, request, opener
        self.metric = previewer.metric
        self._inputs: dict[tuple[str, str], dict] = {}

    def attach(self, live: LiveMerger) -> None:
        self.previewer.attach(live)

    def refresh(self, changed: list[str]) -> None:
        self.previewer.refresh(changed)

    def evaluate(self, live: LiveMerger, changed: list[str]) -> dict:
        self.previewer.refresh(changed)
        return self.previewer.render(self.request)

    def input(self, ref: str) -> dict:
        key = (ref, _request_key(self.request))
        if key not in self._inputs:
            self._inputs[key] = self.previewer.render_source(self.opener(ref), self.request)
        return self._inputs[key]


def _request_key(request: Any) -> str:
    fields = getattr(request, "__dict__", request)
    return json.dumps(fields, sort_keys=True, default=str)


@dataclass
class RequestField:
    """One setting of a preview pipeline's request as a control shows it."""

    name: str
    kind: str        # lines (one item per line) | numbers (comma-separated) | text | path | int | float | bool
    value: Any
    optional: bool = False   # None is a value (the model's default): an emptied control means it


def _kind(hint) -> str:
    """The control kind of a request field from its type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return "lines" if args and args[0] is str else "numbers"
    one = args[0] if len(args) == 1 else hint
    if one in (bool, int, float):
        return one.__name__
    if Path in args:
        return "path"
    return "text"


def request_fields(request: Any) -> list[RequestField]:
    """The fields of a request dataclass, in declared order, as controls show them."""
    hints = typing.get_type_hints(type(request))
    out = []
    for f in dataclasses.fields(request):
        kind, value = _kind(hints[f.name]), getattr(request, f.name)
        if f.name.endswith(("_file", "_set", "_path")) and kind == "text":
            kind = "path"
        shown = ("\n".join(map(str, value)) if kind == "lines" else ", ".join(map(str, value)) if kind == "numbers"
                 else "" if value is None else str(value) if kind in ("path", "text") else value)
        out.append(RequestField(f.name, kind, shown, type(None) in typing.get_args(hints[f.name])))
    return out


class PreviewController:
    """The resident merge of one session and its judge; ``run`` re-merges what changed and judges it."""

    def __init__(self, session):
        self.s = session
        self.live: LiveMerger | None = None
        self.judge: FamilyJudge | PipelineJudge | None = None
        self.request: Any = None           # what a preview pipeline renders (prompts, seeds, …); its own default
        self.last: Preview | None = None
        self.lock = threading.Lock()       # one merge or evaluation of the resident model at a time
        self._ticket = 0
        self._ticket_lock = threading.Lock()
        self._judged: tuple | None = None  # (demo family or None, reference model) the judge was made for
        self.missing: str | None = None    # why the reference model's pipeline could not be built

    def close(self) -> None:
        """Drop the resident model and its pipeline (frees their memory)."""
        self.live, self.judge, self.last, self._judged = None, None, None, None

    def next_ticket(self) -> int:
        with self._ticket_lock:
            self._ticket += 1
            return self._ticket

    def sync_live(self) -> LiveMerger:
        """The resident LiveMerger holding the current recipe (built on first use, and again when the judge changes).
        Call under ``lock``."""
        self._ensure_judge()
        recipe = self.s.recipe_obj()
        if self.live is None:
            env = self.s.env
            dtype = self.judge.previewer.dtype if isinstance(self.judge, PipelineJudge) else env.state_dtype
            self.live = LiveMerger(recipe, device=env.device, opener=env.opener, memory_budget=env.memory_budget,
                                   out_dtype=dtype)
            if self.judge is not None:
                self.judge.attach(self.live)
        else:
            self.live.update(recipe)
        return self.live

    def _ensure_judge(self) -> None:
        """The judge for the models now in the recipe: made again (with a fresh live merger) when the demo family,
        the reference model, its vocabulary settings or its layer count change."""
        s = self.s
        family = s.family  # models that do not fit a family start a recipe of their own (Session.start_own)
        # the pipeline is made again when vocabulary settings (the reference's rows and tokenizer) or slices (the
        # model's layer count) change too
        vocab, layers = E.vocabulary_key(s.recipe), E.output_layers(s.recipe)
        key = (family, E.reference_model(s.recipe), vocab, layers)
        if key == self._judged:
            return
        self.live, self._judged, self.missing = None, key, None
        self.judge = FamilyJudge(s.env, family) if family else self._pipeline(key[1], vocab is not None, layers)

    def _pipeline(self, ref: str | None, vocabulary: bool = False, layers: int | None = None) -> PipelineJudge | None:
        if ref is None:
            return None
        env = self.s.env
        source, opener, shape = env.opener(ref), env.opener, {}
        if vocabulary:  # the plan's views: the reference and every input with their rows on the output vocabulary
            views = {src.ref: src for src in build_plan(self.s.recipe_obj(), env.opener).sources}
            source, opener = views[ref], (lambda r: views.get(r) or env.opener(r))
        if layers is not None:
            shape = {"num_layers": layers}
        try:
            cls = previewer_for(source)
        except StudioError:
            return None  # merge only: nothing renders this kind of model
        try:
            previewer = cls(source, device=env.device, dtype=env.pipeline_dtype, **shape)
        except StudioError as e:  # a piece the pipeline needs is missing: merge only, and say what to provide
            self.missing = str(e)
            return None
        if not isinstance(self.request, cls.Request):
            self.request = previewer.preview_request()
        return PipelineJudge(previewer, self.request, opener)

    def request_fields(self) -> list[RequestField]:
        """The preview pipeline's request as controls (none when a demo family's evaluator judges the merge)."""
        return request_fields(self.request) if isinstance(self.judge, PipelineJudge) else []

    def set_request(self, name: str, raw: Any) -> None:
        """Change one field of the request from a control's value (paths only inside the allowed folders)."""
        if not isinstance(self.judge, PipelineJudge):
            raise StudioError("this preview has no settings", hint="it is a demo family's evaluator")
        field = next((f for f in request_fields(self.request) if f.name == name), None)
        if field is None:
            raise StudioError(f"the preview has no setting {name!r}")
        if field.kind == "lines":
            value = [line.strip() for line in str(raw or "").splitlines() if line.strip()]
        elif field.kind == "numbers":
            try:
                value = [int(v) for v in str(raw or "").replace(",", " ").split()]
            except ValueError:
                raise StudioError(f"{name}: whole numbers separated by commas, got {raw!r}") from None
        elif field.kind == "path":
            value = str(self.s.env.roots.check_path(str(raw))) if str(raw or "").strip() else None
        elif field.kind in ("int", "float"):
            if raw is None and not field.optional:
                raise StudioError(f"{name} needs a number")
            value = None if raw is None else int(raw) if field.kind == "int" else float(raw)
        elif field.kind == "bool":
            value = bool(raw)
        else:
            value = "" if raw is None else str(raw)
        request = dataclasses.replace(self.request, **{name: value})
        check = getattr(request, "check", None)
        self.request = check() if callable(check) else request
        self.judge.request = self.request

    def score(self, state: dict) -> dict:
        """The judge's result for ``state`` — the resident merge's (after a ``live.update``), or any other weights
        (a landscape's point); used by the landscapes. Call under ``lock``."""
        judge = self.judge
        if judge is None:
            raise StudioError("nothing judges these models, so there is no score to draw",
                              hint="landscapes need a demo family's evaluator or a preview with a number "
                                   "(perplexity of a text, accuracy on an evaluation set)")
        if isinstance(judge, FamilyJudge):
            return judge.evaluator.evaluate(state)
        if state is self.live.state:
            return judge.evaluate(self.live, self.live.last_changed)
        return judge.previewer.render_state(state, judge.request)

    @property
    def metric(self) -> str:
        judge = self.judge
        last = self.last.result if self.last else None
        return str((judge.metric if judge else "") or (last or {}).get("metric") or "score")

    def inputs(self, progress: Progress | None = None, each: float = 0.0) -> dict[str, dict]:
        """The judge's result for the base and each merged model (cached). ``progress(fraction, message)`` hears of
        each model with an estimate of the time left (``each``: seconds one model is expected to take, refined as
        they come)."""
        s, judge = self.s, self.judge
        if judge is None:
            return {}
        base = s.recipe.get("base_model")
        refs = ([base] if base else []) + [r for r in E.input_refs(s.recipe) if r != base]
        out, t0 = {}, time.perf_counter()
        for i, ref in enumerate(refs):
            if progress is not None:
                took = time.perf_counter() - t0
                per = took / i if i and took > 0.05 else each
                progress(0.1 + 0.9 * i / len(refs), f"scoring input model {i + 1} of {len(refs)} ({s.label(ref)})"
                         + (f" — about {per * (len(refs) - i):.0f} s left" if per > 0.5 else ""))
            try:
                out[s.label(ref)] = judge.input(ref)
            except (StudioError, KeyError, RuntimeError):
                continue  # a model the judge cannot score (e.g. a foreign checkpoint) is just not shown
        return out

    def run(self, ticket: int | None = None, progress: Progress | None = None) -> Preview:
        """Re-merge what changed into the resident model and judge it with the preview budget.

        A call whose ticket is older than the newest request returns ``superseded=True`` without judging: the
        newer request will show its own numbers. A first preview (new models: a family, the user's own) can take a
        minute — loading, merging, then scoring every input model — and tells ``progress(fraction, message)``.
        """
        s = self.s
        ticket = self.next_ticket() if ticket is None else ticket
        snapshot = copy.deepcopy(s.recipe)
        if not E.input_refs(s.recipe):  # a new, empty recipe: nothing to merge yet, and nothing wrong
            self.close()
            self.last = Preview(snapshot, {"notes": ["no models yet: add your own in the Models tab, or choose a "
                                                     "demo family"]}, {}, 0.0, 0.0, 0.0, 0, 0)
            return self.last
        with s.env.heavy, self.lock:
            if ticket != self._ticket:
                return Preview(snapshot, {}, {}, 0.0, 0.0, 0.0, 0, 0, superseded=True)
            t0 = time.perf_counter()
            fresh = self.live is None
            say = progress if fresh else None   # later previews re-merge a few groups and find the inputs cached
            if say is not None:
                say(0.0, "loading the models and merging them")
            live = self.sync_live()
            changed = list(live.state) if fresh else live.last_changed
            t1 = time.perf_counter()
            if ticket != self._ticket:
                return Preview(snapshot, {}, {}, t1 - t0, 0.0, t1 - t0, len(changed), len(live.state),
                               superseded=True)
            if say is not None:
                say(0.05, f"judging the merge (merged in {t1 - t0:.1f} s)")
            result = self.judge.evaluate(live, changed) if self.judge is not None else (
                {"notes": [f"no preview: {self.missing}"]} if self.missing else {})
            t2 = time.perf_counter()
            inputs = self.inputs(say, each=t2 - t1)
        pv = Preview(snapshot, result, inputs, t1 - t0, t2 - t1, t2 - t0, len(changed), len(live.state),
                     previous=self.last.result if self.last else None)
        self.last = pv
        H.record(s.history, snapshot, result, pv.total_seconds)
        return pv

    def show(self, pv: Preview) -> Preview:
        """Show numbers that are not the recipe's (learned weights) as the current preview; not recorded in the
        history."""
        pv.previous = self.last.result if self.last else None
        self.last = pv
        return pv
