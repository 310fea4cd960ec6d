"""The live engine: inputs resident on the device, re-merging only the tensors whose parameters changed.

``LiveMerger(recipe)`` reads every input tensor once (float32, on the device). ``update(recipe)`` rebuilds the plan
from cached headers, compares each output tensor's signature (method, inputs, resolved parameters, seed) with the
last one, and recomputes only those that differ — a slider on one block re-merges that block. ``load_into(module)``
copies the changed tensors into a torch module's parameters in place.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import torch

from ..devices import resolve_device
from ..recipe import Recipe
from ..sources import TensorSource, open_source
from .execute import collect_context, method_kwargs
from .plan import Plan, TensorTask, build_plan


class CachedOpener:
    """Opens each reference once; later plans reuse the same sources (headers are not re-read)."""

    def __init__(self, opener: Callable[[str], TensorSource] = open_source):
        self.opener = opener
        self.sources: dict[str, TensorSource] = {}

    def __call__(self, ref: str) -> TensorSource:
        if ref not in self.sources:
            self.sources[ref] = self.opener(ref)
        return self.sources[ref]


def _signature(plan: Plan, task: TensorTask, seed) -> str:
    refs = [(plan.sources[i].ref, k) for i, k in task.inputs]
    base = (plan.sources[task.base[0]].ref, task.base[1]) if task.base else None
    return json.dumps([plan.spec.name, task.op, refs, base, task.params, seed if plan.spec.random else None,
                       str(task.out_dtype)], sort_keys=True, default=str)


class LiveMerger:
    def __init__(self, recipe: Recipe, device: str = "auto", opener: Callable[[str], TensorSource] = open_source,
                 seed: int | None = None, out_dtype: torch.dtype = torch.float32):
        self.device = resolve_device(device)
        self.opener = opener if isinstance(opener, CachedOpener) else CachedOpener(opener)
        self.out_dtype = out_dtype
        self._resident: dict[tuple[str, str], torch.Tensor] = {}
        self.state: dict[str, torch.Tensor] = {}
        self._sigs: dict[str, str] = {}
        self.plan: Plan | None = None
        self.last_changed: list[str] = []
        self.last_seconds = 0.0
        self.update(recipe, seed=seed)

    def _tensor(self, plan: Plan, inp) -> torch.Tensor:
        idx, key = inp
        ref = plan.sources[idx].ref
        t = self._resident.get((ref, key))
        if t is None:
            t = plan.sources[idx].get(key).to(device=self.device, dtype=torch.float32, copy=True)
            self._resident[(ref, key)] = t
        return t

    def update(self, recipe: Recipe, seed: int | None = None) -> list[str]:
        """Re-merge what changed; returns the output keys that were recomputed."""
        t0 = time.perf_counter()
        seed = recipe.seed if seed is None else seed
        plan = build_plan(recipe, self.opener)
        context = collect_context(plan, self.device) if plan.spec.global_stats else None
        changed = []
        for task in plan.tasks:
            sig = _signature(plan, task, seed)
            if plan.spec.global_stats:
                sig += str(id(context))  # whole-model statistics: any change may move every tensor
            if self._sigs.get(task.out_key) == sig:
                continue
            if task.op == "copy":
                out = plan.sources[task.inputs[0][0]].get(task.inputs[0][1])
                out = out.to(self.device, dtype=self.out_dtype if out.dtype.is_floating_point else out.dtype,
                             copy=True)
            else:
                fresh = (lambda t: t) if plan.spec.pure_inputs else (lambda t: t.clone())
                base = fresh(self._tensor(plan, task.base)) if task.base is not None else None
                models = [fresh(self._tensor(plan, i)) for i in task.inputs]
                kw = method_kwargs(plan, task, self.device, seed, context)
                if plan.spec.casts_output:
                    kw["out_dtype"] = self.out_dtype  # the live state's dtype, not the recipe's output dtype
                prev = self.state.get(task.out_key)
                if (plan.spec.accepts_out and prev is not None and prev.dtype == torch.float32
                        and prev.shape == task.info.shape and self.out_dtype == torch.float32):
                    kw["out"] = prev  # re-merge in place: modules loaded earlier are refreshed by load_into
                with torch.no_grad():
                    out = plan.spec.fn(base, models, **kw)
                out = out.to(self.out_dtype)
            self.state[task.out_key] = out
            self._sigs[task.out_key] = sig
            changed.append(task.out_key)
        for gone in set(self.state) - {t.out_key for t in plan.tasks}:
            del self.state[gone], self._sigs[gone]
        self.plan = plan
        self.last_changed = changed
        self.last_seconds = time.perf_counter() - t0
        return changed

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_into(self, module: torch.nn.Module, keys: list[str] | None = None, strict: bool = False) -> None:
        """Copy merged tensors into ``module`` in place (all of them, or only ``keys``)."""
        params = dict(module.named_parameters())
        params.update(dict(module.named_buffers()))
        with torch.no_grad():
            for k in (self.state if keys is None else keys):
                p = params.get(k)
                if p is None:
                    if strict:
                        raise KeyError(k)
                    continue
                p.copy_(self.state[k])
