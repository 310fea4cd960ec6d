"""The diffusers config folders that ship with the studio (``assets/configs/<family>``), read offline.

``from_single_file`` would fetch a diffusers config folder from the hub for every single-file checkpoint; the ones the
studio needs ship under ``assets/configs/<family>/`` instead (SD1.5, SD2.1 768-v, SDXL base 1.0, Flux.1 dev /
schnell; diffusers ``config.json`` of each model, the scheduler config, ``model_index.json``, tokenizer settings),
written from the published architecture facts. The CLIP BPE vocabulary is shared by every family's tokenizers (they
differ only in their pad token): it ships once, in ``assets/configs/clip`` (see :mod:`studio.preview.sd_configs`).

Used by previews (configs of single files) and by exports (the diffusers folder written from an ldm checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import StudioError
from ..output import write_json, write_text

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "assets" / "configs"
CLIP_BPE = CONFIG_ROOT / "clip"
SHIPPED = ("sd1", "sd2", "sdxl", "flux-dev", "flux-schnell")
CONFIG_FILES = ("config.json", "scheduler_config.json")
TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")
PREDICTION = {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon", "eps": "epsilon"}


def shipped_folder(family: str) -> Path:
    """``assets/configs/<family>``; a StudioError for a family without shipped configs."""
    if family not in SHIPPED:
        raise StudioError(f"no shipped configs for the {family} family", hint=f"shipped: {', '.join(SHIPPED)}; "
                          "pass config=<a diffusers pipeline folder of this model> instead")
    return CONFIG_ROOT / family


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StudioError(f"cannot read {Path(path).name} ({e})", where=str(Path(path).parent)) from None


def component_config(folder: Path, component: str) -> dict | None:
    """``<folder>/<component>/config.json`` (or ``scheduler_config.json``) as a dict; None when absent."""
    for name in CONFIG_FILES:
        path = Path(folder) / component / name
        if path.is_file():
            return read_json(path)
    return None


def write_config_folder(target: str | Path, family: str, overrides: dict[str, dict] | None = None) -> Path:
    """A complete diffusers config folder for ``family`` at ``target`` (what ``from_single_file(config=…)`` reads):
    the shipped JSON files, each component's config updated with ``overrides[component]``, and the tokenizer folders
    (:func:`write_tokenizers`). Tests use it for shrunk architectures, exports for the configs of a diffusers folder;
    anyone may use it to load a single file with diffusers offline."""
    src, out = shipped_folder(family), Path(target)
    overrides = overrides or {}
    for path in sorted(src.rglob("*.json")):
        rel = path.relative_to(src)
        if rel.parts[0] in TOKENIZER_DIRS:
            continue
        data = read_json(path)
        if len(rel.parts) == 2 and rel.parts[0] in overrides:
            data.update(overrides[rel.parts[0]])
        write_json(out / rel, data)
    write_tokenizers(out, family)
    return out


def write_tokenizers(target: str | Path, family: str) -> list[str]:
    """The shipped tokenizer folders of ``family`` (their settings and the CLIP BPE files) into ``target``; returns
    the folder names written (``tokenizer``, and SDXL's ``tokenizer_2``)."""
    src, out = shipped_folder(family), Path(target)
    names = [t for t in TOKENIZER_DIRS if (src / t).is_dir()]
    for tok in names:
        for path in sorted((src / tok).glob("*.json")):
            write_json(out / tok / path.name, read_json(path))
        for name in ("vocab.json", "merges.txt"):
            write_text(out / tok / name, (CLIP_BPE / name).read_text(encoding="utf-8"))
    return names

def prediction_type(source, explicit: str | None = None) -> str | None:
    """The diffusers ``prediction_type`` of a checkpoint: ``explicit`` when given, else what its metadata
    (``modelspec.prediction_type``) or ComfyUI's ``v_pred`` marker tensor says; None when nothing says (SD2 512-ε and
    768-v share every key)."""
    said = explicit or (source.metadata or {}).get("modelspec.prediction_type")
    if said is None and "v_pred" in source:
        said = "v"
    if said is None:
        return None
    if str(said).lower() not in PREDICTION:
        raise StudioError(f"unknown prediction type {said!r}", where=source.ref, hint="use epsilon or v")
    return PREDICTION[str(said).lower()]
