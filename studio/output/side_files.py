"""The files written beside the weights: where a merge's recipe goes, the tokenizer and config files copied from an
input, the learned-merge summary, a PEFT adapter's config. (The model card is in ``model_card.py``.)"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

from ..recipe.files import RECIPE_FILE, is_single_file, recipe_path  # noqa: F401 — re-exported: where the recipe goes
from ..sources.resolve import WEIGHT_SUFFIXES  # re-exported: what counts as a weights file
from .target import write_json, write_text

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "vocab.txt", "spiece.model", "sentencepiece.bpe.model"]
SIDE_FILES = TOKENIZER_FILES + ["generation_config.json"]
ADAPTER_CONFIG = "adapter_config.json"


def learned_summary_path(weights: Path) -> Path:
    """``<stem>.learned.json`` beside a learned merge's single ``.safetensors`` file."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".learned.json")


def learned_summary_json(inputs: dict, metrics: dict, history: list[float]) -> str:
    """The learned-merge summary: what was merged (method label, base, experts), its metrics and loss history."""
    return json.dumps({**inputs, "metrics": metrics, "history": history}, default=float, indent=1)


def copy_side_files(src_folder: Path | None, dst: Path, names=SIDE_FILES) -> list[str]:
    """Copy the files ``names`` that exist in ``src_folder`` into ``dst``; returns the names copied."""
    copied = []
    if src_folder is None:
        return copied
    for name in names:
        p = Path(src_folder) / name
        if p.is_file():
            shutil.copy2(p, dst / name)
            copied.append(name)
    return copied


def copy_non_weight_files(src_dir: Path, dst_dir: Path) -> None:
    """Copy every file of ``src_dir`` (not its subfolders) into ``dst_dir`` except weights, shard indexes and hidden
    files: the configs, tokenizer and scheduler files that make new weights a loadable model there."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for p in Path(src_dir).iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        shutil.copy2(p, dst_dir / p.name)


def peft_adapter_config(ranks: dict[str, int], base_model: str | None) -> dict:
    """PEFT's ``adapter_config.json`` for LoRA modules with these ranks: the most common rank is ``r``, the others go
    to ``rank_pattern``; alpha equals the rank (the factors are written with their scale folded in)."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(n): v for n, v in ranks.items() if v != r}
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "r": r, "lora_alpha": r,
            "rank_pattern": pattern, "alpha_pattern": dict(pattern), "use_rslora": False, "use_dora": False,
            "fan_in_fan_out": False, "bias": "none", "lora_dropout": 0.0, "init_lora_weights": True,
            "modules_to_save": None, "inference_mode": True,
            "target_modules": sorted({n.rsplit(".", 1)[-1] for n in ranks})}


def write_chat_template(folder: Path, template: str) -> None:
    """Put a recipe's chat template in ``folder``'s tokenizer config (and its ``chat_template.jinja`` when one was
    copied from an input, which transformers reads first)."""
    folder = Path(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    write_json(cfg_path, {**cfg, "chat_template": template})
    if (folder / "chat_template.jinja").is_file():
        write_text(folder / "chat_template.jinja", template)
