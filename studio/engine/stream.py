"""The streaming engine: disk → device → disk, tensor by tensor."""

from __future__ import annotations

import json
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..devices import dtype_name, parse_dtype, resolve_device
from ..output import (AtomicTarget, ShardWriter, atomic_files, check_target, copy_non_weight_files, copy_side_files,
                      is_single_file, library_name, model_card, plan_shards, recipe_path, source_paths,
                      write_chat_template, write_index, write_json, write_text)
from ..layout.modules import LAYER_COUNT_FIELDS
from ..output.forms import Assembler, OutputEntry, OutputForm, identity_form, in_write_order
from ..recipe import Recipe
from ..recipe.chat_templates import resolve_chat_template
from ..recipe.files import RECIPE_KEY
from ..sources import TensorSource, open_source
from ..sources.resolve import split_reference
from .execute import run_tasks
from .plan import Plan, build_plan
from .vocab import vocabulary_of, with_vocab_size

DEFAULT_SHARD_BYTES = 5 * 1024 ** 3

# What a method or model family adds to an output registers itself here, like layout.DETECTORS (studio/__init__.py
# imports the built-in ones). A metadata hook ``hook(plan) -> dict[str, str]`` adds keys to a single-file output's
# safetensors metadata ({} when the plan is not its family's); a side-file hook ``hook(plan, folder, device)`` writes
# its files into an output folder before the folder is renamed into place.
METADATA_HOOKS: list[Callable[[Plan], dict[str, str]]] = []
SIDE_FILE_HOOKS: list[Callable[[Plan, Path, torch.device], None]] = []
# An output-form hook ``hook(plan, single_file) -> OutputForm | None`` names and shapes what a single file
# (``single_file``) or a folder written from the plan holds, when that differs from the plan's own outputs (SD: ldm
# names in single files, a diffusers pipeline in folders); None leaves the plan's outputs as they are.
OUTPUT_FORMS: list[Callable[[Plan, bool], OutputForm | None]] = []


def _progress_bar(plan: Plan, enabled: bool, callback: Callable[[float], None] | None = None):
    if callback is not None:  # e.g. a UI progress bar: called with the fraction of output bytes written
        total, done = max(1, plan.output_bytes()), [0]

        def report(task):
            done[0] += task.info.numel * (task.out_dtype or task.info.dtype).itemsize
            callback(min(1.0, done[0] / total))

        return None, report
    if not enabled:
        return None, None
    # disable=None: a bar only on a terminal, where leave=False wipes it; in a log or a pipe its carriage-return
    # frames would stand before an error as lines of their own
    bar = tqdm(total=plan.output_bytes(), unit="B", unit_scale=True, unit_divisor=1024, desc="merging", leave=False,
               disable=None)

    def step(task):
        bar.update(task.info.numel * (task.out_dtype or task.info.dtype).itemsize)

    return bar, step


def _metadata(plan: Plan, single_file: bool) -> dict[str, str]:
    meta = {"format": "pt", "merge_studio_version": __version__,
            RECIPE_KEY: json.dumps(plan.recipe.to_dict(), ensure_ascii=False)}
    if single_file:  # a single file is what A1111-style tools load: it carries their family's keys
        for hook in METADATA_HOOKS:
            meta.update(hook(plan))
    return meta


def check_merge_target(plan: Plan, out: Path, overwrite: bool) -> None:
    """Refuse what ``merge_to_disk`` would refuse, before anything is computed (``--dry-run`` checks it too): a
    non-empty target without ``overwrite`` — for a single file, its ``.recipe.yml`` as well — or one in an input:
    any file or folder the merge reads (a LoRA applied to a base, the VAE, a local ``tokenizer_source``)."""
    inputs = source_paths(plan.sources)
    vocab = vocabulary_of(plan.sources)
    tokenizer_source = vocab.settings.source if vocab is not None else None  # tokenizer_source or tokenizer.source
    if tokenizer_source not in (None, "base", "union"):
        inputs += [p.expanduser() for p in map(Path, split_reference(tokenizer_source)) if p.expanduser().exists()]
    check_target(out, overwrite, inputs)
    if is_single_file(out):
        check_target(recipe_path(out), overwrite, inputs)


def _stem(part: TensorSource) -> str:
    """The weight-file stem of a diffusers component (``model`` for transformers text encoders)."""
    stem = Path(getattr(part, "files", [part])[0].path).name.split(".")[0].split("-0")[0]
    return stem if stem in ("model", "diffusion_pytorch_model") else "diffusion_pytorch_model"


