"""The recipe: mergekit's YAML schema (plus a few optional keys of ours), validated against method declarations.

mergekit keys: merge_method, base_model, models[].model/parameters, slices[].sources[].model/layer_range/parameters,
slices[].parameters, slices[].base_model, parameters, dtype, out_dtype, tokenizer_source, tokenizer, chat_template.
Ours (ignored by mergekit, which drops unknown keys): seed (random methods), vae (SD: bake this VAE file), name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError
from ..methods import get_method
from .limits import parse_yaml, read_text
from .chat_templates import check_chat_template
from .resolve import check_setting, normalize_setting
from .tokenizer_config import check_tokenizer

TOP_KEYS = ["name", "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "seed", "vae"]
MODEL_KEYS = {"model", "parameters"}
SOURCE_KEYS = {"model", "layer_range", "parameters"}
SLICE_KEYS = {"sources", "parameters", "base_model", "residual_weight"}
DTYPE_NAMES = {"float32", "float16", "bfloat16", "fp32", "fp16", "bf16"}
# top-level keys whose value has one shape (models and parameters have their own checks)
TEXT_KEYS = [("name", str, "text"), ("vae", str, "a path or hub id"),
             ("tokenizer_source", str, "base, union or a model reference"), ("chat_template", str, "text"),
             ("tokenizer", dict, "a mapping (mergekit's tokenizer settings)")]


def _unknown(keys, allowed, where):
    extra = [k for k in keys if k not in allowed]
    if extra:
        raise RecipeError(f"unknown key {extra[0]!r}", where=where, hint=f"allowed keys: {', '.join(sorted(allowed))}")


def _model_text(value, where) -> str:
    if isinstance(value, dict):  # mergekit also accepts {model: {path: ...}} forms; we take the simple ones
        for k in ("model", "path"):
            if isinstance(value.get(k), str):
                lora = value.get("lora")
                return value[k] if not lora else f"{value[k]}+{lora}"
        raise RecipeError("model must be a path or hub id", where=where)
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"model must be a path or hub id, got {value!r}", where=where)
    return value.strip()


def _params(value, where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError("parameters must be a mapping", where=where)
    return dict(value)


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

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a YAML mapping", where=where)
        _unknown(data, set(TOP_KEYS), where)
        if "merge_method" not in data:
            raise RecipeError("missing merge_method", where=where, hint="e.g. merge_method: task_arithmetic")
        models = slices = None
        if data.get("models") is not None:
            if not isinstance(data["models"], list) or not data["models"]:
                raise RecipeError("models must be a non-empty list", where=where)
            models = []
            for i, m in enumerate(data["models"]):
                w = f"{where}: models[{i}]"
                if isinstance(m, str):
                    m = {"model": m}
                if not isinstance(m, dict):
                    raise RecipeError("each entry of models must be a mapping with a model key", where=w)
                _unknown(m, MODEL_KEYS, w)
                models.append(InputModel(_model_text(m.get("model"), w), _params(m.get("parameters"), w)))
        if data.get("slices") is not None:
            if not isinstance(data["slices"], list) or not data["slices"]:
                raise RecipeError("slices must be a non-empty list", where=where)
            slices = []
            for i, s in enumerate(data["slices"]):
                w = f"{where}: slices[{i}]"
                if not isinstance(s, dict):
                    raise RecipeError("each slice must be a mapping with sources", where=w)
                _unknown(s, SLICE_KEYS, w)
                if not isinstance(s.get("sources") or [], list):
                    raise RecipeError("sources must be a list of {model, layer_range} mappings", where=w)
                srcs = []
                for j, src in enumerate(s.get("sources") or []):
                    ws = f"{w}.sources[{j}]"
                    if not isinstance(src, dict):
                        raise RecipeError("each source must be a mapping with model and layer_range", where=ws)
                    _unknown(src, SOURCE_KEYS, ws)
                    lr = src.get("layer_range")
                    if (not isinstance(lr, (list, tuple)) or len(lr) != 2
                            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                            or lr[0] < 0 or lr[1] < lr[0]):
                        raise RecipeError(f"layer_range must be [start, end] with 0 ≤ start ≤ end, got {lr!r}", where=ws)
                    srcs.append(InputModel(_model_text(src.get("model"), ws), _params(src.get("parameters"), ws),
                                           (int(lr[0]), int(lr[1]))))
                if not srcs:
                    raise RecipeError("a slice needs at least one source", where=w)
                lengths = {b - a for a, b in (x.layer_range for x in srcs)}
                if len(lengths) > 1:
                    raise RecipeError("all sources of a slice must span the same number of layers", where=w)
                slices.append(Slice(srcs, _params(s.get("parameters"), w),
                                    _model_text(s["base_model"], w) if s.get("base_model") else None))
        if models is None and slices is None:
            raise RecipeError("a recipe needs models or slices", where=where)
        if models is not None and slices is not None:
            raise RecipeError("use either models or slices, not both", where=where)
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
            models=models, slices=slices,
            parameters=_params(data.get("parameters"), f"{where}: parameters"),
            dtype=data.get("dtype"), out_dtype=data.get("out_dtype"),
            tokenizer_source=data.get("tokenizer_source"), tokenizer=data.get("tokenizer"),
            chat_template=data.get("chat_template"), seed=seed, vae=data.get("vae"), name=data.get("name"),
        )
        r.validate(where)
        return r

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe") -> "Recipe":
        """A recipe from YAML text, read within :mod:`studio.recipe.limits` (size, aliases, nesting)."""
        return cls.from_dict(parse_yaml(text, where), where)

    @classmethod
    def load(cls, path) -> "Recipe":
        return cls.from_yaml(read_text(path), where=str(path))

    # -- validation -------------------------------------------------------------------------------
    @property
    def spec(self):
        return get_method(self.merge_method)

    def input_models(self) -> list[InputModel]:
        if self.models is not None:
            return list(self.models)
        return [s for sl in self.slices for s in sl.sources]

    def validate(self, where: str = "recipe") -> None:
        spec = self.spec  # raises for an unknown method
        check_chat_template(self.chat_template, where)
        check_tokenizer(self.tokenizer_source, self.tokenizer, where)
        names = {p.name for p in spec.params}

        def check(params: dict, w: str, per_model_only: bool):
            for k, v in params.items():
                if k not in names:
                    raise RecipeError(f"method {spec.name!r} has no parameter {k!r}", where=w,
                                      hint=f"its parameters: {', '.join(sorted(names)) or 'none'}")
                p = spec.param(k)
                if per_model_only and not p.per_model:
                    raise RecipeError(f"{k!r} is a global parameter of {spec.name!r}; set it under top-level parameters",
                                      where=w)
                params[k] = v = normalize_setting(p, v)
                check_setting(p, v, f"{w}.{k}")

        check(self.parameters, f"{where}: parameters", False)
        for i, m in enumerate(self.input_models()):
            check(m.parameters, f"{where}: {m.model}: parameters", True)
        for i, sl in enumerate(self.slices or []):
            check(sl.parameters, f"{where}: slices[{i}].parameters", False)
        if spec.needs_base and not self.base_model and not any(sl.base_model for sl in self.slices or []):
            raise RecipeError(f"method {spec.name!r} needs a base_model", where=where)
        if self.models is not None:
            others = [m for m in self.models if m.model != self.base_model]
            n = len(self.models) + (0 if (not self.base_model or not spec.includes_base
                                          or any(m.model == self.base_model for m in self.models)) else 1)
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
        return Recipe.from_dict(self.to_dict())

    def input_references(self) -> list[str]:
        """Every reference the merge reads: the models (base first), then the VAE and the tokenizer source."""
        out = self.referenced_models()
        for ref in (self.vae, self.tokenizer_source):
            if ref and ref not in ("base", "union") and ref not in out:
                out.append(ref)
        return out

    def referenced_models(self) -> list[str]:
        """Every model reference, base first, each once, in recipe order."""
        out = [self.base_model] if self.base_model else []
        for sl in self.slices or []:
            if sl.base_model:
                out.append(sl.base_model)
        out += [m.model for m in self.input_models()]
        seen: list[str] = []
        for m in out:
            if m not in seen:
                seen.append(m)
        return seen
