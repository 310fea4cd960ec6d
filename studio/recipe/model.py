"""The recipe: mergekit's YAML schema (plus a few optional keys of ours), validated against method declarations.

mergekit keys: merge_method, base_model, models[].model/parameters, slices[].sources[].model/layer_range/parameters,
slices[].parameters, slices[].base_model, modules.NAME.models/slices/parameters, parameters, dtype, out_dtype,
tokenizer_source, tokenizer, chat_template; a model as ``path``, ``org/name@revision``, ``base+lora``, a
``{model, lora}`` / ``{path, revision}`` mapping, or with ``revision:`` beside it.
Ours (ignored by mergekit, which drops unknown keys): seed (random methods), vae (SD: bake this VAE file), name.
Keys that have no effect are dropped with a warning each (mergekit drops them silently), or refused when strict.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError
from ..methods import get_method
from .limits import parse_yaml, read_text
from .chat_templates import check_chat_template
from .resolve import check_setting, normalize_setting
from .tokenizer_config import check_tokenizer, tokenizer_settings

TOP_KEYS = ["name", "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "seed", "vae", "modules"]
MODEL_KEYS = {"model", "parameters", "revision"}
SOURCE_KEYS = {"model", "layer_range", "parameters", "revision"}
MODULE_KEYS = {"models", "slices", "parameters"}
SLICE_KEYS = {"sources", "parameters", "base_model"}
DTYPE_NAMES = {"float32", "float16", "bfloat16", "fp32", "fp16", "bf16"}
# top-level keys whose value has one shape (models and parameters have their own checks)
TEXT_KEYS = [("name", str, "text"), ("vae", str, "a path or hub id"),
             ("tokenizer_source", str, "base, union or a model reference"), ("chat_template", str, "text"),
             ("tokenizer", dict, "a mapping (mergekit's tokenizer settings)")]


class Tolerance:
    """What to do with a key that has no effect. mergekit drops unknown keys silently, and recipes are published with
    them (a top-level ``select_topk``, ``normalize`` on multislerp, an ``int8_mask``): by default each one becomes one
    warning line — with a did-you-mean where a near spelling or its proper place is known — and the recipe merges as
    mergekit merges it; ``strict`` refuses it, as a typo usually deserves."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.warnings: list[str] = []

    def ignore(self, what: str, where: str, hint: str | None = None) -> None:
        if self.strict:
            raise RecipeError(f"{what} is not allowed here", where=where,
                              hint=(hint + "; " if hint else "") + "drop --strict to merge with a warning instead")
        self.warnings.append(f"{where}: {what} has no effect and is ignored" + (f" — {hint}" if hint else ""))

    def keys(self, data: dict, allowed, where: str, elsewhere: dict[str, str] | None = None) -> dict:
        """``data`` without the keys outside ``allowed``; each one is refused (strict) or warned about once.
        ``elsewhere`` maps a key known to belong somewhere else to where (its hint)."""
        kept = {}
        for k, v in data.items():
            if k in allowed:
                kept[k] = v
            else:
                self.ignore(f"key {k!r}", where, did_you_mean(k, allowed, elsewhere or {}))
        return kept


def did_you_mean(key, allowed, elsewhere: dict[str, str]) -> str | None:
    if not isinstance(key, str):
        return None
    if key in elsewhere:
        return elsewhere[key]
    allowed = sorted(a for a in allowed if isinstance(a, str))
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75) or [
        a for a in allowed if min(len(a), len(key)) >= 4 and (a.startswith(key) or key.startswith(a))][:1]
    return f"did you mean {close[0]!r}?" if close else None


def _path_text(value, where) -> str:
    """mergekit's model path: ``path[@revision]`` or ``{path: …, revision: …}`` → ``path[@revision]``."""
    if isinstance(value, dict):
        path, rev = value.get("path"), value.get("revision")
        if isinstance(path, str) and path.strip() and (rev is None or (isinstance(rev, str) and rev.strip())):
            return with_revision(path.strip(), rev, where)
    elif isinstance(value, str) and value.strip():
        return value.strip()
    raise RecipeError(f"model must be a path or hub id (org/name[@revision]), got {value!r}", where=where)


