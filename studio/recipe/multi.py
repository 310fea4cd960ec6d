"""Multi-step recipes, as mergekit-multi takes them: one YAML file of several ``---`` documents, each a recipe with a
``name:``, where a step reads an earlier step by writing its name in place of a model — ``model:``, ``base_model:``,
a slice's source or base, ``tokenizer_source``, ``vae`` — optionally with a LoRA after it (``step1+style.safetensors``).

One document is the output: the one no other step reads (it may go without a name; only it may). mergekit-multi also
builds named documents that nothing reads, into its intermediate folder; here intermediates live only to feed the
output, so such a document is refused instead of merged for nothing. A file of one document is a plain recipe
(:meth:`Recipe.load`), whatever its ``name``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeError
from ..sources import ModelRef, paths
from ..sources.resolve import is_hub_id
from .files import YAML_SUFFIXES
from .limits import parse_yaml_documents, read_text
from .model import Recipe

NOT_MODELS = ("base", "union")   # tokenizer_source words that name no model


@dataclass
class Step:
    """One document of a multi-step recipe: its recipe (references to other steps by name), its ``name`` (None only
    for an unnamed output), its position in the file (1-based, empty documents counted) and the steps it reads."""
    name: str | None
    recipe: Recipe
    document: int
    reads: list[str]

    @property
    def label(self) -> str:
        return self.name or f"document {self.document}"


@dataclass
class MultiRecipe:
    """The steps of a multi-step recipe, each after the steps it reads (file order where that leaves a choice); the
    output last."""
    steps: list[Step]
    where: str

    @property
    def final(self) -> Step:
        return self.steps[-1]

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.steps if s.name}

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe") -> "MultiRecipe":
        return cls.from_documents(parse_yaml_documents(text, where), where)

    @classmethod
    def from_documents(cls, documents: list, where: str = "recipe", strict: bool = False) -> "MultiRecipe":
        steps = [_step(data, n, where, strict) for n, data in enumerate(documents, start=1) if data is not None]
        if len(steps) < 2:
            raise RecipeError("a multi-step recipe needs at least two documents", where=where,
                              hint="a file of one recipe is merged as it is")
        _check_names(steps, where)
        names = {s.name for s in steps if s.name}
        for s in steps:
            s.reads = _reads(s, names, where)
        return cls(_in_order(steps, where), where)

    def uses(self) -> dict[str, list[Step]]:
        """Step name → the steps that read it."""
        out: dict[str, list[Step]] = {n: [] for n in self.names}
        for s in self.steps:
            for n in s.reads:
                out[n].append(s)
        return out


def step_name(ref: str | None, names) -> str | None:
    """The step a reference reads (``step1`` or ``step1+lora.safetensors:0.5`` → ``step1``), else None. A path that
    does not exist and ends in a step's name reads that step too: mergekit-multi writes each step to
    ``<intermediate dir>/<name>``, and published recipes read ``./intermediates/First``."""
    if not ref or ref in NOT_MODELS:
        return None
    model = ModelRef.parse(ref).model
    if model in names:
        return model
    tail = model.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if "/" in model and tail in names and not paths.exists(Path(model).expanduser()):
        return tail
    return None


def substitute(recipe: Recipe, places: dict[str, str], models: bool = True) -> Recipe:
    """A copy of ``recipe`` whose references to the steps named in ``places`` read those places instead (a LoRA after
    a name stays after the place); with ``models`` False, only the tokenizer source and the VAE (what the engine opens
    itself; models are opened through an opener that knows the steps)."""

    def swap(ref):
        name = step_name(ref, places)
        return ref if name is None else str(ModelRef(str(places[name]), ModelRef.parse(ref).lora))

    r = copy.deepcopy(recipe)
    if models:
        r.base_model = swap(r.base_model)
        for m in r.input_models():
            m.model = swap(m.model)
        for part in r.parts():
            for sl in part.slices or []:
                sl.base_model = swap(sl.base_model)
    r.tokenizer_source, r.vae = swap(r.tokenizer_source), swap(r.vae)
    if isinstance(r.tokenizer, dict) and isinstance(r.tokenizer.get("source"), str):
        r.tokenizer["source"] = swap(r.tokenizer["source"])
    return r


def load_multi(path, strict: bool = False) -> MultiRecipe | None:
    """The steps of a YAML file holding several recipes; None for anything else (a one-document YAML, a folder, a
    merged file), which the single-recipe readers take."""
    path = Path(str(path))
    if path.suffix.lower() not in YAML_SUFFIXES or not paths.is_file(path):
        return None
    documents = parse_yaml_documents(read_text(path), str(path))
    if sum(d is not None for d in documents) < 2:
        return None
    return MultiRecipe.from_documents(documents, str(path), strict)


def _step(data, n: int, where: str, strict: bool = False) -> Step:
    w = f"{where}: document {n}"
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        w += f" ({data['name']})"
    recipe = Recipe.from_dict(data, where=w, strict=strict)
    if recipe.name is not None and (not recipe.name.strip() or "+" in recipe.name):
        raise RecipeError(f"step name {recipe.name!r} cannot be read back", where=w,
                          hint="a name is non-blank text without '+' ('+' joins a model and a LoRA)")
    return Step(recipe.name, recipe, n, [])


def _where(step: Step, where: str) -> str:
    return f"{where}: document {step.document}" + (f" ({step.name})" if step.name else "")


def _check_names(steps: list[Step], where: str) -> None:
    unnamed = [s for s in steps if s.name is None]
    if len(unnamed) > 1:
        raise RecipeError("only the output may go without a name", where=_where(unnamed[1], where),
                          hint=f"give it a name: (document {unnamed[0].document} has none either) and read it by "
                               "that name in a later step")
    first: dict[str, Step] = {}
    for s in steps:
        if s.name in first:
            raise RecipeError(f"the name {s.name!r} is also document {first[s.name].document}'s",
                              where=_where(s, where), hint="give each step its own name")
        if s.name is not None:
            first[s.name] = s


def _reads(step: Step, names: set[str], where: str) -> list[str]:
    """The steps ``step`` reads; RecipeError for a reference that is neither a step, a file or folder, nor a hub id
    (most likely a misspelt step)."""
    out = []
    for ref in step.recipe.input_references():
        name = step_name(ref, names)
        if name is not None:
            if name == step.name:
                raise RecipeError(f"the step reads itself ({ref!r})", where=_where(step, where),
                                  hint="a step reads models or earlier steps")
            if name not in out:
                out.append(name)
            continue
        model = ModelRef.parse(ref).model
        if not paths.exists(Path(model).expanduser()) and not is_hub_id(model):
            raise RecipeError(f"{model!r} is neither a step of this file, a file or folder, nor a hub id",
                              where=_where(step, where), hint=f"the steps: {', '.join(sorted(names)) or 'none'}")
    return out


def _in_order(steps: list[Step], where: str) -> list[Step]:
    """The steps each after those it reads (file order where free); RecipeError for a cycle or a second output."""
    readers = {s.name: [t for t in steps if s.name in t.reads] for s in steps if s.name}
    outputs = [s for s in steps if not s.name or not readers[s.name]]
    if len(outputs) > 1:
        extra = next(s for s in outputs if s.name)
        raise RecipeError(f"no step reads {extra.name!r}, and a multi-step recipe has one output "
                          f"({', '.join(s.label for s in outputs)} are read by none)", where=_where(extra, where),
                          hint=f"read {extra.name!r} in a later step, or remove it")
    done: list[Step] = []
    waiting = list(steps)
    while waiting:
        ready = next((s for s in waiting if all(any(d.name == n for d in done) for n in s.reads)), None)
        if ready is None:
            raise RecipeError(f"steps read each other in a circle: {_cycle(waiting)}", where=where,
                              hint="a step can only read steps that do not read it back")
        done.append(ready)
        waiting.remove(ready)
    return done


def _cycle(waiting: list[Step]) -> str:
    """One circle among steps that all wait on each other, as ``a → b → a`` (a reads b, b reads a)."""
    by_name = {s.name: s for s in waiting}
    path = [waiting[0]]
    while True:
        nxt = by_name[next(n for n in path[-1].reads if n in by_name)]
        if nxt in path:
            circle = path[path.index(nxt):] + [nxt]
            return " → ".join(s.label for s in circle)
        path.append(nxt)