def output_form(plan: Plan, single_file: bool) -> OutputForm:
    """What a single file (``single_file``) or a folder written from ``plan`` holds: the first OUTPUT_FORMS hook's
    form, else the plan's outputs as they are (a diffusers pipeline's folder split into its components)."""
    for hook in OUTPUT_FORMS:
        form = hook(plan, single_file)
        if form is not None:
            return form
    ref = plan.reference
    if not single_file and ref.kind == "diffusers-component":
        # one component's folder (a bare transformer / UNet): its weights keep the stem its loader looks for
        return identity_form(plan.outputs(), stems={"": _stem(ref)})
    if single_file or ref.kind != "diffusers":
        return identity_form(plan.outputs())
    return identity_form(plan.outputs(), components=True, stems={c: _stem(p) for c, p in ref.parts.items()})


def planned_output(plan: Plan, out: Path) -> OutputForm:
    """The form the target ``out`` takes (:func:`output_form`); what has no place in it is named in the plan's
    warnings (``--dry-run`` reports them too)."""
    form = output_form(plan, is_single_file(out))
    if form.left_out:
        plan.warnings.append(f"{len(form.left_out)} tensor(s) have no place in this output and are left out "
                             f"(e.g. {form.left_out[0]})")
    return form


def _entries(entries: list[OutputEntry], strip: str = ""):
    return [(e.name[len(strip):], tuple(e.info.shape), e.info.dtype) for e in entries]


def _writers(entries: list[OutputEntry], form: OutputForm, tmp: Path, meta: dict, shard_bytes: int,
             single_file: Path | None) -> dict[str, tuple[ShardWriter, str]]:
    """Entry-name prefix → (its writer, the prefix stripped from names in its files)."""
    if single_file is not None:
        shards = plan_shards(_entries(entries), 1 << 62, single_name=single_file.name)
        return {"": (ShardWriter(single_file.parent, shards, meta), "")}
    if not form.components:
        # one shard is named model.safetensors (what loaders look for without an index; a diffusers component's
        # diffusion_pytorch_model.safetensors); more get an index
        stem = form.stems.get("", "model")
        return {"": (ShardWriter(tmp, plan_shards(_entries(entries), shard_bytes, prefix=stem,
                                                  single_name=f"{stem}.safetensors"), meta), "")}
    groups: dict[str, list[OutputEntry]] = {}
    for e in entries:
        groups.setdefault(e.name.partition(".")[0], []).append(e)
    writers = {}
    for comp, items in groups.items():
        stem = form.stems.get(comp, "diffusion_pytorch_model")
        (tmp / comp).mkdir(exist_ok=True)
        shards = plan_shards(_entries(items, comp + "."), shard_bytes, prefix=stem, single_name=f"{stem}.safetensors")
        writers[comp + "."] = (ShardWriter(tmp / comp, shards, meta), comp + ".")
    return writers


def _write_weights(plan: Plan, form: OutputForm, tmp: Path, device, seed, progress, shard_bytes: int,
                   single_file: Path | None, progress_callback: Callable[[float], None] | None = None,
                   allow_nonfinite: bool = False):
    """Stream every task's output, as ``form`` names and shapes it, into safetensors files under ``tmp``; returns
    nothing, raises on failure."""
    entries = in_write_order(form.entries, [t.out_key for t in plan.tasks])
    writers = _writers(entries, form, tmp, _metadata(plan, single_file is not None), shard_bytes, single_file)
    assembler = Assembler(entries)

    def writer_for(name):
        if "" in writers:
            return writers[""]
        return writers[name.partition(".")[0] + "."]

    def write(task, tensor):
        for entry, t in assembler.feed(task.out_key, tensor):
            w, strip = writer_for(entry.name)
            w.write(entry.name[len(strip):], t)
        if task.op == "copy":
            plan.sources[task.inputs[0][0]].release(task.inputs[0][1])
        if step:
            step(task)

    bar, step = _progress_bar(plan, progress, progress_callback)
    # Writing overlaps computing: one writer thread keeps plan order; at most two results wait for it.
    pending: deque = deque()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer_pool:
            for task, tensor in run_tasks(plan, device, seed, allow_nonfinite=allow_nonfinite):
                pending.append(writer_pool.submit(write, task, tensor))
                while len(pending) > 2:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    finally:
        if bar is not None:
            bar.close()
    for prefix, (w, _) in writers.items():
        w.close()
        if single_file is None and len(w.shards) > 1:
            stem = w.shards[0].filename.split("-0")[0]
            write_index(w.folder, w, f"{stem}.safetensors.index.json",
                        {"merge_studio_version": __version__})


