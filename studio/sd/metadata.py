"""safetensors metadata for single-file diffusion outputs: modelspec 1.0.1 keys, an A1111/SuperMerger-compatible
``sd_merge_recipe`` and ``sd_merge_models`` (formats.md §5). The engine adds ``format: pt`` and its own recipe key;
this module registers ``plan_metadata`` as its metadata hook."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from ..engine import METADATA_HOOKS
from ..errors import StudioError
from ..layout.dit import UNKNOWN_DIT
from ..layout.sd import ARCHITECTURES, base_family, detect_family

IMPLEMENTATIONS = {"flux": "https://github.com/black-forest-labs/flux"}
SGM = "https://github.com/Stability-AI/generative-models"


def legacy_hash(path) -> str | None:
    """A1111's legacy model hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits (cheap: no full read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except (OSError, TypeError):
        return None


def _title(src) -> str:
    meta = getattr(src, "metadata", None) or {}
    if meta.get("modelspec.title"):
        return meta["modelspec.title"]
    path = getattr(src, "path", None)
    if path is not None:
        p = Path(path)
        return p.stem if p.suffix else p.name
    return str(getattr(src, "ref", "model"))


def _file_of(src):
    while getattr(src, "base", None) is not None:
        src = src.base
    p = getattr(src, "path", None)
    return p if p is not None and Path(p).is_file() else None


def _recipe_models(recipe: dict) -> list[str]:
    models = recipe.get("models") or []
    out = []
    for m in models:
        if isinstance(m, dict):
            out.append(str(m.get("model", "")))
        else:
            out.append(str(m))
    return out


def _first_scalar(params: dict | None, *names):
    for n in names:
        v = (params or {}).get(n)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def sd_output_metadata(recipe_dict: dict, sources: list, family: str | None) -> dict[str, str]:
    recipe = dict(recipe_dict or {})
    sources = [s for s in sources if type(s).__name__ != "VaeSource"]   # a baked VAE is recorded as bake_in_vae
    fam = base_family(family)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    titles = [_title(s) for s in sources]
    meta: dict[str, str] = {"modelspec.sai_model_spec": "1.0.1",
                            "modelspec.implementation": IMPLEMENTATIONS.get(fam, SGM),
                            "modelspec.title": str(recipe.get("name") or recipe.get("title") or "merge-studio merge"),
                            "modelspec.date": now,
                            "modelspec.merged_from": ", ".join(titles)}
    arch = ARCHITECTURES.get(family or "") or ARCHITECTURES.get(fam or "")
    if arch:
        meta["modelspec.architecture"] = arch + ("/inpaint" if family and family.endswith("-inpaint") else "")
    # video models (Wan) and unknown DiTs have no one training resolution to name
    resolution = "512x512" if fam in ("sd1", "sd2", "sd-x4-upscaler") else \
        None if fam in ("wan", UNKNOWN_DIT) else "1024x1024"
    if resolution is not None:
        meta["modelspec.resolution"] = resolution
    pred = next((s.metadata.get("modelspec.prediction_type") for s in sources
                 if (getattr(s, "metadata", None) or {}).get("modelspec.prediction_type")), None)
    if pred:
        meta["modelspec.prediction_type"] = pred
    hashes = []
    models: dict[str, dict] = {}
    for s, title in zip(sources, titles):
        smeta = getattr(s, "metadata", None) or {}
        f = _file_of(s)
        lh = legacy_hash(f) if f is not None else None
        sha = smeta.get("modelspec.hash_sha256") or smeta.get("sshs_model_hash")
        hashes.append(sha or lh)
        entry = {"name": title, "legacy_hash": lh}
        try:
            entry["sd_merge_recipe"] = json.loads(smeta["sd_merge_recipe"]) if smeta.get("sd_merge_recipe") else None
        except json.JSONDecodeError:
            entry["sd_merge_recipe"] = None
        models[sha or lh or title] = entry
        try:  # keep the ancestry of merged inputs (A1111 flattens nested sd_merge_models the same way)
            models.update(json.loads(smeta.get("sd_merge_models") or "{}"))
        except json.JSONDecodeError:
            pass
    params = recipe.get("parameters") if isinstance(recipe.get("parameters"), dict) else {}
    method = recipe.get("merge_method") or recipe.get("method") or recipe.get("type") or "merge"
    alpha = _first_scalar(params, "alpha", "weight", "t")
    block = (params or {}).get("alpha") if isinstance((params or {}).get("alpha"), (list, str)) else None
    sm = {"type": "merge-studio", "merge_method": method, "interp_method": method,
          "primary_model_hash": hashes[0] if hashes else None,
          "secondary_model_hash": hashes[1] if len(hashes) > 1 else None,
          "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None,
          "multiplier": alpha, "alpha": alpha,
          "weights_alpha": ",".join(map(str, block)) if isinstance(block, list) else block,
          "bake_in_vae": str(recipe.get("vae")) if recipe.get("vae") else None,
          "models": _recipe_models(recipe) or titles,
          "save_as_half": None, "discard_weights": "", "is_inpainting": bool(family and "inpaint" in family),
          "is_instruct_pix2pix": bool(family and "pix2pix" in family), "studio_recipe": recipe}
    meta["sd_merge_recipe"] = json.dumps(sm, default=str)
    meta["sd_merge_models"] = json.dumps(models, default=str)
    return meta


def plan_metadata(plan) -> dict[str, str]:
    """The metadata hook of single-file merges: these keys when the plan's reference is a diffusion checkpoint,
    {} for any other model."""
    try:
        family = detect_family(plan.reference)
    except StudioError:
        return {}
    return sd_output_metadata(plan.recipe.to_dict(), plan.sources, family)


METADATA_HOOKS.append(plan_metadata)
