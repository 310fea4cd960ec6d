"""Merge settings other image tools write, read back as recipes (registered in :data:`studio.recipe.files.READERS`),
and the generation parameters the studio writes into its own preview images.

- A1111's ``sd_merge_recipe`` in a checkpoint's metadata (its checkpoint merger: weighted sum, add difference); the
  studio's own single files carry the full recipe there too (``studio_recipe``).
- Model Mixer's settings in an image's A1111 infotext (``ModelMixer model b: …, ModelMixer alpha b: …``): a chain of
  "Sum" steps θ ← (1−α)·θ + α·M and "Add-Diff" steps θ ← θ + α·(M − base), each α global or per block. Every chain
  is linear in its models, so it becomes one ``linear`` recipe (normalize off) with per-block weights — exactly; a
  single step keeps its A1111 name (weighted_sum / add_difference).
- A1111 infotext (``parameters``): the prompt, ``Negative prompt:`` and the ``Key: value, …`` line; formatted for the
  studio's preview images so A1111's PNG Info and Civitai read them, with the recipe in its own chunk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from ..errors import StudioError
from ..layout.sd import SD1_BLOCKS, SDXL_BLOCKS
from ..recipe import Recipe
from ..recipe.files import READERS, FoundRecipe
from ..recipe.limits import check_size, parse_json
from ..sources import paths

# "Key: value" pairs of an infotext's last line; a value with commas is written in double quotes
PARAM = re.compile(r'\s*([\w][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
A1111_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,10}\]\s*$")   # "v1-5-pruned [6ce0161689]": A1111's title of a model
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) of an A1111 infotext."""
    lines = text.strip().splitlines()
    params: dict[str, str] = {}
    if lines and len(PARAM.findall(lines[-1])) >= 3:  # the parameter line has several pairs; a prompt rarely does
        for key, value in PARAM.findall(lines.pop()):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value[1:-1]
            params[key.strip()] = value
    prompt, negative, into_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            into_negative, line = True, line.removeprefix("Negative prompt:").strip()
        (negative if into_negative else prompt).append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), params


