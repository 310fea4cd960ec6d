"""The plan: one task per output tensor — which inputs, which method, which resolved parameters.

Built from headers only, so it doubles as the dry run: a missing tensor, a shape mismatch or a bad parameter is
reported before any tensor data is read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..devices import parse_dtype
from ..errors import RecipeError, StudioError
from ..layout import LayerStackLayout, Layout, detect_layout, is_mergeable
from ..layout.llm import layer_stack_for
from ..layout.modules import LAYER_COUNT_FIELDS, ModulesLayout, module_of
from ..methods import MethodSpec
from ..recipe import InputModel, Recipe
from ..recipe.resolve import names_matter, resolve_param
from ..sources import SubsetSource, TensorInfo, TensorSource, open_source
from .vocab import aligned_sources, config_vocab_size

Input = tuple[int, str]  # (source index, tensor name in that source)


@dataclass
class TensorTask:
    out_key: str
    op: str                      # "merge" or "copy"
    inputs: list[Input]          # merge: the method's `models`; copy: [the one source]
    base: Input | None = None
    params: dict = field(default_factory=dict)
    group: str = ""
    info: TensorInfo | None = None   # shape and stored dtype of the output
    out_dtype: torch.dtype | None = None
    # a fused MoE experts tensor whose experts have different settings: each slice along dim 0 merged with its own
    expert_params: list[dict] | None = None

    @property
    def seed_key(self) -> int:
        return zlib.crc32(self.out_key.encode())


@dataclass
class Plan:
    recipe: Recipe
    spec: MethodSpec
    sources: list[TensorSource]          # index → source; 0 is the reference model (base, or first model)
    layout: Layout
    tasks: list[TensorTask]
    num_layers: int | None = None        # output layer count when slices changed it
    warnings: list[str] = field(default_factory=list)
    config_updates: dict[str, int] = field(default_factory=dict)  # dotted config path → value (a module's layers)

    @property
    def reference(self) -> TensorSource:
        return self.sources[0]

    def outputs(self) -> dict[str, TensorInfo]:
        """Output key → shape and dtype as computed (an output form may rename and reshape them when written)."""
        return {t.out_key: TensorInfo(tuple(t.info.shape), t.out_dtype or t.info.dtype) for t in self.tasks}

    def output_bytes(self) -> int:
        return sum(t.info.numel * (t.out_dtype or t.info.dtype).itemsize for t in self.tasks)

    def summary(self) -> dict:
        groups: dict[str, dict] = {g: {"tensors": 0, "parameters": 0, "merged": 0} for g in self.layout.groups}
        for t in self.tasks:
            g = groups.setdefault(t.group, {"tensors": 0, "parameters": 0, "merged": 0})
            g["tensors"] += 1
            g["parameters"] += t.info.numel
            g["merged"] += t.op == "merge"
        for g, v in groups.items():
            v["label"] = self.layout.labels.get(g, g)
        return {"method": self.spec.name, "layout": self.layout.name, "layout_description": self.layout.description,
                "tensors": len(self.tasks),
                "merged": sum(t.op == "merge" for t in self.tasks), "output_bytes": self.output_bytes(),
                "num_layers": self.num_layers, "groups": {g: v for g, v in groups.items() if v["tensors"]}, "warnings": list(self.warnings),
                "models": list(dict.fromkeys(s.ref for s in self.sources))}


# Hooks that may adjust a finished plan, each taking (plan) and editing it in place. Families above the engine append
# theirs when imported (studio.sd.vae: the VAE slot of SD merges).
PLAN_HOOKS: list[Callable[[Plan], None]] = []
# Views of an input in its reference model's naming, ``view(reference, source) -> TensorSource | None`` (None: the
# source as it is). Families register theirs (studio.sd.convert: an SD pipeline among ldm files, or the reverse).
INPUT_VIEWS: list[Callable[[TensorSource, TensorSource], TensorSource | None]] = []


def in_reference_naming(reference: TensorSource, source: TensorSource) -> TensorSource:
    """``source`` as the first INPUT_VIEWS hook presents it under ``reference``'s names, else as it is."""
    if source is reference:
        return source
    for view in INPUT_VIEWS:
        seen = view(reference, source)
        if seen is not None:
            return seen
    return source


