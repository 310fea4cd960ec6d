"""EMR-merging's side outputs: per-task masks and rescalers beside the unified model, and task materialisation.

The ``emr`` method writes the unified model θ₀ + τ_uni like any merge; this module adds ``emr/masks.safetensors``
(boolean Mᵢ for every merged tensor, keys ``task{i}.{tensor}``) and ``emr/emr.json`` (the task models and their
rescalers rᵢ) to an output folder — registered as a side-file hook of the streaming engine — and rebuilds task i's
model θ₀ + rᵢ·Mᵢ⊙τ_uni from them (``python -m studio emr TASK ...``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StudioError
from ..methods.entry_selection import emr_masks, emr_rescalers, emr_stats, emr_task_tensor
from ..output import (SIDE_FILES, AtomicTarget, ShardWriter, check_target, copy_side_files, plan_shards, recipe_path,
                      write_index, write_json)
from ..recipe import Recipe
from ..sources import open_source
from .execute import load_input
from .plan import Plan
from .stream import SIDE_FILE_HOOKS

ARTIFACT_DIR = "emr"


def write_emr_artifacts(plan: Plan, folder: Path, device) -> dict:
    tasks = [t for t in plan.tasks if t.op == "merge"]
    n = len(tasks[0].inputs) if tasks else 0
    entries = [(f"task{i}.{t.out_key}", tuple(t.info.shape), torch.bool) for t in tasks for i in range(n)]
    out = Path(folder) / ARTIFACT_DIR
    out.mkdir()
    writer = ShardWriter(out, plan_shards(entries, 1 << 62, single_name="masks.safetensors"), {"format": "pt"})
    stats = []
    for t in tasks:
        base = load_input(plan, t.base, device)
        models = [load_input(plan, i, device) for i in t.inputs]
        for i, m in enumerate(emr_masks(base, models)):
            writer.write(f"task{i}.{t.out_key}", m.to("cpu", torch.bool))
        stats.append(emr_stats(base, models).cpu())
    writer.close()
    info = {"base_model": plan.sources[tasks[0].base[0]].ref if tasks else None,
            "tasks": [plan.sources[i].ref for i, _ in tasks[0].inputs] if tasks else [],
            "rescalers": emr_rescalers(stats) if stats else []}
    write_json(out / "emr.json", info)
    return info


def write_emr_side_files(plan: Plan, folder: Path, device) -> None:
    """The side-file hook: an ``emr`` merge's output folder gets its masks and rescalers; other merges nothing."""
    if plan.spec.extra.get("artifacts") == "emr":
        write_emr_artifacts(plan, folder, device)


SIDE_FILE_HOOKS.append(write_emr_side_files)


def materialize_task(merged: str | Path, task: int | str, out: str | Path, overwrite: bool = False) -> Path:
    """Write task ``task``'s model (index or model reference) from an EMR output folder."""
    merged = Path(merged)
    meta_path = merged / ARTIFACT_DIR / "emr.json"
    if not meta_path.is_file():
        raise StudioError("not an EMR output (no emr/emr.json)", where=str(merged),
                          hint="merge with merge_method: emr first")
    info = json.loads(meta_path.read_text())
    names = info["tasks"]
    if isinstance(task, str) and not task.isdigit():
        if task not in names:
            raise StudioError(f"unknown task {task!r}", where=str(merged), hint=f"tasks: {', '.join(names)}")
        idx = names.index(task)
    else:
        idx = int(task)
        if not 0 <= idx < len(names):
            raise StudioError(f"task index {idx} out of range 0..{len(names) - 1}", where=str(merged))
    unified = open_source(str(merged))
    masks = open_source(str(merged / ARTIFACT_DIR / "masks.safetensors"))
    base = open_source(info["base_model"])
    out = Path(out)
    check_target(out, overwrite, [merged, Path(base.folder or base.path)])
    r = info["rescalers"][idx]
    keys = unified.keys()
    entries = [(k, unified.info(k).shape, unified.info(k).dtype) for k in keys]
    with AtomicTarget(out) as tmp:
        writer = ShardWriter(tmp, plan_shards(entries, 5 * 1024 ** 3, single_name="model.safetensors"),
                             {"format": "pt", "emr_task": names[idx]})
        for k in keys:
            u = unified.get(k)
            mk = f"task{idx}.{k}"
            if mk in masks:
                b = base.get(k).float()
                t = emr_task_tensor(b, u.float() - b, masks.get(mk), r).to(u.dtype)
            else:
                t = u
            writer.write(k, t)
        writer.close()
        if len(writer.shards) > 1:  # a task model over one shard needs its index to load
            write_index(tmp, writer)
        copy_side_files(merged, tmp, ["config.json", *SIDE_FILES])
        recipe_file = recipe_path(merged)
        write_json(tmp / "emr_task.json", {"task": names[idx], "rescaler": r,
                                           "recipe": Recipe.load(recipe_file).to_dict() if recipe_file.is_file()
                                           else None})
    return out