def with_revision(model: str, revision, where) -> str:
    """``model@revision`` (a ``revision:`` written beside the model); one revision only."""
    if revision is None:
        return model
    if not isinstance(revision, str) or not revision.strip():
        raise RecipeError(f"revision must be a branch, tag or commit, got {revision!r}", where=where)
    head, _, lora = model.partition("+")
    if "@" in head:
        raise RecipeError(f"{model!r} already names a revision; revision: {revision!r} would be a second",
                          where=where, hint="keep one of them")
    return f"{head}@{revision.strip()}" + (f"+{lora}" if lora else "")


def _model_text(value, where) -> str:
    """A model reference in any of mergekit's spellings — ``path``, ``org/name@rev``, ``base+lora``,
    ``{model: …, lora: …}``, ``{path: …, revision: …}`` — as our one text form ``path[@rev][+lora[@rev]]``."""
    if isinstance(value, dict) and "path" not in value:
        if "model" not in value:
            raise RecipeError("a model mapping needs model (and optionally lora)", where=where)
        text = _path_text(value["model"], where)
        if value.get("lora") is not None:
            text += "+" + _path_text(value["lora"], where)
        return text
    return _path_text(value, where)


def _params(value, where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError("parameters must be a mapping", where=where)
    named = [k for k in value if not isinstance(k, str)]
    if named:
        raise RecipeError(f"a parameter is named by its name, not {named[0]!r}", where=where)
    return dict(value)


# why a parameter some methods of mergekit take has no effect here
PARAM_HINTS = {"int8_mask": "mergekit's memory saving for masks; masks here are computed once in float32"}


def _top_elsewhere(spec) -> dict[str, str]:
    """Hints for top-level keys that belong somewhere else (the method's parameters, the tokenizer's padding)."""
    hints = {p.name: f"{p.name!r} is a parameter of {spec.name!r}: put it under parameters: to apply it"
             for p in spec.params} if spec else {}
    hints["pad_to_multiple_of"] = "it belongs under tokenizer: (tokenizer: {source: base, pad_to_multiple_of: N})"
    hints["revision"] = "write it beside a model (model: …, revision: …) or as org/name@revision"
    return hints


def _entry_elsewhere(spec) -> dict[str, str]:
    """Hints for keys of a model entry or source that belong under its parameters."""
    hints = {p.name: f"{p.name!r} is a parameter: put it under this entry's parameters: to apply it"
             for p in spec.params} if spec else {}
    hints["layer_range"] = "layer ranges belong to slices' sources"
    return hints


def _entry(m, allowed, where, tol: Tolerance, spec) -> tuple[str, dict]:
    """A model entry or slice source (its allowed keys kept): its model reference (with its ``revision:``)."""
    if isinstance(m, str):
        m = {"model": m}
    if not isinstance(m, dict):
        raise RecipeError("each entry must be a mapping with a model key", where=where)
    m = tol.keys(m, allowed, where, _entry_elsewhere(spec))
    return with_revision(_model_text(m.get("model"), where), m.get("revision"), where), m


def _nonempty_list(data: dict, key: str, where: str) -> list:
    if not isinstance(data[key], list) or not data[key]:
        raise RecipeError(f"{key} must be a non-empty list", where=where)
    return data[key]


def _inputs(data: dict, where: str, tol: Tolerance, spec) -> tuple[list | None, list | None]:
    """The ``models`` and ``slices`` of a recipe or module (None where absent)."""
    models = slices = None
    if data.get("models") is not None:
        models = []
        for i, m in enumerate(_nonempty_list(data, "models", where)):
            w = f"{where}: models[{i}]"
            ref, m = _entry(m, MODEL_KEYS, w, tol, spec)
            models.append(InputModel(ref, _params(m.get("parameters"), w)))
    if data.get("slices") is not None:
        slices = []
        for i, s in enumerate(_nonempty_list(data, "slices", where)):
            w = f"{where}: slices[{i}]"
            if not isinstance(s, dict):
                raise RecipeError("each slice must be a mapping with sources", where=w)
            s = tol.keys(s, SLICE_KEYS, w)
            if not isinstance(s.get("sources") or [], list):
                raise RecipeError("sources must be a list of {model, layer_range} mappings", where=w)
            srcs = []
            for j, src in enumerate(s.get("sources") or []):
                ws = f"{w}.sources[{j}]"
                if not isinstance(src, dict):
                    raise RecipeError("each source must be a mapping with model and layer_range", where=ws)
                ref, src = _entry(src, SOURCE_KEYS, ws, tol, spec)
                lr = src.get("layer_range")
                if (not isinstance(lr, (list, tuple)) or len(lr) != 2
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                        or lr[0] < 0 or lr[1] < lr[0]):
                    raise RecipeError(f"layer_range must be [start, end] with 0 ≤ start ≤ end, got {lr!r}", where=ws)
                srcs.append(InputModel(ref, _params(src.get("parameters"), ws), (int(lr[0]), int(lr[1]))))
            if not srcs:
                raise RecipeError("a slice needs at least one source", where=w)
            if len({b - a for a, b in (x.layer_range for x in srcs)}) > 1:
                raise RecipeError("all sources of a slice must span the same number of layers", where=w)
            slices.append(Slice(srcs, _params(s.get("parameters"), w),
                                _model_text(s["base_model"], w) if s.get("base_model") else None))
    if models is not None and slices is not None:
        raise RecipeError("use either models or slices, not both", where=where)
    return models, slices


@dataclass
class InputModel:
    model: str
    parameters: dict = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None

    def to_dict(self, with_range: bool) -> dict:
        d: dict[str, Any] = {"model": self.model}
        if with_range and self.layer_range is not None:
            d["layer_range"] = list(self.layer_range)
        if self.parameters:
            d["parameters"] = copy.deepcopy(self.parameters)
        return d


@dataclass
class Slice:
    sources: list[InputModel]
    parameters: dict = field(default_factory=dict)
    base_model: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"sources": [s.to_dict(True) for s in self.sources]}
        if self.base_model:
            d["base_model"] = self.base_model
        if self.parameters:
            d["parameters"] = copy.deepcopy(self.parameters)
        return d


