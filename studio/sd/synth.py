"""Real-layout key/shape tables for SD1/SD2/SDXL (ldm single file and diffusers pipeline), full size or tiny.

UNet and VAE shapes come from diffusers' own model classes built on the meta device (no memory, no download) and are
renamed to ldm with :mod:`studio.layout.sd_keys`; text encoders are generated from their known structure (HF CLIP
names, OpenCLIP fused in_proj). Used by tests (tiny shapes, real names) and by ``bench/sd_memory.py`` (full SDXL
shapes).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from ..layout.sd_keys import (UNET_PREFIX, VAE_PREFIX, is_vae_attn_linear, openclip_text_keys, unet_to_ldm,
                              vae_to_ldm)
from ..output import write_json, write_safetensors
from ..sources import TensorInfo

Table = dict[str, tuple[tuple[int, ...], torch.dtype]]

UNET_CONFIGS = {
    "sd1": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True),
    "sdxl": dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
TINY_UNET = {
    "sd1": dict(block_out_channels=(32, 32, 64, 64), cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8),
    "sd2": dict(block_out_channels=(32, 32, 64, 64), cross_attention_dim=1024, attention_head_dim=8, norm_num_groups=8,
                use_linear_projection=True),
    "sdxl": dict(block_out_channels=(32, 64, 64), cross_attention_dim=2048, attention_head_dim=8, norm_num_groups=8,
                 transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=8 * 6 + 32),
}
VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
# text encoders: (layers, width, mlp, vocab, projection)
CLIP_L = (12, 768, 3072, 49408, None)
OPENCLIP_H = (24, 1024, 4096, 49408, 1024)
OPENCLIP_BIGG = (32, 1280, 5120, 49408, 1280)
TINY_CLIP = (2, 16, 32, 100, None)
TINY_OPENCLIP = (10, 16, 32, 100, 16)   # ≥ 10 layers: family detection looks at resblocks.9


def unet_config(family: str, tiny: bool) -> dict:
    cfg = dict((TINY_UNET if tiny else UNET_CONFIGS)[family])
    cfg.setdefault("layers_per_block", 2)
    cfg.setdefault("sample_size", 8 if tiny else (128 if family == "sdxl" else 64))
    return cfg


def _meta_state(cls, cfg) -> Table:
    with torch.device("meta"):
        model = cls(**cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def diffusers_unet_table(family: str, tiny: bool = True) -> Table:
    from diffusers import UNet2DConditionModel  # heavy (seconds to import): only when a table is built

    return _meta_state(UNet2DConditionModel, unet_config(family, tiny))


def diffusers_vae_table(tiny: bool = True) -> Table:
    from diffusers import AutoencoderKL  # heavy (seconds to import): only when a table is built

    return _meta_state(AutoencoderKL, TINY_VAE if tiny else VAE_CONFIG)


def clip_text_table(spec, with_position_ids: bool = True) -> Table:
    """HF CLIPTextModel names (``text_model.…``)."""
    layers, width, mlp, vocab, proj = spec
    t: Table = {"text_model.embeddings.token_embedding.weight": ((vocab, width), torch.float32),
                "text_model.embeddings.position_embedding.weight": ((77, width), torch.float32)}
    if with_position_ids:
        t["text_model.embeddings.position_ids"] = ((1, 77), torch.int64)
    for i in range(layers):
        b = f"text_model.encoder.layers.{i}."
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[b + f"self_attn.{p}.weight"] = ((width, width), torch.float32)
            t[b + f"self_attn.{p}.bias"] = ((width,), torch.float32)
        for p in ("layer_norm1", "layer_norm2"):
            t[b + f"{p}.weight"] = ((width,), torch.float32)
            t[b + f"{p}.bias"] = ((width,), torch.float32)
        t[b + "mlp.fc1.weight"] = ((mlp, width), torch.float32)
        t[b + "mlp.fc1.bias"] = ((mlp,), torch.float32)
        t[b + "mlp.fc2.weight"] = ((width, mlp), torch.float32)
        t[b + "mlp.fc2.bias"] = ((width,), torch.float32)
    t["text_model.final_layer_norm.weight"] = ((width,), torch.float32)
    t["text_model.final_layer_norm.bias"] = ((width,), torch.float32)
    if proj:
        t["text_projection.weight"] = ((proj, width), torch.float32)
    return t


def _openclip(spec) -> Table:
    layers, width, mlp, vocab, proj = spec
    return {k: (s, torch.float32) for k, s in openclip_text_keys(layers, width, mlp, vocab, 77, proj).items()}


def ldm_table(family: str, tiny: bool = True, extras: bool = False) -> Table:
    """Key → (shape, dtype) of an ldm single-file checkpoint of ``family`` (sd1, sd2, sdxl)."""
    out: Table = {}
    unet = diffusers_unet_table(family, tiny)
    up_attn = frozenset({0, 1}) if family == "sdxl" else frozenset({1, 2, 3})
    for k, v in unet.items():
        ldm = unet_to_ldm(k, up_attn)
        assert ldm is not None, k
        out[UNET_PREFIX + ldm] = v
    vae_cfg = TINY_VAE if tiny else VAE_CONFIG
    for k, (shape, dt) in diffusers_vae_table(tiny).items():
        if is_vae_attn_linear(k):
            shape = (*shape, 1, 1)
        out[VAE_PREFIX + vae_to_ldm(k, len(vae_cfg["block_out_channels"]))] = (shape, dt)
    if family == "sd1":
        for k, v in clip_text_table(TINY_CLIP if tiny else CLIP_L).items():
            out["cond_stage_model.transformer." + k] = v
    elif family == "sd2":
        for k, v in _openclip(TINY_OPENCLIP if tiny else OPENCLIP_H).items():
            out["cond_stage_model.model." + k] = v
    elif family == "sdxl":
        for k, v in clip_text_table(TINY_CLIP if tiny else CLIP_L).items():
            out["conditioner.embedders.0.transformer." + k] = v
        for k, v in _openclip(TINY_OPENCLIP if tiny else OPENCLIP_BIGG).items():
            out["conditioner.embedders.1.model." + k] = v
    else:
        raise ValueError(family)
    if extras and family != "sdxl":
        for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
            out[name] = ((1000,), torch.float32)
        out["model_ema.decay"] = ((), torch.float32)
        out["model_ema.num_updates"] = ((), torch.int32)
    return out


def diffusers_pipeline_tables(family: str, tiny: bool = True) -> dict[str, Table]:
    """component → table for a diffusers pipeline folder."""
    comps = {"unet": diffusers_unet_table(family, tiny), "vae": diffusers_vae_table(tiny)}
    if family == "sdxl":
        comps["text_encoder"] = clip_text_table(TINY_CLIP if tiny else CLIP_L, with_position_ids=False)
        comps["text_encoder_2"] = clip_text_table(TINY_OPENCLIP if tiny else OPENCLIP_BIGG, with_position_ids=False)
    else:
        spec = {"sd1": TINY_CLIP if tiny else CLIP_L, "sd2": TINY_OPENCLIP if tiny else OPENCLIP_H}[family]
        comps["text_encoder"] = clip_text_table(spec, with_position_ids=False)
    return comps


def random_tensor(key: str, shape, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((zlib.crc32(key.encode()) ^ seed) & 0x7FFFFFFF)
    if not dtype.is_floating_point:
        if key.endswith("position_ids"):
            return torch.arange(shape[-1], dtype=dtype).reshape(shape)
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=g) * 0.05).to(dtype)


def write_random(path: Path, table: Table, seed: int = 0, dtype: torch.dtype | None = None,
                 metadata: dict | None = None) -> Path:
    """Write random tensors with ``table``'s names and shapes, one tensor in memory at a time."""
    infos = {k: TensorInfo(s, (dtype if (dtype is not None and dt.is_floating_point) else dt))
             for k, (s, dt) in table.items()}
    write_safetensors(Path(path), infos, lambda k: random_tensor(k, infos[k].shape, infos[k].dtype, seed),
                      metadata or {"format": "pt"})
    return Path(path)


