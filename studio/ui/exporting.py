"""The Export panel's controller: the session's recipe streamed to disk by the engine, exactly as
``python -m studio merge`` writes it (same files), only inside the allowed folders — plain Python."""

from __future__ import annotations

import time
from typing import Callable

from ..engine import merge_to_disk
from ..engine.quantized import merge_quantized
from ..output import is_single_file, model_card
from ..errors import StudioError
from ..output.quantize import GGUF_TYPES, SCHEMES, quantized_recipe_path


def export_recipe(s, target: str, dtype: str = "float16", overwrite: bool = False,
                  progress: Callable[[float], None] | None = None) -> dict:
    """Stream the session's recipe to ``target`` (a folder, or a path ending in .safetensors). Returns the path, the
    files written, their size, the seconds taken, the model card, the recipe YAML and the plan summary."""
    out = s.env.roots.check_write(target)
    recipe = s.recipe_obj()
    quantized = dtype in SCHEMES  # fp8 / GGUF types: merged in float32, written quantized, the error reported
    if out.suffix == ".gguf" and not quantized:
        raise StudioError(f"a .gguf file holds GGUF types, not {dtype}", where=str(out),
                          hint=f"choose one of {', '.join(GGUF_TYPES)} as the dtype")
    if dtype and dtype != "as input" and not quantized:
        recipe.out_dtype = dtype
    t0 = time.perf_counter()
    with s.env.heavy:
        if quantized:
            summary = merge_quantized(recipe, out, dtype, overwrite=bool(overwrite), device=s.env.device,
                                      progress=False, progress_callback=progress)
        else:
            summary = merge_to_disk(recipe, out, device=s.env.device, overwrite=bool(overwrite), progress=False,
                                    progress_callback=progress)
    seconds = time.perf_counter() - t0
    recipe_yaml = recipe.to_yaml()
    if out.suffix == ".gguf" or is_single_file(out):
        files = [out, quantized_recipe_path(out)]  # a single file has its recipe beside it (<stem>.recipe.yml)
        card = model_card(recipe_yaml, s.spec.label or s.spec.name, recipe.referenced_models(), recipe.base_model)
    else:
        files = sorted(p for p in out.rglob("*") if p.is_file())
        readme = out / "README.md"
        card = readme.read_text() if readme.exists() else ""
    return {"path": str(out), "files": [str(p) for p in files], "bytes": sum(p.stat().st_size for p in files),
            "seconds": seconds, "card": card, "recipe": recipe_yaml, "summary": summary}