def write_side_files(plan: Plan, form: OutputForm, tmp: Path) -> None:
    """What makes an output folder a model besides its weights: configs (layer counts, dtype and vocab size as the
    merge changed them), the tokenizer (built for the recipe's vocabulary settings, or the reference's), the chat
    template; a pipeline's component files."""
    recipe, ref = plan.recipe, plan.reference
    if form.side_files is not None:
        form.side_files(tmp)
        return
    if ref.kind == "diffusers":
        for item in Path(ref.path).iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
            elif item.is_dir():
                copy_non_weight_files(item, tmp / item.name)
        return
    vocab = vocabulary_of(plan.sources)
    if ref.config is not None and ref.kind in ("transformers", "diffusers-component"):
        # the size of the vocabulary built for the recipe (a module's merge reaches here with the whole reference)
        config = dict(ref.config) if vocab is None else with_vocab_size(ref.config, vocab.size)
        if plan.num_layers is not None:
            for field in LAYER_COUNT_FIELDS["default"]:
                if field in config:
                    config[field] = plan.num_layers
        for path, value in plan.config_updates.items():  # e.g. text_config.num_hidden_layers of a sliced module
            *outer, last = path.split(".")
            node = config
            for part in outer:
                node[part] = dict(node[part])
                node = node[part]
            node[last] = value
        out_dtype = parse_dtype(recipe.out_dtype) or parse_dtype(recipe.dtype)
        if out_dtype is not None:
            key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
            config[key] = dtype_name(out_dtype)
        write_json(tmp / "config.json", config)
    if vocab is None:
        copy_side_files(ref.folder, tmp)
    else:  # the tokenizer built for the recipe's vocabulary settings (config.json's vocab_size is its size already)
        vocab.tokenizer.save_pretrained(str(tmp))
        copy_side_files(ref.folder, tmp, ["generation_config.json"])
    if recipe.chat_template is not None:  # auto: the template most inputs carry; a name; or the template itself
        template = resolve_chat_template(recipe.chat_template, [getattr(s, "folder", None) for s in plan.sources])
        if template is not None:
            write_chat_template(tmp, template)


def merge_to_disk(recipe: Recipe, out: str | Path, *, device: str = "auto", seed: int | None = None,
                  overwrite: bool = False, progress: bool = True, shard_bytes: int = DEFAULT_SHARD_BYTES,
                  opener: Callable[[str], TensorSource] = open_source,
                  progress_callback: Callable[[float], None] | None = None, allow_nonfinite: bool = False) -> dict:
    """Run a recipe to an output folder, or to a single ``.safetensors`` file with ``<stem>.recipe.yml`` beside it.
    Either way everything appears at once or not at all; an existing target (either file) needs ``overwrite``.
    Returns the plan summary.

    ``progress_callback(fraction)`` (optional) is called as output tensors are written, e.g. by a UI progress bar.
    An input tensor holding NaN/Inf stops the merge (nothing is written) unless ``allow_nonfinite``.
    """
    out = Path(out)
    seed = recipe.seed if seed is None else seed
    plan = build_plan(recipe, opener)
    check_merge_target(plan, out, overwrite)
    dev = resolve_device(device)
    recipe_yaml = recipe.to_yaml() if seed is None or recipe.seed == seed else _with_seed(recipe, seed).to_yaml()
    form = planned_output(plan, out)
    if is_single_file(out):
        with atomic_files(out, recipe_path(out)) as (tmp_file, tmp_recipe):
            _write_weights(plan, form, tmp_file.parent, dev, seed, progress, shard_bytes, single_file=tmp_file,
                           progress_callback=progress_callback, allow_nonfinite=allow_nonfinite)
            tmp_recipe.write_text(recipe_yaml, encoding="utf-8")
    else:
        with AtomicTarget(out) as tmp:
            _write_weights(plan, form, tmp, dev, seed, progress, shard_bytes, single_file=None,
                           progress_callback=progress_callback, allow_nonfinite=allow_nonfinite)
            write_side_files(plan, form, tmp)
            for hook in SIDE_FILE_HOOKS:
                hook(plan, tmp, dev)
            write_text(recipe_path(tmp), recipe_yaml)
            write_text(tmp / "README.md", model_card(recipe_yaml, plan.spec.label or plan.spec.name,
                                                     recipe.referenced_models(), recipe.base_model,
                                                     library=form.library or library_name(plan.sources[0])))
    return plan.summary()


def _with_seed(recipe: Recipe, seed: int) -> Recipe:
    r = recipe.copy()
    r.seed = seed
    return r


def merge_in_memory(recipe: Recipe, device: str = "cpu", seed: int | None = None,
                    opener: Callable[[str], TensorSource] = open_source, allow_nonfinite: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Run a recipe and return the output state dict (CPU tensors owning their memory); inputs holding NaN/Inf are
    refused unless ``allow_nonfinite``."""
    plan = build_plan(recipe, opener)
    seed = recipe.seed if seed is None else seed
    out = {}
    for task, tensor in run_tasks(plan, resolve_device(device), seed, allow_nonfinite=allow_nonfinite):
        out[task.out_key] = tensor.clone() if task.op == "copy" else tensor
    return out