@dataclass
class Module:
    """One part of a multimodal or encoder–decoder model merged with its own inputs (mergekit's ``modules:``, e.g.
    ``text_decoder``, ``vision_tower``): models or slices, and parameters that come before the top-level ones."""
    models: list[InputModel] | None = None
    slices: list[Slice] | None = None
    parameters: dict = field(default_factory=dict)

    def input_models(self) -> list[InputModel]:
        return list(self.models) if self.models is not None else [s for sl in self.slices for s in sl.sources]

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.models is not None:
            d["models"] = [m.to_dict(False) for m in self.models]
        if self.slices is not None:
            d["slices"] = [s.to_dict() for s in self.slices]
        if self.parameters:
            d["parameters"] = copy.deepcopy(self.parameters)
        return d


@dataclass
class Recipe:
    merge_method: str
    base_model: str | None = None
    models: list[InputModel] | None = None
    slices: list[Slice] | None = None
    parameters: dict = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict | None = None
    chat_template: str | None = None
    seed: int | None = None
    vae: str | None = None
    name: str | None = None
    modules: dict[str, Module] | None = None
    # what had no effect (keys mergekit ignores): one line each; not part of the recipe
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe", strict: bool = False) -> "Recipe":
        """A recipe from its mapping. Keys that have no effect are dropped with one warning each (in
        ``warnings``), or refused when ``strict`` (see :class:`Tolerance`)."""
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a YAML mapping", where=where)
        if "merge_method" not in data:
            raise RecipeError("missing merge_method", where=where, hint="e.g. merge_method: task_arithmetic")
        tol = Tolerance(strict)
        method = data["merge_method"]
        spec = get_method(str(method)) if isinstance(method, str) else None  # an unknown method is refused here
        data = tol.keys(data, TOP_KEYS, where, _top_elsewhere(spec))
        models, slices = _inputs(data, where, tol, spec)
        modules = None
        if data.get("modules") is not None:
            if not isinstance(data["modules"], dict) or not data["modules"]:
                raise RecipeError("modules must be a mapping of module name → {models or slices, parameters}",
                                  where=where)
            modules = {}
            for name, m in data["modules"].items():
                w = f"{where}: modules.{name}"
                if not isinstance(name, str) or not isinstance(m, dict):
                    raise RecipeError("each module is a name with a mapping of models or slices", where=w)
                m = tol.keys(m, MODULE_KEYS, w, _entry_elsewhere(spec))
                mods, slcs = _inputs(m, w, tol, spec)
                if (mods is None) == (slcs is None):
                    raise RecipeError("a module needs models or slices (one of them)", where=w)
                modules[name] = Module(mods, slcs, _params(m.get("parameters"), f"{w}.parameters"))
        if sum(x is not None for x in (models, slices, modules)) != 1:
            raise RecipeError("a recipe needs exactly one of models, slices or modules", where=where)
        for key in ("dtype", "out_dtype"):
            if data.get(key) is not None and str(data[key]).lower() not in DTYPE_NAMES:
                raise RecipeError(f"{key} must be one of float32, float16, bfloat16; got {data[key]!r}", where=where)
        for key, kind, what in TEXT_KEYS:
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise RecipeError(f"{key} must be {what}, got {data[key]!r}", where=where)
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RecipeError(f"seed must be an integer, got {seed!r}", where=where)
        r = cls(
            merge_method=str(data["merge_method"]),
            base_model=_model_text(data["base_model"], where) if data.get("base_model") else None,
            models=models, slices=slices, modules=modules,
            parameters=_params(data.get("parameters"), f"{where}: parameters"),
            dtype=data.get("dtype"), out_dtype=data.get("out_dtype"),
            tokenizer_source=data.get("tokenizer_source"), tokenizer=data.get("tokenizer"),
            chat_template=data.get("chat_template"), seed=seed, vae=data.get("vae"), name=data.get("name"),
        )
        r.validate(where, tol)
        r.warnings = tol.warnings
        return r

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe", strict: bool = False) -> "Recipe":
        """A recipe from YAML text, read within :mod:`studio.recipe.limits` (size, aliases, nesting)."""
        return cls.from_dict(parse_yaml(text, where), where, strict)

    @classmethod
    def load(cls, path, strict: bool = False) -> "Recipe":
        return cls.from_yaml(read_text(path), where=str(path), strict=strict)

    # -- validation -------------------------------------------------------------------------------
    @property
    def spec(self):
        return get_method(self.merge_method)

    def parts(self) -> list["Recipe | Module"]:
        """What holds inputs: the recipe itself, or each of its modules."""
        return list(self.modules.values()) if self.modules is not None else [self]

    def input_models(self) -> list[InputModel]:
        if self.modules is not None:
            return [m for part in self.modules.values() for m in part.input_models()]
        if self.models is not None:
            return list(self.models)
        return [s for sl in self.slices for s in sl.sources]

    def validate(self, where: str = "recipe", tol: Tolerance | None = None) -> None:
        spec = self.spec  # raises for an unknown method
        tol = tol or Tolerance(strict=True)
        check_chat_template(self.chat_template, where)
        check_tokenizer(self.tokenizer_source, self.tokenizer, where)
        names = {p.name for p in spec.params}

        def check(params: dict, w: str, per_model_only: bool):
            for k in list(params):
                if k not in names:
                    tol.ignore(f"parameter {k!r} (method {spec.name!r} has no such parameter)", w,
                               PARAM_HINTS.get(k) or did_you_mean(k, names, {})
                               or f"its parameters: {', '.join(sorted(names)) or 'none'}")
                    del params[k]
                    continue
                p = spec.param(k)
                if per_model_only and not p.per_model:
                    tol.ignore(f"{k!r} per model ({k!r} is a global parameter of {spec.name!r})", w,
                               "set it under top-level parameters")
                    del params[k]
                    continue
                params[k] = v = normalize_setting(p, params[k])
                check_setting(p, v, f"{w}.{k}")

        check(self.parameters, f"{where}: parameters", False)
        for name, module in (self.modules or {}).items():
            check(module.parameters, f"{where}: modules.{name}.parameters", False)
        for m in self.input_models():
            check(m.parameters, f"{where}: {m.model}: parameters", True)
        for part in self.parts():
            for i, sl in enumerate(part.slices or []):
                check(sl.parameters, f"{where}: slices[{i}].parameters", False)
        slice_bases = any(sl.base_model for part in self.parts() for sl in part.slices or [])
        if spec.needs_base and not self.base_model and not slice_bases:
            raise RecipeError(f"method {spec.name!r} needs a base_model", where=where)
        for part in self.parts():
            if part.models is not None:
                self._check_count(spec, part.models, where)

    def _check_count(self, spec, models: list[InputModel], where: str) -> None:
        others = [m for m in models if m.model != self.base_model]
        n = len(models) + (0 if (not self.base_model or not spec.includes_base
                                 or any(m.model == self.base_model for m in models)) else 1)
        n = n if spec.includes_base else len(others)
        if n < spec.min_models or (spec.max_models is not None and n > spec.max_models):
            want = (f"exactly {spec.min_models}" if spec.min_models == spec.max_models
                    else f"at least {spec.min_models}" if spec.max_models is None
                    else f"{spec.min_models}–{spec.max_models}")
            what = "models" if spec.includes_base else "models besides the base"
            raise RecipeError(f"method {spec.name!r} takes {want} {what}, got {n}", where=where)

    # -- export -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        d["merge_method"] = self.merge_method
        if self.base_model:
            d["base_model"] = self.base_model
        if self.models is not None:
            d["models"] = [m.to_dict(False) for m in self.models]
        if self.slices is not None:
            d["slices"] = [s.to_dict() for s in self.slices]
        if self.modules is not None:
            d["modules"] = {name: m.to_dict() for name, m in self.modules.items()}
        if self.parameters:
            d["parameters"] = copy.deepcopy(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "seed", "vae"):
            v = getattr(self, key)
            if v is not None:
                d[key] = copy.deepcopy(v)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)

    def copy(self) -> "Recipe":
        r = Recipe.from_dict(self.to_dict())
        r.warnings = list(self.warnings)
        return r

    def input_references(self) -> list[str]:
        """Every reference the merge reads: the models (base first), then the VAE and the tokenizer source."""
        out = self.referenced_models()
        for ref in (self.vae, self.tokenizer_reference()):
            if ref and ref not in ("base", "union") and ref not in out:
                out.append(ref)
        return out

    def tokenizer_reference(self) -> str | None:
        """The model whose tokenizer the output takes (``tokenizer_source`` or ``tokenizer.source``), if one does."""
        settings = tokenizer_settings(self.tokenizer_source, self.tokenizer)
        return settings.source if settings is not None and settings.source not in ("base", "union") else None

    def referenced_models(self) -> list[str]:
        """Every model reference, base first, each once, in recipe order."""
        out = [self.base_model] if self.base_model else []
        for part in self.parts():
            out += [sl.base_model for sl in part.slices or [] if sl.base_model]
        out += [m.model for m in self.input_models()]
        seen: list[str] = []
        for m in out:
            if m not in seen:
                seen.append(m)
        return seen
