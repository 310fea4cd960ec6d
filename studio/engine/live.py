"""The live engine: re-merge only the tensors whose parameters changed, into memory a preview pipeline uses.

``LiveMerger(recipe)`` merges every output tensor once; ``update(recipe)`` rebuilds the plan from cached headers,
compares each output tensor's signature (method, inputs, resolved parameters, seed) with the last one, and recomputes
only those that differ — a slider on one block re-merges that block.

Memory is what makes this work at real sizes (an SDXL merge of three checkpoints would need ~31 GB if every input
were held in float32). Inputs stay where they are — memory-mapped files in their stored dtype — and each re-merged
tensor is computed from float32 temporaries (or straight from the stored dtype, for methods that upcast inside) and
written **in place** into the merged state. The merged state is in ``out_dtype`` (the preview pipeline's dtype), and
:meth:`LiveMerger.bind` lets a pipeline hand over its own parameters as that state, so the merge writes straight into
the modules a preview runs and no second copy of the model exists. On a GPU, inputs are kept resident in their
stored dtype while they fit ``memory_budget`` (each release then reads them from device memory, not over the bus).
On the CPU the changed tensors are re-merged by two workers, and memory freed while merging (a first merge's
temporaries) goes back to the system as it goes, so the process holds the model, not the model and a heap of holes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from .. import devices
from ..devices import resolve_device
from ..recipe import Recipe
from ..sources import TensorSource, open_source
from .execute import collect_context, compute_task
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


def _signature(plan: Plan, task: TensorTask, seed) -> tuple:
    """What an output tensor is computed from, as a plain tuple: compared for every tensor on every update, so it is
    built from the plan's own values without serialising them (json of ~1100 SD tasks took ~16 ms per slider)."""
    refs = tuple((source_key(plan.sources[i], k), k) for i, k in task.inputs)
    base = (source_key(plan.sources[task.base[0]], task.base[1]), task.base[1]) if task.base else None
    return (plan.spec.name, task.op, refs, base, _frozen(task.params), _frozen(task.expert_params),
            seed if plan.spec.random else None)


def source_key(src: TensorSource, key: str) -> tuple:
    """What gives the tensor ``key`` of ``src``: its reference, and for a vocabulary tensor (embeddings, head) the
    settings its rows are mapped by — a change of the recipe's tokenizer settings changes those rows under the same
    reference, and only those (the other models they depend on are in every signature already)."""
    vocab = getattr(src, "vocabulary", None)
    return src.ref, vocab.settings_key if vocab is not None and key in src.vocab_keys else None