class _Sources:
    def __init__(self, opener):
        self.opener = opener
        self.refs: list[str] = []
        self.items: list[TensorSource] = []

    def index(self, ref: str) -> int:
        if ref not in self.refs:
            self.refs.append(ref)
            self.items.append(self.opener(ref))
        return self.refs.index(ref)


def _out_dtype(recipe: Recipe, info: TensorInfo) -> torch.dtype | None:
    if not info.dtype.is_floating_point:
        return None
    return parse_dtype(recipe.out_dtype) or parse_dtype(recipe.dtype)


def _check_inputs(key: str, infos: list[tuple[TensorSource, str]], ref_info: TensorInfo) -> None:
    for src, k in infos:
        if k not in src:
            raise StudioError(f"tensor {k!r} is missing", where=src.ref,
                              hint="all merged models must share the architecture; run `python -m studio inspect` "
                                   "on them to list the differences")
        shape = src.info(k).shape
        if shape != ref_info.shape:
            vocab = any(w in key for w in ("embed", "lm_head", "wte"))
            raise StudioError(f"tensor {k!r} has shape {list(shape)}, expected {list(ref_info.shape)}", where=src.ref,
                              hint="vocabulary sizes differ; set tokenizer_source: union (or base) to merge them "
                                   "over one vocabulary" if vocab
                              else "the models do not share an architecture")


def build_plan(recipe: Recipe, opener: Callable[[str], TensorSource] = open_source) -> Plan:
    spec = recipe.spec
    pool = _Sources(opener)
    if recipe.modules is not None:
        plan = _plan_modules(recipe, spec, opener)
    elif recipe.slices is None:
        plan = _plan_models(recipe, spec, pool)
    else:
        plan = _plan_slices(recipe, spec, pool)
    for hook in PLAN_HOOKS:
        hook(plan)
    return plan


def _params_for(recipe, spec, task_key, layout, t, group, global_scopes, model_scopes, where):
    num_groups = len(layout.groups)
    params = {}
    for p in spec.global_params():
        params[p.name] = resolve_param(p, global_scopes, task_key, t, group, num_groups, where)
    for p in spec.per_model_params():
        params[p.name] = [resolve_param(p, scopes, task_key, t, group, num_groups, f"{where} ({ref})")
                          for ref, scopes in model_scopes]
    return params


def _plan_models(recipe: Recipe, spec: MethodSpec, pool: _Sources) -> Plan:
    base = recipe.base_model
    entries = list(recipe.models)
    if base is not None and not any(m.model == base for m in entries):
        entries.append(InputModel(base, {}))  # mergekit: the base joins the inputs when not listed
    ref_model = base or entries[0].model
    ref_idx = pool.index(ref_model)
    for m in entries:
        pool.index(m.model)
    reference = pool.items[ref_idx]
    pool.items = aligned_sources(recipe, pool.refs, [in_reference_naming(reference, src) for src in pool.items])
    reference = pool.items[ref_idx]
    layout = detect_layout(reference)
    method_inputs = [m for m in entries if spec.includes_base or m.model != base]
    base_in = base is not None and (spec.needs_base or not spec.includes_base)
    model_scopes = [(m.model, [m.parameters, recipe.parameters]) for m in method_inputs]
    input_idx = [pool.index(m.model) for m in method_inputs]  # looked up once, not per tensor
    # Without name filters a tensor's parameters depend on its group and position only: resolve them once per
    # (group, position) instead of once per tensor (the live engine re-plans on every slider; ~1100 SD tensors)
    by_place = None if any(names_matter(scope) for _, scopes in model_scopes for scope in scopes) else {}
    tasks = []

    def params_at(key: str, t: float, group: str, where: str) -> dict:
        if by_place is None:
            return _params_for(recipe, spec, key, layout, t, group, [recipe.parameters], model_scopes, where)
        if (group, t) not in by_place:
            by_place[group, t] = _params_for(recipe, spec, key, layout, t, group, [recipe.parameters], model_scopes,
                                             where)
        return {k: list(v) if isinstance(v, list) else v for k, v in by_place[group, t].items()}

    for key in reference.keys():
        info = reference.info(key)
        group = layout.group_of(key)
        if not is_mergeable(key, info.dtype):
            tasks.append(TensorTask(key, "copy", [(ref_idx, key)], group=group, info=info))
            continue
        srcs = [(pool.items[i], key) for i in input_idx]
        _check_inputs(key, srcs, info)
        t = layout.position(key)
        params = params_at(key, t, group, key)
        tasks.append(TensorTask(
            key, "merge", [(i, key) for i in input_idx],
            base=(ref_idx, key) if base_in else None, params=params, group=group, info=info,
            out_dtype=_out_dtype(recipe, info),
            expert_params=_expert_params(layout, group, info, params,
                                         lambda g: params_at(key, t, g, f"{key} ({g})"))))
    warnings = []
    for i, src in enumerate(pool.items):
        extra = [k for k in src.keys() if k not in reference]
        if extra:
            warnings.append(f"{src.ref}: {len(extra)} tensor(s) absent from {reference.ref} are not in the output "
                            f"(e.g. {extra[0]})")
    return Plan(recipe, spec, pool.items, layout, tasks, warnings=warnings)