def format_infotext(prompt: str, negative: str = "", params: dict | None = None) -> str:
    """An A1111 infotext: the prompt, the negative prompt, then ``Key: value`` pairs (quoted when they hold a comma)."""
    def value(v):
        v = str(v)
        return json.dumps(v, ensure_ascii=False) if ("," in v or '"' in v or "\n" in v) else v
    lines = [prompt.strip()]
    if negative.strip():
        lines.append(f"Negative prompt: {negative.strip()}")
    if params:
        lines.append(", ".join(f"{k}: {value(v)}" for k, v in params.items() if v is not None and v != ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- finding named models
def bare_name(name) -> str:
    """A model's name without the hash A1111 appends to its title."""
    return A1111_HASH.sub("", str(name or "")).strip()


def find_named_model(name: str, folders: Sequence[Path]) -> str | None:
    """A model another tool names (``v1-5-pruned.safetensors``, ``v1-5-pruned [6ce0161689]``, ``sub/name``) among
    ``folders`` (and the folders in them): the path of the first match, else None."""
    name = bare_name(name)
    if not name or name == "None":
        return None
    wanted = Path(name.replace("\\", "/"))
    stem = wanted.stem if wanted.suffix.lower() in MODEL_SUFFIXES else wanted.name
    for folder in folders:
        folder = Path(folder)
        direct = folder / wanted
        if paths.exists(direct):
            return str(direct)
        for suffix in MODEL_SUFFIXES:
            for hit in (folder / wanted.parent).glob(f"{stem}{suffix}"):
                return str(hit)
        for hit in folder.glob(f"*/{stem}*"):
            if hit.suffix.lower() in MODEL_SUFFIXES and hit.stem == stem or hit.is_dir() and hit.name == stem:
                return str(hit)
    return None


class _Models:
    """Named models resolved among folders; what is not found stays as named, with a note."""

    def __init__(self, folders: Sequence[Path]):
        self.folders, self.missing = list(folders), []

    def __call__(self, name: str) -> str:
        path = find_named_model(name, self.folders)
        if path is None:
            self.missing.append(name)
            return bare_name(name)
        return path

    def notes(self) -> list[str]:
        return [f"model {m!r} was not found beside the file or in the studio's folders: add it, then set it in the "
                "recipe" for m in dict.fromkeys(self.missing)]


def _found(recipe: dict, origin: str, models: _Models, notes: list[str]) -> FoundRecipe:
    return FoundRecipe(Recipe.from_dict(recipe, where=origin).to_dict(), origin, notes + models.notes())


# ------------------------------------------------------------------------------------------- A1111 checkpoint merger
def _float(text, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise StudioError(f"{text!r} is not a number", where=where) from None


def read_merge_recipe(path: Path, chunks: dict, meta: dict, folders: Sequence[Path] = ()) -> FoundRecipe | None:
    """A checkpoint's ``sd_merge_recipe``: the studio's own (``studio_recipe``) or A1111's checkpoint merger."""
    raw = meta.get("sd_merge_recipe")
    if not raw:
        return None
    origin = f"{path} (sd_merge_recipe)"
    sm = parse_json(raw, origin)
    names = parse_json(meta.get("sd_merge_models") or "{}", f"{path} (sd_merge_models)")
    if not isinstance(names, dict):
        names = {}
    if not isinstance(sm, dict):
        return None
    if isinstance(sm.get("studio_recipe"), dict):
        return FoundRecipe(Recipe.from_dict(sm["studio_recipe"], where=origin).to_dict(), origin)
    mode = str(sm.get("interp_method") or "")
    steps = {"Weighted sum": ("weighted_sum", 2), "Add difference": ("add_difference", 3)}
    if mode not in steps:
        raise StudioError(f"A1111 merge mode {mode or '(none)'!r} has no recipe to repeat", where=origin,
                          hint="the studio repeats 'Weighted sum' and 'Add difference'")
    method, n = steps[mode]
    models = _Models([path.parent, *folders])
    refs = []
    for which in ("primary", "secondary", "tertiary")[:n]:
        h = str(sm.get(f"{which}_model_hash"))
        named = (names.get(h) or {}).get("name") if isinstance(names.get(h), dict) else None
        refs.append(models(named or str(h)))
    recipe = {"name": sm.get("custom_name") or path.stem, "merge_method": method,
              "models": [{"model": r} for r in refs],
              "parameters": {"alpha": _float(sm.get("multiplier", 0.5), origin)}}
    vae = sm.get("bake_in_vae")
    if vae and vae != "None":
        recipe["vae"] = models(vae)
    return _found(recipe, origin, models, [])


# ------------------------------------------------------------------------------------------- Model Mixer infotext
def _blocks(values: str, where: str) -> tuple[list[str], list[float]]:
    nums = [_float(v.strip(), where) for v in str(values).split(",") if v.strip()]
    blocks = SD1_BLOCKS if len(nums) == len(SD1_BLOCKS) else SDXL_BLOCKS if len(nums) == len(SDXL_BLOCKS) else None
    if blocks is None:
        raise StudioError(f"{len(nums)} block weights fit neither SD1/SD2's {len(SD1_BLOCKS)} blocks nor SDXL's "
                          f"{len(SDXL_BLOCKS)}", where=where)
    return blocks, nums


def _mixer_steps(params: dict, origin: str) -> list[dict]:
    steps = []
    for letter in "bcdefghijklmnopqrstuvwxyz":
        model = params.get(f"ModelMixer model {letter}")
        if model is None:
            break
        if params.get(f"ModelMixer use model {letter}", "True") != "True" or model == "None":
            continue
        alpha = _float(params.get(f"ModelMixer alpha {letter}", 0.5), origin)
        block = None
        weights = params.get(f"ModelMixer mbw weights {letter}")
        if weights and (params.get(f"ModelMixer mbw mode {letter}") == "True" or
                        params.get(f"ModelMixer mbw {letter}")):
            block = _blocks(weights, origin)
        steps.append({"model": model, "mode": params.get(f"ModelMixer merge mode {letter}", "Sum"),
                      "alpha": alpha, "blocks": block,
                      "calcmode": params.get(f"ModelMixer calcmode {letter}", "Normal")})
    return steps


def _chain_coefficients(steps: list[dict], groups: list[str]) -> dict[str, dict[str, float]]:
    """Per group, the coefficient of each model (``A``, ``base``, step i's model ``i``) after the whole chain; a group
    without block weights (``*``: the VAE, any other) takes each step's global α."""
    out: dict[str, dict[str, float]] = {}
    for g in groups:
        coef = {"A": 1.0}
        for i, st in enumerate(steps):
            blocks = st["blocks"]
            a = blocks[1][blocks[0].index(g)] if blocks and g in blocks[0] else st["alpha"]
            if st["mode"] == "Add-Diff":   # θ + α·(M − base)
                coef[i] = coef.get(i, 0.0) + a
                coef["base"] = coef.get("base", 0.0) - a
            else:                          # (1 − α)·θ + α·M
                coef = {k: (1 - a) * v for k, v in coef.items()}
                coef[i] = coef.get(i, 0.0) + a
        out[g] = coef
    return out


def _per_block(values: dict[str, float], groups: list[str]):
    """Block values in a recipe's per-group spelling, ``*`` (every other group: the VAE) first."""
    if all(values[g] == values["*"] for g in groups):
        return values["*"]
    return {"*": values["*"], **{g: values[g] for g in groups if values[g] != values["*"]}}


def read_model_mixer(path: Path, chunks: dict, meta: dict, folders: Sequence[Path] = ()) -> FoundRecipe | None:
    text = chunks.get("parameters")
    if not text or "ModelMixer" not in text:
        return None
    origin = f"{path} (Model Mixer settings)"
    check_size(len(text.encode("utf-8", "surrogatepass")), origin)
    _, _, params = parse_infotext(text)
    steps = _mixer_steps(params, origin)
    if not steps:
        raise StudioError("the image's Model Mixer settings merge no model", where=str(path))
    models = _Models([path.parent, *folders])
    a = models(params.get("ModelMixer model a") or params.get("Model") or "None")
    notes = [f"step {s['model']!r} used calc mode {s['calcmode']!r}: merged as 'Normal'"
             for s in steps if s["calcmode"] not in ("Normal", "")]
    refs = [models(s["model"]) for s in steps]
    base_name = params.get("ModelMixer base model")
    base = models(base_name) if any(s["mode"] == "Add-Diff" for s in steps) and base_name not in (None, "None") \
        else a
    groups = next((s["blocks"][0] for s in steps if s["blocks"]), [])
    name = {"name": f"model-mixer-{path.stem}"}
    if len(steps) == 1 and steps[0]["mode"] in ("Sum", "Add-Diff"):
        st = steps[0]
        alpha = _per_block({**dict(zip(*st["blocks"])), "*": st["alpha"]}, groups) if st["blocks"] else st["alpha"]
        method, inputs = (("weighted_sum", [a, refs[0]]) if st["mode"] == "Sum"
                          else ("add_difference", [a, refs[0], base]))
        return _found({**name, "merge_method": method, "models": [{"model": r} for r in inputs],
                       "parameters": {"alpha": alpha}}, origin, models, notes)
    coefs = _chain_coefficients(steps, groups + ["*"])
    keys = list(dict.fromkeys(k for c in coefs.values() for k in c))
    ref_of = {"A": a, "base": base, **dict(enumerate(refs))}
    merged: dict[str, dict[str, float]] = {}   # the same file twice (A as the base) adds its coefficients
    for k in keys:
        per = merged.setdefault(ref_of[k], {g: 0.0 for g in coefs})
        for g in coefs:
            per[g] += coefs[g].get(k, 0.0)
    recipe = {**name, "merge_method": "linear", "parameters": {"normalize": False},
              "models": [{"model": r, "parameters": {"weight": _per_block(per, groups)}} for r, per in merged.items()]}
    notes.append(f"Model Mixer's chain of {len(steps)} steps is one linear merge: each model's weight per block is "
                 "its share after every step")
    return _found(recipe, origin, models, notes)


READERS.extend([read_merge_recipe, read_model_mixer])
