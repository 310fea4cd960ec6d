"""The library entry point the CLI and the studio's Optimize panel call: ``run_learned(method, base, experts, data)``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..devices import resolve_device
from ..errors import StudioError
from ..recipe import Recipe
from .adapters import TaskAdapter, make_adapter
from .coefficient_merge import coefficient_recipe, group_means, task_coordinates
from .data import resolve_data

METHODS: dict[str, str] = {
    "adamerging": "coefficients λ (layer-wise, or task-wise with granularity='task') minimising prediction entropy",
    "samerging": "layer-wise λ minimising KL(expert ‖ merged) at temperature T with adaptive SAM around Adam",
    "fda": "functional dual anchors per layer, then layer-wise adaptation from θ0 or from a pre-merge",
    "fisher": "diagonal-Fisher-weighted average of the experts",
    "regmean": "closed-form least squares on the Gram matrices of every linear layer's inputs",
}
COEFFICIENT_METHODS = ("adamerging", "samerging")


@dataclass
class LearnResult:
    """What a learned merge produced.

    ``recipe``: a ``task_arithmetic`` Recipe carrying the learned per-tensor coefficients (AdaMerging, SAMerging);
    None for methods that produce weights, and for CLIP (the base is a full CLIP model, the experts vision towers, so
    no one recipe spans them; the coefficients are in ``coefficients`` and trajectory.json). ``state_dict``: the
    merged weights (every method; for coefficient methods the same θ(λ) the recipe rebuilds). ``trajectory``:
    snapshots ``{"step", "loss", "lambda" | "coords"}``, where ``lambda`` is ``[model][tensor]`` and ``coords`` the
    least-squares task-vector coordinates of θ − θ0 (both in ``tasks`` order) — the landscape plot overlays them.
    ``history``: the loss at every step. ``metrics``: timings, objective before/after, settings. ``coefficients``:
    ``{task: {tensor: λ}}``; ``group_weights``: per task the mean λ per layout group (``L00``…, for the slider
    panel).
    """

    method: str
    tasks: list[str]
    recipe: Recipe | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    trajectory: list[dict] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    coefficients: dict[str, dict[str, float]] | None = None
    group_weights: dict[str, dict[str, float]] | None = None
    model_config: dict | None = None   # a transformers config making the weights a loadable model folder (CLIP)

    def save(self, out) -> list[str]:
        """Write the result into folder ``out``: recipe.yml, merged.safetensors (with ``model_config``: config.json +
        model.safetensors, a transformers model folder), trajectory.json. Each file is written to a temporary name
        and renamed, so a failure never leaves a half-written file; other files in ``out`` are left alone. Returns
        the names written."""
        import json

        from safetensors.torch import save_file

        from ..engine.output import AtomicTarget

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []

        def put(name: str, write) -> None:
            with AtomicTarget(out / name, is_file=True) as tmp:
                write(tmp)
            written.append(name)

        if self.recipe is not None:
            put("recipe.yml", lambda p: p.write_text(self.recipe.to_yaml(), encoding="utf-8"))
        if self.state_dict is not None:
            sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict.items()}
            if self.model_config is not None:
                put("config.json", lambda p: p.write_text(json.dumps(self.model_config, indent=2), encoding="utf-8"))
            put("model.safetensors" if self.model_config is not None else "merged.safetensors",
                lambda p: save_file(sd, str(p), metadata={"format": "pt", "learned_method": self.method}))
        put("trajectory.json", lambda p: p.write_text(json.dumps(
            {"method": self.method, "tasks": self.tasks, "metrics": self.metrics, "history": self.history,
             "trajectory": self.trajectory, "group_weights": self.group_weights,
             "coefficients": self.coefficients}, default=float), encoding="utf-8"))
        return written


def _learn(method: str, adapter: TaskAdapter, data, steps, progress, hp: dict):
    if method == "adamerging":
        from .coefficient_learners import adamerging
        return adamerging(adapter, data, steps=steps, progress=progress, **hp)
    if method == "samerging":
        from .coefficient_learners import samerging
        return samerging(adapter, data, steps=steps, progress=progress, **hp)
    if method == "fda":
        from .fda import fda
        return fda(adapter, data, steps=steps, progress=progress, **hp)
    if method == "fisher":
        from .closed_form import fisher_merge
        return fisher_merge(adapter, data, progress=progress, **hp)
    if method == "regmean":
        from .closed_form import regmean_merge
        return regmean_merge(adapter, data, progress=progress, **hp)
    raise StudioError(f"unknown learned method {method!r}", hint=f"choose one of {', '.join(METHODS)}")


def run_learned(method: str, base: str, experts: list[str], data=None, *, device: str = "cpu",
                steps: int | None = None, progress: Callable[[float, str], None] | None = None,
                tasks: list[str] | None = None, heads: dict[str, str] | None = None, seed: int = 0,
                adapter: TaskAdapter | None = None, **hparams) -> LearnResult:
    """Run a learned merge.

    ``method``: adamerging | samerging | fda | fisher | regmean. ``base``/``experts``: model references (a zoo-style
    vision backbone .safetensors, or transformers causal-LM folders). ``data``: see ``studio.learn.data`` (default:
    the zoo's unlabeled splits). ``progress(fraction, message)`` is called as work advances. ``hparams`` go to the
    method (e.g. ``granularity="task"`` for task-wise AdaMerging, ``rho``, ``temperature``, ``init`` for FDA's
    pre-merge: ``"base" | "task_arithmetic" | "tsv_m" | "wudi"``).
    """
    method = method.lower().replace("-", "_")
    if method not in METHODS:
        raise StudioError(f"unknown learned method {method!r}", hint=f"choose one of {', '.join(METHODS)}")
    if steps is not None and steps < 1:
        raise StudioError("steps must be at least 1")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if progress:
        progress(0.0, "loading models")
    if adapter is None:
        root = data[0] if isinstance(data, (list, tuple)) and len(data) == 1 else data
        root = str(root) if isinstance(root, (str, Path)) and Path(root).is_dir() else None
        adapter = make_adapter(base, list(experts), device=dev, tasks=tasks, heads=heads, data_root=root,
                               **({"seq_len": hparams.pop("seq_len")} if "seq_len" in hparams else {}))
    max_items = hparams.pop("max_items", None)
    tensors = resolve_data(data, adapter, max_items=max_items)
    out = _learn(method, adapter, tensors, steps, progress, dict(hparams, seed=seed))
    res = LearnResult(method=method, tasks=list(adapter.tasks), history=out.get("history", []),
                      trajectory=out.get("trajectory", []), metrics=dict(out.get("metrics", {})),
                      model_config=adapter.export_config())
    tv = adapter.task_vectors()
    if "merge" in out:
        merge = out["merge"]
        res.coefficients = merge.per_tensor()
        task_wise = merge.granularity == "task"
        if adapter.recipe_applies:
            res.recipe = coefficient_recipe(adapter.base_ref, adapter.expert_refs, adapter.tasks, res.coefficients,
                                            task_wise=task_wise,
                                            name=f"{method} ({'task' if task_wise else 'layer'}-wise)")
        res.state_dict = {k: v.detach() for k, v in adapter.full_params(merge.merged_state()).items()}
        try:
            res.group_weights = group_means(res.coefficients, adapter.base_ref)
        except Exception:  # noqa: BLE001 - a slider summary must never fail a finished optimisation
            res.group_weights = None
    else:
        res.state_dict = {k: v.detach() for k, v in adapter.full_params(out["state_dict"]).items()}
        res.trajectory = [dict(s) for s in res.trajectory]
        for snap in res.trajectory:
            if "state" in snap:
                snap["coords"] = task_coordinates(adapter.base, tv, snap.pop("state"), adapter.keys)
        res.trajectory.append({"step": res.metrics.get("steps", 0), "loss": res.metrics.get("objective_end"),
                               "coords": task_coordinates(adapter.base, tv, res.state_dict, adapter.keys)})
    res.metrics["seconds_total"] = time.perf_counter() - t0
    res.metrics["device"] = str(dev)
    if progress:
        progress(1.0, "done")
    return res