def _expert_params(layout: Layout, group: str, info: TensorInfo, params: dict, params_of: Callable[[str], dict]
                   ) -> list[dict] | None:
    """Each expert's parameters for a fused experts tensor, when some expert's differ from the tensor's (else None:
    the tensor is merged whole, as mergekit does — per-slice merging would change methods that rank over a tensor)."""
    groups = layout.expert_groups(group)
    if not groups or not info.shape or info.shape[0] != len(groups):
        return None
    per = [params_of(g) for g in groups]
    return per if any(p != params for p in per) else None


def _plan_slices(recipe: Recipe, spec: MethodSpec, pool: _Sources) -> Plan:
    first_src = recipe.slices[0].sources[0].model
    ref_idx = pool.index(recipe.base_model or first_src)
    for sl in recipe.slices:
        for s in sl.sources:
            pool.index(s.model)
    pool.items = aligned_sources(recipe, pool.refs, pool.items)
    reference = pool.items[ref_idx]
    layout = detect_layout(reference)
    if not isinstance(layout, LayerStackLayout):
        raise RecipeError("slices need a layer-stacked model (transformers LLM)", where=reference.ref)

    def layer_keys(src: TensorSource, idx: int) -> list[str]:
        return [k for k in src.keys() if layout.layer_index(k) == idx]

    def outside_keys(src: TensorSource, group: str) -> list[str]:
        return [k for k in src.keys() if layout.layer_index(k) is None and layout.group_of(k) == group]

    tasks: list[TensorTask] = []

    def plan_tensor(out_key, group, t, sl, pairs, ref_key_info):
        # pairs: [(InputModel, key in that model)]
        base = sl.base_model or recipe.base_model
        if spec.needs_base and base not in [m.model for m, _ in pairs]:
            raise RecipeError(f"the base model {base!r} must be one of the sources of every slice for "
                              f"{spec.name!r}", where=out_key)
        src0, key0 = pairs[0]
        info = ref_key_info
        if not is_mergeable(key0, info.dtype):
            tasks.append(TensorTask(out_key, "copy", [(pool.index(src0.model), key0)], group=group, info=info))
            return
        method_pairs = [(m, k) for m, k in pairs if spec.includes_base or m.model != base]
        _check_inputs(out_key, [(pool.items[pool.index(m.model)], k) for m, k in method_pairs], info)
        base_pair = next(((m, k) for m, k in pairs if m.model == base), None)
        model_scopes = [(m.model, [m.parameters, sl.parameters, recipe.parameters]) for m, _ in method_pairs]
        params = _params_for(recipe, spec, out_key, layout, t, group, [sl.parameters, recipe.parameters],
                             model_scopes, out_key)
        tasks.append(TensorTask(
            out_key, "merge", [(pool.index(m.model), k) for m, k in method_pairs],
            base=(pool.index(base_pair[0].model), base_pair[1]) if base_pair and spec.needs_base else None,
            params=params, group=group, info=info, out_dtype=_out_dtype(recipe, info)))

    def plan_outside(group, sl):
        src0 = pool.items[pool.index(sl.sources[0].model)]
        for key in outside_keys(src0, group):
            plan_tensor(key, group, 0.0, sl, [(s, key) for s in sl.sources], src0.info(key))

    plan_outside("EMB", recipe.slices[0])
    out_layer = 0
    for sl in recipe.slices:
        a, b = sl.sources[0].layer_range
        n = b - a
        src0 = pool.items[pool.index(sl.sources[0].model)]
        for s in sl.sources:
            have = getattr(detect_layout(pool.items[pool.index(s.model)]), "num_layers", 0)
            if s.layer_range[1] > have:
                raise RecipeError(f"layer_range {list(s.layer_range)} exceeds the model's {have} layers", where=s.model)
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            for key in layer_keys(src0, a + i):
                out_key = layout.rename_layer(key, out_layer)
                pairs = [(s, layout.rename_layer(key, s.layer_range[0] + i)) for s in sl.sources]
                plan_tensor(out_key, layout.group_of(out_key), t, sl, pairs, src0.info(key))
            out_layer += 1
    plan_outside("HEAD", recipe.slices[-1])
    plan = Plan(recipe, spec, pool.items, layout, tasks, num_layers=out_layer)
    # the output has a different number of layers: use a layout that matches it for reporting
    plan.layout = layer_stack_for([t.out_key for t in tasks], out_layer, getattr(layout, "stack_prefix", None))
    for t in tasks:
        t.group = plan.layout.group_of(t.out_key)
    return plan