def _frozen(value):
    """Lists and dicts (per-model values, nested settings) as tuples, so equal parameters compare equal."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def default_budget(device: torch.device) -> int:
    """Bytes of inputs kept resident on ``device``: on a GPU half of its free memory when the merger starts (the
    other half is the preview pipeline's); on the CPU nothing — mapped files are already in the page cache, and a
    copy would double their memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 0


class LiveMerger:
    """``state``: output key → merged tensor (``out_dtype`` for floating tensors) on ``device``.

    ``memory_budget``: bytes of inputs to keep resident on the device in their stored dtype (default
    :func:`default_budget`); ``resident_bytes`` says how much is. ``workers``: threads re-merging tensors side by
    side on the CPU (one intra-op thread each, as the streaming engine runs them). ``allow_nonfinite``: merge inputs
    holding NaN/Inf instead of refusing them (as the streaming engine).
    """

    def __init__(self, recipe: Recipe, device: str = "auto", opener: Callable[[str], TensorSource] = open_source,
                 seed: int | None = None, out_dtype: torch.dtype = torch.float32, memory_budget: int | None = None,
                 workers: int = 2, allow_nonfinite: bool = False):
        self.device = resolve_device(device)
        self.allow_nonfinite = allow_nonfinite
        self.workers = max(1, int(workers))
        self._lock = threading.Lock()  # the resident inputs' bookkeeping, shared by the workers
        self.opener = opener if isinstance(opener, CachedOpener) else CachedOpener(opener)
        self.out_dtype = out_dtype
        self.memory_budget = default_budget(self.device) if memory_budget is None else int(memory_budget)
        self.resident_bytes = 0
        self._resident: dict[tuple[tuple, str], torch.Tensor] = {}
        self.state: dict[str, torch.Tensor] = {}
        self._sigs: dict[str, tuple] = {}
        self._updates = 0
        self._unreturned = 0  # bytes allocated or freed by merging since freed memory was last returned
        self.memory_returns = 0  # how often freed memory went back to the system (the first merge: every 256 MiB)
        self.plan: Plan | None = None
        self.last_changed: list[str] = []
        self.last_seconds = 0.0
        self.update(recipe, seed=seed)

    # ------------------------------------------------------------------------------------------------ inputs
    def _fetch(self, plan: Plan, inp) -> torch.Tensor:
        """An input in its stored dtype: resident on the device when it fits the budget, else the source's own
        (a mapped file's pages)."""
        idx, key = inp
        src = plan.sources[idx]
        hit = self._resident.get((source_key(src, key), key))
        if hit is not None:
            return hit
        t = src.get(key)
        with self._lock:
            keep = self.resident_bytes + t.nbytes <= self.memory_budget
            if keep:
                self.resident_bytes += t.nbytes
        if keep:
            t = t.to(self.device, copy=True)
            self._resident[(source_key(src, key), key)] = t
        return t

    # ------------------------------------------------------------------------------------------------ merging
    def update(self, recipe: Recipe, seed: int | None = None) -> list[str]:
        """Re-merge what changed, in place; returns the output keys that were recomputed."""
        t0 = time.perf_counter()
        seed = recipe.seed if seed is None else seed
        plan = build_plan(recipe, self.opener)
        context = collect_context(plan, self.device) if plan.spec.global_stats else None
        self._updates += 1  # (not the context's id: a freed context's id may come back for the next one)
        todo = []
        for task in plan.tasks:
            sig = _signature(plan, task, seed)
            if plan.spec.global_stats:
                sig += (self._updates,)  # whole-model statistics: any change may move every tensor
            if self._sigs.get(task.out_key) != sig:
                todo.append((task, sig))
        fresh = any(task.out_key not in self.state for task, _ in todo)
        self._run(plan, todo, seed, context)
        changed = [task.out_key for task, _ in todo]
        for gone in set(self.state) - {t.out_key for t in plan.tasks}:
            del self.state[gone], self._sigs[gone]
        if fresh:  # workers finish in any order: keep the state in plan order (the checkpoint's), as callers see it
            ordered = [(t.out_key, self.state[t.out_key]) for t in plan.tasks]
            self.state.clear()
            self.state.update(ordered)
            self._return_freed_memory()
        self.plan = plan
        self.last_changed = changed
        self.last_seconds = time.perf_counter() - t0
        return changed

    def _run(self, plan: Plan, todo: list[tuple[TensorTask, tuple]], seed, context) -> None:
        """Compute and store each task, recording its signature once it is in the state (a task that fails keeps
        its old signature, so the next update retries it)."""

        def job(task, sig):
            self._store(task.out_key, self._compute(plan, task, seed, context))
            self._sigs[task.out_key] = sig
            if task.op == "copy":
                # the state owns its copy now; compute_task leaves a copy's input mapped (the streaming writer reads
                # the view), which kept an SD VAE's fp16 pages (~0.16 GiB) in RSS beside the pipeline for good
                idx, key = task.inputs[0]
                plan.sources[idx].release(key)

        if self.device.type != "cpu" or self.workers == 1 or len(todo) < 2:
            for task, sig in todo:
                job(task, sig)
            return
        # Like the streaming engine: the workers are the parallelism, each with one intra-op thread. torch's own
        # threads on a busy 2-core machine end every op in a barrier that waits for a descheduled thread (one
        # Llama-1B layer slider, interleaved in one process: ~160 ms with 2 intra-op threads, ~110 ms with
        # single-threaded workers), while two workers never wait on each other. New threads (the pool's) take the process-wide setting, which is
        # restored for the preview's own rendering afterwards. Largest tensors first: the workers end together.
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // self.workers))
        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="live") as pool:
                futures = [pool.submit(job, task, sig)
                           for task, sig in sorted(todo, key=lambda ts: -ts[0].info.numel)]
            for fut in futures:
                fut.result()  # the first failure, after every other task has finished or failed
        finally:
            torch.set_num_threads(threads)

    def _compute(self, plan: Plan, task: TensorTask, seed, context) -> torch.Tensor:
        floating = task.info.dtype.is_floating_point
        task = dataclasses.replace(task, out_dtype=self.out_dtype if floating else task.info.dtype)
        prev = self.state.get(task.out_key)
        if (task.op == "merge" and plan.spec.accepts_out and prev is not None and prev.dtype == torch.float32
                and self.out_dtype == torch.float32 and tuple(prev.shape) == tuple(task.info.shape)):
            # the method writes its result into the merged state itself: no result tensor, no copy
            return compute_task(plan, task, self.device, seed, context, fetch=lambda inp: self._fetch(plan, inp),
                                out=prev, allow_nonfinite=self.allow_nonfinite)
        return compute_task(plan, task, self.device, seed, context, fetch=lambda inp: self._fetch(plan, inp),
                            allow_nonfinite=self.allow_nonfinite)

    def _store(self, key: str, out: torch.Tensor) -> None:
        prev = self.state.get(key)
        if prev is out:
            return
        if prev is not None and prev.shape == out.shape and prev.dtype == out.dtype and prev.device == out.device:
            prev.copy_(out)  # in place: bound pipeline parameters (and anything viewing them) see the new value
        else:
            self.state[key] = out.to(self.device, copy=out.device == self.device and _is_mapped(out))
        if self.device.type == "cpu":
            # A result not written in place is new memory, and its temporaries (casts, method buffers) were freed
            # beside it; glibc keeps freed blocks under 32 MiB in the heap, which left an SDXL first merge ~1.5 GiB
            # above what it holds (16.9 → 15.4 GiB peak measured). Return them as the merge goes.
            with self._lock:
                self._unreturned += out.nbytes
                due = self._unreturned > devices.TRIM_EVERY
            if due:
                self._return_freed_memory()

    def _return_freed_memory(self) -> None:
        if self.device.type != "cpu":
            return
        with self._lock:
            self._unreturned = 0
            self.memory_returns += 1
        devices.return_freed_memory()

    def bind(self, targets: dict[str, torch.Tensor]) -> None:
        """Make each target tensor (a preview pipeline's parameter, same shape) the storage of that merged tensor: its
        current value is copied in, cast to the target's dtype, and every later re-merge writes into it in place."""
        with torch.no_grad():
            for key, target in targets.items():
                current = self.state[key]
                if tuple(target.shape) != tuple(current.shape):
                    raise ValueError(f"{key}: a target of shape {tuple(target.shape)} for a {tuple(current.shape)} "
                                     "tensor")
                target.copy_(current)
                self.state[key] = target

    def invalidate(self) -> None:
        """Forget what was merged: the next update recomputes every tensor (after someone overwrote bound state)."""
        self._sigs.clear()

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


def _is_mapped(t: torch.Tensor) -> bool:
    """A CPU tensor whose storage is not its own allocation (a mapped file's pages): the state must own its memory,
    because it is written in place."""
    return t.device.type == "cpu" and not t.untyped_storage().resizable()
