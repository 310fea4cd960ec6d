"""A recipe merged in float32 and written quantized (fp8, scaled fp8, GGUF types): the one path the CLI's
``merge --quantize`` and the studio's Export take."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..output.quantize import check_scheme, merge_scratch, quantize_merge, remove_scratch, scratch_target
from ..recipe import Recipe
from .plan import build_plan
from .stream import check_merge_target, merge_to_disk


def merge_quantized(recipe: Recipe, out: str | Path, scheme: str, *, overwrite: bool = False, **merge_kw) -> dict:
    """The recipe merged in float32 into a scratch folder beside ``out``, then written to ``out`` as ``scheme``
    (atomically, with its recipe); the scratch folder is always removed. ``merge_kw`` go to :func:`merge_to_disk`.
    Returns the plan summary with ``quantization``: the scheme and the error per tensor family and overall."""
    target = Path(out)
    scheme = check_scheme(scheme, target)
    check_merge_target(build_plan(recipe), target, overwrite)  # refused before anything is computed
    recipe = dataclasses.replace(recipe, out_dtype="float32")  # the recipe written beside the output says so
    scratch = merge_scratch(target)
    try:
        merged = scratch_target(scratch, target)
        summary = merge_to_disk(recipe, merged, overwrite=False, **merge_kw)
        errors = quantize_merge(merged, target, scheme)
    finally:
        remove_scratch(scratch)
    summary["quantization"] = dict(errors, scheme=scheme)
    return summary