def write_random_pipeline(folder: Path, family: str, seed: int = 0, tiny: bool = True) -> Path:
    """A diffusers pipeline folder with random weights (model_index.json + component folders)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
               "text_encoder": ("transformers", "CLIPTextModel"),
               "text_encoder_2": ("transformers", "CLIPTextModelWithProjection")}
    pipe = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
    index = {"_class_name": pipe[family], "_diffusers_version": "0.42.1"}
    for comp, table in diffusers_pipeline_tables(family, tiny).items():
        index[comp] = list(classes[comp])
        sub = folder / comp
        sub.mkdir(exist_ok=True)
        if comp == "unet":
            cfg = {"_class_name": "UNet2DConditionModel", **{k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in unet_config(family, tiny).items()}}
            name = "diffusion_pytorch_model.safetensors"
        elif comp == "vae":
            cfg = {"_class_name": "AutoencoderKL", **{k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in (TINY_VAE if tiny else VAE_CONFIG).items()}}
            name = "diffusion_pytorch_model.safetensors"
        else:
            cfg = {"architectures": [classes[comp][1]], "model_type": "clip_text_model"}
            name = "model.safetensors"
        write_json(sub / "config.json", cfg)
        write_random(sub / name, table, seed=seed + len(comp))
    (folder / "scheduler").mkdir(exist_ok=True)
    write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler"})
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    write_json(folder / "model_index.json", index)
    return folder
