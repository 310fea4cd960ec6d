"""Executing a plan: read → float32 on the device → method → cast once → hand to a sink, in plan order.

Reading and computing run in a small thread pool (torch and file reads release the GIL), bounded so that only a few
tensors are in flight; results are consumed in plan order so a streaming writer can append them sequentially.

Every floating input a merge task reads is checked for NaN/Inf as it arrives on the device (``allow_nonfinite`` lets
them through): a merge spreads a NaN into every value it touches, so one damaged tensor would silently spoil its
output. Copied tensors are not checked: they reach the output as they are (a buffer may hold -inf on purpose).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from ..errors import StudioError
from .plan import Plan, TensorTask


def refuse_nonfinite(t: torch.Tensor, plan: Plan, inp) -> None:
    """StudioError naming the model and tensor when the floating tensor ``t`` (input ``inp`` of ``plan``) holds NaN
    or ±Inf. One ``aminmax`` pass decides (NaN propagates to both ends; ±Inf is an end itself): no allocation, ~5 ms
    per 16M float32 values on one CPU thread, where ``isfinite(t).all()`` took ~120 ms. Only a failing tensor is
    counted."""
    if not t.dtype.is_floating_point or t.numel() == 0:
        return
    try:
        ends = torch.stack(torch.aminmax(t))
    except RuntimeError:  # float8 has no aminmax kernel on the CPU
        ends = torch.stack(torch.aminmax(t.float()))
    if bool(torch.isfinite(ends).all()):
        return
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    raise StudioError(f"tensor {inp[1]!r} has {nan} NaN / {inf} Inf values", where=f"model {plan.sources[inp[0]].ref}",
                      hint="fix the checkpoint, or pass --allow-nonfinite (allow_nonfinite=True) to merge anyway")


def load_input(plan: Plan, inp, device) -> torch.Tensor:
    """Input ``inp`` = (source index, key) of the plan as a float32 tensor on ``device`` that the caller owns."""
    idx, key = inp
    src = plan.sources[idx]
    # copy=True: the method owns its inputs (it may work in place) and never sees a view of a mapped file
    out = src.get(key).to(device=device, dtype=torch.float32, copy=True)
    src.release(key)
    return out


def _view(plan: Plan, inp, device) -> torch.Tensor:
    """The stored tensor as it is (possibly a read-only view of a mapped file), for methods that upcast inside."""
    idx, key = inp
    return plan.sources[idx].get(key)


def _shares_input(out: torch.Tensor, base, models) -> bool:
    ptr = out.untyped_storage().data_ptr()
    return any(t is not None and t.untyped_storage().data_ptr() == ptr for t in [base, *models])


def method_kwargs(plan: Plan, task: TensorTask, device, seed: int | None, context) -> dict:
    """The keyword arguments of the plan's method for one task: its resolved parameters, plus the per-tensor
    generator (random methods), the whole-model context (global statistics) and the output dtype (methods that cast)."""
    kw = {p.py_name: task.params[p.name] for p in plan.spec.params}
    if plan.spec.random:
        g = torch.Generator(device=device)
        g.manual_seed(((seed if seed is not None else 0) * 1_000_003 + task.seed_key) % (2 ** 63))
        kw["generator"] = g
    if plan.spec.global_stats:
        kw["context"] = context
    if plan.spec.casts_output and device.type == "cpu":
        kw["out_dtype"] = task.out_dtype or task.info.dtype
    return kw


def compute_task(plan: Plan, task: TensorTask, device: torch.device, seed: int | None = None,
                 context=None, fetch: Callable | None = None, out: torch.Tensor | None = None,
                 allow_nonfinite: bool = False) -> torch.Tensor:
    """The output tensor of one task, on ``device``, in its output dtype.

    ``fetch(inp)``: where an input's stored tensor comes from (default: its source; the live engine passes its
    device-resident copies). ``out``: a float32 tensor of the result's shape that a method declared
    ``accepts_out`` overwrites instead of allocating (the live engine's merged state). ``allow_nonfinite``: merge
    inputs holding NaN/Inf instead of refusing them (:func:`refuse_nonfinite`)."""
    if fetch is None:
        fetch = lambda inp: _view(plan, inp, device)  # noqa: E731
    if task.op == "copy":
        t = fetch(task.inputs[0])
        if task.out_dtype is not None and t.dtype.is_floating_point:
            t = t.to(task.out_dtype)
        return t.to(device)
    stored = plan.spec.stored_dtype_inputs and device.type == "cpu"
    if stored:
        load = fetch
    else:  # the method owns its inputs (it may work in place) and never sees a view of a mapped file
        load = lambda inp: fetch(inp).to(device=device, dtype=torch.float32, copy=True)  # noqa: E731
    if not allow_nonfinite:
        load = _checked(load, plan)
    base = load(task.base) if task.base is not None else None
    models = [load(i) for i in task.inputs]
    kw = method_kwargs(plan, task, device, seed, context)
    if out is not None and not task.expert_params:
        kw["out"] = out
        kw.pop("out_dtype", None)
    try:
        if task.expert_params:
            result = by_expert(plan, task, base, models, kw)
            out = out.copy_(result) if out is not None else result
        else:
            out = plan.spec.fn(base, models, **kw)
    except StudioError:
        raise
    except (RuntimeError, ValueError) as e:
        raise StudioError(f"{plan.spec.name} failed: {e}", where=task.out_key) from None
    if stored:
        out = out.clone() if _shares_input(out, base, models) else out
    for idx, key in task.inputs + ([task.base] if task.base is not None else []):
        plan.sources[idx].release(key)
    if tuple(out.shape) != tuple(task.info.shape):
        raise StudioError(f"{plan.spec.name} returned shape {list(out.shape)}, expected {list(task.info.shape)}",
                          where=task.out_key)
    return out.to(task.out_dtype or task.info.dtype)


def by_expert(plan: Plan, task: TensorTask, base, models, kw: dict) -> torch.Tensor:
    """A fused MoE experts tensor merged slice by slice along dim 0, each expert with its own parameters."""
    parts = []
    for e, params in enumerate(task.expert_params):
        one = {**kw, **{p.py_name: params[p.name] for p in plan.spec.params}}  # as method_kwargs, per expert
        parts.append(plan.spec.fn(base[e] if base is not None else None, [m[e] for m in models], **one))
    return torch.stack(parts)


def _checked(load: Callable, plan: Plan) -> Callable:
    def load_finite(inp):
        t = load(inp)
        refuse_nonfinite(t, plan, inp)
        return t

    return load_finite


def collect_context(plan: Plan, device, progress: Callable | None = None):
    """Passes for methods needing whole-model statistics (e.g. global top-k): ``spec.rounds`` rounds of ``collect``
    over every merged tensor (from round 2 on with the previous round's combined context), one ``combine`` each."""
    spec = plan.spec
    if not spec.global_stats:
        return None
    context = None
    for r in range(max(1, spec.rounds)):
        partials = []
        for task in plan.tasks:
            if task.op != "merge":
                continue
            base = load_input(plan, task.base, device) if task.base is not None else None
            models = [load_input(plan, i, device) for i in task.inputs]
            kw = {p.py_name: task.params[p.name] for p in spec.params}
            if r > 0:
                kw["context"] = context
            partials.append(spec.collect(base, models, **kw))
            if progress:
                progress(task)
        context = spec.combine(partials)
    return context


def task_cost(task: TensorTask, stored: bool = False) -> int:
    """Rough working-set bytes of one task: float32 copies of its inputs plus the method's own buffers. With
    ``stored`` (stored-dtype inputs: mapped views, no copies) only the float32 result, its cast and a byte per input
    (e.g. DARE's kept masks)."""
    n = len(task.inputs) + (task.base is not None)
    if task.op != "merge":
        return task.info.nbytes
    return task.info.numel * (6 + n) if stored else task.info.numel * 4 * (2 * n + 2)


def run_tasks(plan: Plan, device: torch.device, seed: int | None = None, workers: int = 2,
              memory_budget: int = 1 << 30, progress: Callable | None = None, allow_nonfinite: bool = False
              ) -> Iterator[tuple[TensorTask, torch.Tensor]]:
    """Yield (task, output tensor on the CPU) in plan order.

    Tasks run ahead of the consumer while their summed working sets fit ``memory_budget`` (a task larger than the
    budget runs alone), so small layers overlap and a vocabulary-sized tensor never shares memory with another.
    """
    context = collect_context(plan, device)

    def job(task):
        out = compute_task(plan, task, device, seed, context, allow_nonfinite=allow_nonfinite)
        return out.to("cpu") if out.device.type != "cpu" else out

    if workers <= 1:
        for task in plan.tasks:
            yield task, job(task)
            if progress:
                progress(task)
        return
    # The workers are the parallelism: torch's intra-op threads on top of them oversubscribe the cores, and every op
    # then ends in a barrier that waits on a descheduled thread (several times slower on a busy machine, worst for
    # methods that work through cache-sized blocks). New threads (the pool's) take the process-wide setting.
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads // workers))
    try:
        stored = plan.spec.stored_dtype_inputs and device.type == "cpu"
        yield from _run_pool(plan, job, workers, memory_budget, progress, stored)
    finally:
        torch.set_num_threads(threads)


def _run_pool(plan: Plan, job: Callable, workers: int, memory_budget: int, progress: Callable | None,
              stored: bool):
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge") as pool:
        queue: deque = deque()
        tasks = list(plan.tasks)
        nxt = 0
        used = 0

        def fill():
            nonlocal nxt, used
            while nxt < len(tasks):
                cost = task_cost(tasks[nxt], stored)
                if queue and used + cost > memory_budget:
                    break
                queue.append((tasks[nxt], cost, pool.submit(job, tasks[nxt])))
                used += cost
                nxt += 1

        fill()
        try:
            while queue:
                task, cost, fut = queue.popleft()
                result = fut.result()
                used -= cost
                fill()
                yield task, result
                if progress:
                    progress(task)
        finally:  # stopped early (an error, Ctrl-C, SIGTERM): queued tasks never start, so the pool closes at once
            for _, _, fut in queue:
                fut.cancel()
