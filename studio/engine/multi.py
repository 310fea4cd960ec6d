"""Running a multi-step recipe (:mod:`studio.recipe.multi`): each intermediate step merged into a temporary folder
beside the output, the output last, atomically, by :func:`merge_to_disk`; the temporary folder is removed whether the
merge succeeds or fails (each intermediate as soon as no later step reads it).

Steps keep reading earlier steps by name — an opener hands the step's output for its name — so the output's
``mergekit_config.yml`` and model card say ``base_model: step1``, not a temporary path that no longer exists. Only
``tokenizer_source`` and ``vae``, which the engine opens itself, get the path. Every step is planned from headers before
anything is merged: a step reading an earlier one is planned against a header-only source built from that step's plan
(names, shapes and dtypes as it will write them), so a dry run refuses what the merge would, and the merge refuses it
before computing anything.
"""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import StudioError
from ..output import is_single_file, output_error, recipe_path, remove_quietly
from ..recipe import Recipe
from ..recipe.multi import MultiRecipe, Step, step_name, substitute
from ..sources import PrefixedSource, ModelRef, TensorInfo, TensorSource, open_source
from ..sources.resolve import modified_source
from .plan import Plan, build_plan
from .stream import DEFAULT_SHARD_BYTES, check_merge_target, merge_to_disk, planned_output, write_side_files

@dataclass
class StepPlan:
    """A step, its plan from headers, and where its output goes: ``target`` for the output; for an intermediate, a
    name in the temporary folder (``.safetensors`` when its reference model is one file, as the output of SD
    checkpoints is; a folder otherwise)."""
    step: Step
    number: int
    count: int
    plan: Plan | None = None
    target: Path | None = None
    intermediate: str | None = None

    @property
    def label(self) -> str:
        return f"step {self.number}/{self.count}: {self.step.label}"


class PlannedSource(TensorSource):
    """What a step will write, known from its plan alone: names, shapes and dtypes, no data."""

    def __init__(self, ref: str, path: Path, infos: dict[str, TensorInfo], kind: str, config: dict | None,
                 folder: Path | None):
        super().__init__(ref=ref, path=path, kind=kind, config=config, folder=folder)
        self._index = dict(infos)

    def _read(self, key):
        raise StudioError("a planned step's output holds no tensors yet", where=self.ref,
                          hint="a dry run plans from headers only")


def plan_steps(multi: MultiRecipe, out: str | Path, overwrite: bool = False) -> list[StepPlan]:
    """Every step's plan, from headers only, each step reading its predecessors' planned outputs; StudioError (naming
    the step) for what the merge would refuse, the output's target included."""
    out = Path(out)
    planned: dict[str, TensorSource] = {}
    places: dict[str, str] = {}
    steps = []
    # An intermediate's side files (config, tokenizer: what later steps' vocabulary settings read) are small: they are
    # written for real into a system temporary folder, so later steps plan against what the merge will give them.
    with tempfile.TemporaryDirectory(prefix="merge-studio-plan-") as sides:
        for number, step in enumerate(multi.steps, start=1):
            sp = StepPlan(step, number, len(multi.steps))
            with _errors_of(sp):
                recipe = substitute(step.recipe, {n: places[n] for n in _side_reads(step, multi)}, models=False)
                sp.plan = build_plan(recipe, _opener(multi, lambda name: planned[name]))
                if step is multi.final:
                    sp.target = out
                    check_merge_target(sp.plan, out, overwrite)
                    planned_output(sp.plan, out)
                else:
                    sp.intermediate = _intermediate_name(number, step, sp.plan)
                    place = out.parent / f".{out.name}.steps" / sp.intermediate   # where a dry run pictures it
                    form = planned_output(sp.plan, place)
                    side = Path(sides) / sp.intermediate
                    if not is_single_file(place):
                        side.mkdir()
                        write_side_files(sp.plan, form, side)
                    planned[step.name] = _planned_source(sp.plan, form, step.name, place, side)
                    places[step.name] = str(side if side.is_dir() else place)
            steps.append(sp)
    return steps


def merge_steps(multi: MultiRecipe, out: str | Path, *, device: str = "auto", seed: int | None = None,
                overwrite: bool = False, progress: bool = True, shard_bytes: int = DEFAULT_SHARD_BYTES,
                allow_nonfinite: bool = False, announce: Callable[[str], None] | None = None) -> list[dict]:
    """Merge every step in turn (intermediates in a temporary folder beside ``out``, removed afterwards) and the last
    one to ``out``, atomically; ``announce("step 2/3: name")`` as each starts. ``seed`` (when given) is every
    step's. Returns the steps' plan summaries, each with its ``step`` label."""
    out = Path(out)
    steps = plan_steps(multi, out, overwrite)   # refuses before anything is merged
    written: dict[str, Path] = {}
    readers = multi.uses()
    summaries = []
    with _temporary_folder(out) as temp:
        for sp in steps:
            if announce:
                announce(sp.label)
            is_output = sp.target is not None
            target = sp.target if is_output else temp / sp.intermediate
            with _errors_of(sp):
                recipe, opener = _written_inputs(sp.step, multi, written)
                summary = merge_to_disk(recipe, target, device=device, seed=seed, overwrite=overwrite and is_output,
                                        progress=progress, shard_bytes=shard_bytes, allow_nonfinite=allow_nonfinite,
                                        opener=opener)
            summaries.append(dict(summary, step=sp.label))
            if sp.step.name:
                written[sp.step.name] = target
            for name in sp.step.reads:   # the disk an intermediate takes is given back once no later step reads it
                if readers[name][-1] is sp.step:
                    remove_quietly(written[name])
                    remove_quietly(recipe_path(written[name]))
    return summaries


