"""The library entry point the CLI and the studio's Optimize panel call: ``run_learned(method, base, experts, data)``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..devices import parse_dtype, resolve_device
from ..errors import StudioError
from ..methods.registry import Param
from ..output import (atomic_files, is_single_file, learned_summary_json, learned_summary_path, save_tensors,
                      write_text)
from ..recipe import Recipe
from .adapters import TaskAdapter, make_adapter
from .coefficient_merge import coefficient_recipe, group_means, task_coordinates
from .data import resolve_data
from .registry import get_learner

# settings of a run rather than of a learner: what run_learned itself takes besides a learner's hyperparameters
# (the CLI's ``--set`` accepts them for every method)
RUN_OPTIONS = [
    Param("max_items", default=None, kind=int, range=(1, 100000),
          doc="at most this many unlabeled inputs per task (image files are decoded in sorted order up to it)"),
    Param("seq_len", default=64, kind=int, range=(2, 4096), doc="causal LMs: tokens per row the text is cut into"),
]


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

    def save(self, out, dtype: torch.dtype | str | None = None, *, label: str | None = None,
             base: str | None = None, experts: list[str] | None = None) -> list[str]:
        """Write the result; returns the names written.

        ``out`` ending in ``.safetensors``: the merged weights (floating tensors in ``dtype``, default float32) and
        ``<stem>.learned.json`` beside them (what was merged, metrics, loss history), both or neither; ``label``,
        ``base`` and ``experts`` say what was merged, in the JSON and in the weights' ``merge_studio_learned``
        metadata. Any other ``out`` is a folder: recipe.yml, merged.safetensors in ``dtype`` (with ``model_config``:
        config.json + model.safetensors, a transformers model folder), trajectory.json, each written through a
        temporary name so a failure never leaves a half-written file; other files in ``out`` are left alone."""
        out = Path(out)
        if is_single_file(out):
            return self._save_weights_file(out, dtype, {"method": label or self.method, "base": base,
                                                        "experts": list(experts or [])})
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if self.recipe is not None:
            write_text(out / "recipe.yml", self.recipe.to_yaml())
            written.append("recipe.yml")
        if self.state_dict is not None:
            sd = {k: v.detach().cpu() for k, v in self.state_dict.items()}
            if self.model_config is not None:
                write_text(out / "config.json", json.dumps(self.model_config, indent=2))
                written.append("config.json")
            name = "model.safetensors" if self.model_config is not None else "merged.safetensors"
            save_tensors(out / name, sd, {"format": "pt", "learned_method": self.method},
                         (parse_dtype(dtype) if isinstance(dtype, str) else dtype) or torch.float32)
            written.append(name)
        write_text(out / "trajectory.json", json.dumps(
            {"method": self.method, "tasks": self.tasks, "metrics": self.metrics, "history": self.history,
             "trajectory": self.trajectory, "group_weights": self.group_weights,
             "coefficients": self.coefficients}, default=float))
        written.append("trajectory.json")
        return written

    def _save_weights_file(self, out: Path, dtype: torch.dtype | str | None, inputs: dict) -> list[str]:
        if not self.state_dict:
            raise StudioError(f"{self.method} produced no merged weights to write", where=str(out),
                              hint="save to a folder instead: it holds the learned recipe and trajectory")
        dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
        sd = {k: v.detach().cpu() for k, v in self.state_dict.items()}
        meta = {"format": "pt", "learned_method": self.method,
                "merge_studio_learned": json.dumps(inputs, ensure_ascii=False)}
        summary = learned_summary_path(out)
        with atomic_files(out, summary) as (tmp_weights, tmp_summary):
            save_tensors(tmp_weights, sd, meta, dtype or torch.float32)
            tmp_summary.write_text(learned_summary_json(inputs, self.metrics, self.history), encoding="utf-8")
        return [out.name, summary.name]


def run_learned(method: str, base: str, experts: list[str], data=None, *, device: str = "cpu",
                steps: int | None = None, progress: Callable[[float, str], None] | None = None,
                tasks: list[str] | None = None, heads: dict[str, str] | None = None, seed: int = 0,
                adapter: TaskAdapter | None = None, max_items: int | None = None, seq_len: int | None = None,
                **hparams) -> LearnResult:
    """Run a learned merge.

    ``method``: a registered learner (``list_learners()``: adamerging | samerging | fda | fisher | regmean).
    ``base``/``experts``: model references (a CLIP model, transformers causal-LM folders, or any kind an adapter
    detector recognises, such as the zoo's vision backbones). ``data``: see ``studio.learn.data`` (default: ``zoo``).
    ``progress(fraction, message)`` is called as work advances. ``max_items``, ``seq_len``: see ``RUN_OPTIONS``.
    ``hparams``: the learner's declared hyperparameters (e.g. ``granularity="task"`` for task-wise AdaMerging,
    ``rho``, ``temperature``, ``init`` for FDA's pre-merge); an undeclared one is a StudioError naming them.
    """
    spec = get_learner(method)
    hp = spec.check(hparams)
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
                               seq_len=seq_len)
    tensors = resolve_data(data, adapter, max_items=max_items)
    out = spec(adapter, tensors, steps=steps, progress=progress, seed=seed, **hp)
    res = LearnResult(method=spec.name, tasks=list(adapter.tasks), history=out.get("history", []),
                      trajectory=out.get("trajectory", []), metrics=dict(out.get("metrics", {})),
                      model_config=adapter.export_config())
    tv = adapter.task_vectors()
    if spec.produces == "coefficients":
        merge = out["merge"]
        res.coefficients = merge.per_tensor()
        task_wise = merge.granularity == "task"
        if adapter.recipe_applies:
            res.recipe = coefficient_recipe(adapter.base_ref, adapter.expert_refs, adapter.tasks, res.coefficients,
                                            task_wise=task_wise,
                                            name=f"{spec.name} ({'task' if task_wise else 'layer'}-wise)")
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