def _plan_modules(recipe: Recipe, spec: MethodSpec, opener) -> Plan:
    """mergekit's ``modules:``: each module is merged as a recipe of its own over its tensors (its parameters before
    the top-level ones; :mod:`studio.layout.modules` says which tensors are whose), and the plans are joined. Tensors
    of a module the recipe does not name are copied from the reference model."""
    opened: dict[str, tuple[TensorSource, dict[str, list[str]]]] = {}

    def open_once(ref: str) -> TensorSource:
        """The source, opened once, with its keys sorted by module (each key's module found once)."""
        if ref not in opened:
            src, by_module = opener(ref), {}
            for k in src.keys():
                by_module.setdefault(module_of(k, names), []).append(k)
            opened[ref] = src, by_module
        return opened[ref][0]

    names = list(recipe.modules)
    reference_ref = recipe.base_model or recipe.input_models()[0].model
    reference = open_once(reference_ref)
    sources, tasks, layouts, warnings, updates = [reference], [], {}, [], {}
    for name, module in recipe.modules.items():
        def subset(ref: str, name=name) -> TensorSource:
            src = open_once(ref)
            size = config_vocab_size(src.config)  # what vocabulary settings need of the config (not its layers)
            return SubsetSource(src, opened[ref][1].get(name, []), {"vocab_size": size} if size else None)

        sub = Recipe(recipe.merge_method, recipe.base_model, models=module.models, slices=module.slices,
                     parameters={**recipe.parameters, **module.parameters}, dtype=recipe.dtype,
                     out_dtype=recipe.out_dtype, tokenizer_source=recipe.tokenizer_source,
                     tokenizer=recipe.tokenizer, seed=recipe.seed)
        pool = _Sources(subset)
        part = _plan_models(sub, spec, pool) if module.models is not None else _plan_slices(sub, spec, pool)
        if not part.tasks:
            raise RecipeError(f"no tensor of {reference.ref} belongs to module {name!r}", where=f"modules.{name}",
                              hint="modules are found by name in the tensor keys (e.g. language_model → "
                                   "text_decoder, vision_tower); use default for the whole model")
        offset = len(sources)
        sources += part.sources
        for t in part.tasks:
            t.inputs = [(i + offset, k) for i, k in t.inputs]
            t.base = (t.base[0] + offset, t.base[1]) if t.base else None
        tasks += part.tasks
        layouts[name] = part.layout
        warnings += [f"module {name}: {w}" for w in part.warnings]
        if part.num_layers is not None:
            path = next((f for f in LAYER_COUNT_FIELDS.get(name, ()) if _config_value(reference.config, f)), None)
            if path is None:
                warnings.append(f"module {name} now has {part.num_layers} layers; its config.json field is not "
                                f"known here and keeps the old count")
            else:
                updates[path] = part.num_layers
    unclaimed = opened[reference_ref][1].get(None, [])
    if unclaimed:
        warnings.append(f"{len(unclaimed)} tensor(s) belong to no module of the recipe and are copied from "
                        f"{reference.ref} (e.g. {unclaimed[0]})")
        tasks += [TensorTask(k, "copy", [(0, k)], info=reference.info(k)) for k in unclaimed]
    plan = Plan(recipe, spec, sources, ModulesLayout(layouts), tasks, warnings=warnings, config_updates=updates)
    for t in tasks:
        t.group = plan.layout.group_of(t.out_key)
    return plan


def _config_value(config: dict | None, path: str):
    for part in path.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config