def merge_intermediates(multi: MultiRecipe, folder: str | Path, *, device: str = "auto",
                        announce: Callable[[str], None] | None = None) -> tuple[Recipe, list[str]]:
    """The studio's way into a multi-step recipe: every step but the output merged into ``folder`` (kept there: they
    are the output step's inputs while it is tuned live; a step whose folder already holds that step's recipe is
    reused), and the output step's recipe reading them there. Returns that recipe and the steps merged anew."""
    folder = Path(folder)
    steps = plan_steps(multi, folder / "output")  # refuses before anything is merged; "output" is never written
    written: dict[str, Path] = {}
    merged = []
    for sp in steps[:-1]:
        target = folder / sp.intermediate
        with _errors_of(sp):
            recipe, opener = _written_inputs(sp.step, multi, written)
            done = recipe_path(target)
            if not (done.is_file() and done.read_text(encoding="utf-8") == recipe.to_yaml()):
                if announce:
                    announce(sp.label)
                merge_to_disk(recipe, target, device=device, overwrite=True, progress=False, opener=opener)
                merged.append(sp.step.label)
        written[sp.step.name] = target
    return substitute(multi.final.recipe, {n: str(p) for n, p in written.items()}), merged


def _side_reads(step: Step, multi: MultiRecipe) -> list[str]:
    """The steps ``step`` names as its tokenizer source or VAE: the engine opens those itself, so they get a path."""
    return [n for n in (step_name(step.recipe.tokenizer_reference(), multi.names),
                        step_name(step.recipe.vae, multi.names)) if n is not None]


def _written_inputs(step: Step, multi: MultiRecipe, written: dict[str, Path]):
    """A step's recipe and opener once the steps it reads are written (``written``: name → where)."""
    recipe = substitute(step.recipe, {n: str(written[n]) for n in _side_reads(step, multi)}, models=False)
    return recipe, _opener(multi, lambda name: open_source(str(written[name])))


def _opener(multi: MultiRecipe, output_of: Callable[[str], TensorSource]) -> Callable[[str], TensorSource]:
    """open_source, but a step's name (with a LoRA after it or not) opens ``output_of(name)``, seen under the name."""

    def opener(ref: str) -> TensorSource:
        name = step_name(ref, multi.names)
        if name is None:
            return open_source(ref)
        src = output_of(name)
        lora = ModelRef.parse(ref).lora
        if lora is not None:
            src = modified_source(src, lora, ref)
        src.ref = ref  # messages name the step as the recipe does, not a temporary path
        return src

    return opener


def _intermediate_name(number: int, step: Step, plan: Plan) -> str:
    """A file or folder name for the step's output: numbered (names may differ only in what a file name cannot
    hold); one ``.safetensors`` when its reference model is one file, so the next step reads it in the same form."""
    stem = f"{number:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', step.name)[:60]}"
    return stem + ".safetensors" if plan.reference.folder is None else stem


def _planned_source(plan: Plan, form, ref: str, place: Path, side: Path) -> TensorSource:
    """A header-only source of what ``plan`` writes to ``place`` in ``form``, as opening the written output would
    present it: one file; a model folder (its side files, as the merge writes them, in ``side``); or a pipeline
    folder of components."""
    infos = {e.name: e.info for e in form.entries}
    if is_single_file(place):
        return PlannedSource(ref, place, infos, "safetensors", None, None)
    reference = plan.reference
    if not form.components:
        config = json.loads((side / "config.json").read_text()) if (side / "config.json").is_file() else None
        return PlannedSource(ref, place, infos, reference.kind, config, side)
    parts: dict[str, dict[str, TensorInfo]] = {}
    for name, info in infos.items():
        comp, _, key = name.partition(".")
        parts.setdefault(comp, {})[key] = info
    ref_parts = getattr(reference, "parts", {})
    sources = {comp: PlannedSource(f"{ref}/{comp}", place / comp, items, "diffusers-component",
                                   getattr(ref_parts.get(comp), "config", None), side / comp)
               for comp, items in parts.items()}
    return PrefixedSource(sources, ref=ref, path=place, kind="diffusers", config=reference.config)


@contextmanager
def _errors_of(sp: StepPlan) -> Iterator[None]:
    """A StudioError raised while planning or merging a step, naming the step first."""
    try:
        yield
    except StudioError as e:
        where = sp.label if e.where is None else f"{sp.label}: {e.where}"
        try:
            relabelled = type(e)(e.what, where=where, hint=e.hint)
        except TypeError:  # a subclass with other arguments: the family's own class carries the same message
            relabelled = StudioError(e.what, where=where, hint=e.hint)
        raise relabelled from e


@contextmanager
def _temporary_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` (the same disk, and where the user looks), removed with all it holds on leaving."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.steps-", dir=out.parent))
    except OSError as e:
        raise output_error(e, out) from None
    try:
        yield temp
    finally:
        remove_quietly(temp)


