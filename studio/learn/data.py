"""Unlabeled data per task, from a ``--data`` spec.

A spec is one of:

* ``zoo`` or ``zoo:<family>`` — the demo zoo's ``unlabeled`` split of each expert's task (never its labels),
  resolved by ``studio.zoo.unlabeled_data`` through ``DATA_RESOLVERS``;
* one folder with a subfolder per task (named like the tasks, or — when the names differ — in sorted order matching
  the experts), each holding images (vision) or ``.txt`` files (text);
* one entry per expert, in the experts' order: a folder of images, a ``.txt`` file, or a ``.pt``/``.safetensors``
  file holding a ready tensor (zoo images ``[N, 1, H, W]`` in [0, 1], CLIP ``pixel_values`` ``[N, 3, H, W]``, or
  token ids ``[N, L]``);
* (library) a mapping ``{task: tensor | list of image paths | text}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from ..errors import StudioError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Each resolver takes (a spec string, the adapter) and returns ``{task: unlabeled items}`` (anything the adapter's
# ``load_data`` accepts) for the specs it recognises, else None; tried before a spec is read as a path. studio.zoo
# appends the resolver of ``zoo`` / ``zoo:<family>``.
DATA_RESOLVERS: list[Callable[[str, Any], dict | None]] = []


def registered_items(spec: str, adapter) -> dict | None:
    """``{task: items}`` from the first of ``DATA_RESOLVERS`` that recognises ``spec``, else None."""
    for resolve in DATA_RESOLVERS:
        items = resolve(spec, adapter)
        if items is not None:
            return items
    return None


def _load_entry(adapter, task: str, path: Path, max_items: int | None = None):
    """One task's inputs from a folder or file; at most ``max_items`` image files are decoded (in sorted order)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES][:max_items]
        texts = [p for p in files if p.suffix.lower() == ".txt"]
        if adapter.modality == "image":
            if not images:
                raise StudioError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) for task {task!r}", where=str(path))
            return adapter.load_data(task, images)
        if not texts:
            raise StudioError(f"no .txt files for task {task!r}", where=str(path))
        return adapter.load_data(task, "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in texts))
    if not path.exists():
        raise StudioError("no such file or folder", where=str(path))
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return adapter.load_data(task, path.read_text(encoding="utf-8", errors="replace"))
    if suffix in (".pt", ".pth"):
        t = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor):
            raise StudioError("a .pt data file must hold one tensor", where=str(path))
        return adapter.load_data(task, t)
    if suffix == ".safetensors":
        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise StudioError("a .safetensors data file must hold exactly one tensor", where=str(path))
        return adapter.load_data(task, next(iter(tensors.values())))
    if suffix in IMAGE_SUFFIXES:
        return adapter.load_data(task, [path])
    raise StudioError(f"unsupported data file type {suffix!r}", where=str(path),
                      hint="use a folder of images, a .txt file, or a .pt tensor")


def resolve_data(spec, adapter, max_items: int | None = None) -> dict[str, torch.Tensor]:
    """``{task: inputs}`` for every task of ``adapter`` (see the module docstring for the spec forms)."""
    tasks = adapter.tasks
    out: dict[str, torch.Tensor] = {}
    if spec is None:
        spec = "zoo"
    if isinstance(spec, (list, tuple)) and len(spec) == 1:
        spec = spec[0]
    if isinstance(spec, dict):
        missing = [t for t in tasks if t not in spec]
        if missing:
            raise StudioError(f"no data for task {missing[0]!r}", hint=f"data was given for {sorted(spec)}")
        for t in tasks:
            v = spec[t]
            out[t] = _load_entry(adapter, t, Path(v), max_items) if isinstance(v, (str, Path)) and Path(v).exists() \
                else adapter.load_data(t, v)
    elif isinstance(spec, str) and (items := registered_items(spec, adapter)) is not None:
        for t in tasks:
            out[t] = adapter.load_data(t, items[t])
    elif isinstance(spec, (str, Path)):
        root = Path(spec)
        if not root.is_dir():
            if len(tasks) == 1:
                out[tasks[0]] = _load_entry(adapter, tasks[0], root, max_items)
            else:
                raise StudioError("one data path for several experts must be a folder with a subfolder per task",
                                  where=str(root), hint="or give one path per expert: --data a.txt b.txt")
        else:
            subs = sorted(p for p in root.iterdir() if p.is_dir() or p.suffix.lower() in {".txt", ".pt"})
            by_name = {p.stem if p.is_file() else p.name: p for p in subs}
            if all(t in by_name for t in tasks):
                chosen = [by_name[t] for t in tasks]
            elif len(subs) == len(tasks):
                chosen = subs
            else:
                raise StudioError(f"{len(subs)} task entries for {len(tasks)} experts", where=str(root),
                                  hint=f"name the subfolders after the tasks: {', '.join(tasks)}")
            for t, p in zip(tasks, chosen):
                out[t] = _load_entry(adapter, t, p, max_items)
    elif isinstance(spec, (list, tuple)):
        if len(spec) != len(tasks):
            raise StudioError(f"{len(spec)} data entries for {len(tasks)} experts",
                              hint="give one entry per expert, in the experts' order")
        for t, p in zip(tasks, spec):
            out[t] = _load_entry(adapter, t, Path(p), max_items)
    else:
        raise StudioError(f"unsupported data spec {spec!r}")
    for t in tasks:
        if len(out[t]) == 0:
            raise StudioError(f"no unlabeled examples for task {t!r}")
        if max_items is not None:
            out[t] = out[t][:max_items]
    return out
