"""Write LoRAs: kohya single file (``.lora_down/.lora_up/.alpha`` + minimal ``ss_*`` and modelspec metadata),
diffusers LoRA file (``.lora_A/.lora_B``, scale 1), or a PEFT adapter folder (adapter_config.json with rank_pattern)."""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import StudioError
from ..output import (ADAPTER_CONFIG, AtomicTarget, check_target, is_single_file, peft_adapter_config, write_json,
                      write_safetensors)
from ..sources.base import TensorInfo

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
LORA_ARCH = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
             "sdxl": "stable-diffusion-xl-v1-base/lora", "flux": "flux-1-dev/lora"}


@dataclass
class LoraOut:
    up: torch.Tensor | None = None     # [out, r(, 1, 1)]
    down: torch.Tensor | None = None   # [r, in(, k, k)]
    alpha: float | None = None
    bias: torch.Tensor | None = None   # full bias delta (written as diff_b)


def _kohya_metadata(mods: dict[str, LoraOut], family: str | None, title: str) -> dict[str, str]:
    ranks = Counter(int(m.down.shape[0]) for m in mods.values() if m.down is not None)
    conv = Counter(int(m.down.shape[0]) for m in mods.values() if m.down is not None and m.down.dim() == 4
                   and tuple(m.down.shape[2:]) != (1, 1))
    dim = str(ranks.most_common(1)[0][0]) if len(ranks) == 1 else "Dynamic"
    args = {}
    if conv:
        args = {"conv_dim": str(conv.most_common(1)[0][0]) if len(conv) == 1 else "Dynamic"}
        args["conv_alpha"] = args["conv_dim"]
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": dim,
            "ss_v2": str(family == "sd2"), "ss_network_args": json.dumps(args) if args else "null"}
    if family in BASE_MODEL_VERSION:
        meta["ss_base_model_version"] = BASE_MODEL_VERSION[family]
        meta["modelspec.sai_model_spec"] = "1.0.1"
        meta["modelspec.architecture"] = LORA_ARCH[family]
        meta["modelspec.implementation"] = ("https://github.com/black-forest-labs/flux" if family == "flux" else
                                            "https://github.com/Stability-AI/generative-models")
        meta["modelspec.title"] = title
        meta["modelspec.date"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        meta["modelspec.resolution"] = "1024x1024" if family in ("sdxl", "flux") else "512x512"
    return meta


def _tensors(mods: dict[str, LoraOut], style: str) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        if style == "kohya":
            if m.down is not None:
                t[f"{name}.lora_down.weight"] = m.down
                t[f"{name}.lora_up.weight"] = m.up
                t[f"{name}.alpha"] = torch.tensor(float(m.alpha if m.alpha is not None else m.down.shape[0]))
            if m.bias is not None:
                t[f"{name}.diff_b"] = m.bias
        else:
            if m.bias is not None:
                raise StudioError(f"module {name}: a bias delta cannot be written in {style} format",
                                  hint="write kohya format instead")
            if m.down is None:
                continue
            scale = (m.alpha / m.down.shape[0]) if m.alpha is not None else 1.0
            pre = ("base_model.model." if style == "peft" else "") + name
            t[f"{pre}.lora_A.weight"] = m.down * scale if scale != 1.0 else m.down
            t[f"{pre}.lora_B.weight"] = m.up
    return t


def write_lora(out: Path, mods: dict[str, LoraOut], style: str = "kohya", family: str | None = None,
               dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None,
               base_model: str | None = None, overwrite: bool = False) -> Path:
    out = Path(out)
    tensors = _tensors(mods, style)
    if not tensors:
        raise StudioError("nothing to write: no LoRA module survived", where=str(out))
    infos = {k: TensorInfo(tuple(v.shape), (dtype if dtype is not None and v.dim() > 0 else torch.float32))
             for k, v in tensors.items()}
    meta = {"format": "pt"}
    if style == "kohya":
        meta.update(_kohya_metadata(mods, family, out.stem))
    meta.update(metadata or {})
    check_target(out, overwrite, [])
    if style != "peft" or is_single_file(out):
        write_safetensors(out, infos, tensors.__getitem__, meta)
        return out
    ranks = {n: int(m.down.shape[0]) for n, m in mods.items() if m.down is not None}
    with AtomicTarget(out) as tmp:
        write_json(tmp / ADAPTER_CONFIG, peft_adapter_config(ranks, base_model))
        write_safetensors(tmp / "adapter_model.safetensors", infos, tensors.__getitem__, meta)
    return out
