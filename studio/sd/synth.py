"""Real-layout key/shape tables for SD1/SD2/SDXL (ldm single file and diffusers pipeline), full size or tiny, and tiny
Flux.1 pipeline folders. ``runnable=True`` tiny SD models fit together (text widths = the UNet's cross-attention,
CLIP's whole vocabulary), so a preview pipeline can render them.

UNet and VAE shapes come from diffusers' own model classes built on the meta device (no memory, no download) and are
renamed to ldm with :mod:`studio.layout.sd_keys`; text encoders are generated from their known structure (HF CLIP
names, OpenCLIP fused in_proj). Used by tests (tiny shapes, real names) and by ``bench/sd_memory.py`` (full SDXL
shapes).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

from ..layout.sd_keys import (UNET_PREFIX, VAE_PREFIX, is_vae_attn_linear, openclip_text_keys, unet_to_ldm,
                              vae_to_ldm)
from ..output import write_json, write_safetensors, write_text
from ..sources import TensorInfo
from .configs import write_tokenizers

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
# Runnable tiny pipelines (``runnable=True``): the text encoders keep CLIP's whole vocabulary (the shipped tokenizer's
# ids) and the UNet's cross-attention width is what they produce (SDXL: both encoders' widths concatenated). The two
# widths differ, as CLIP-L's 768 and bigG's 1280 do: loaders tell SDXL's encoders apart by it.
RUN_CLIP = (2, 32, 64, 49408, None)
RUN_OPENCLIP = (10, 48, 96, 49408, 48)
RUN_CROSS_ATTENTION = {"sd1": 32, "sd2": 48, "sdxl": 80}


def unet_config(family: str, tiny: bool, runnable: bool = False) -> dict:
    cfg = dict((TINY_UNET if tiny else UNET_CONFIGS)[family])
    if tiny and runnable:
        cfg["cross_attention_dim"] = RUN_CROSS_ATTENTION[family]
        if family == "sdxl":  # six size/crop/target time embeddings + the pooled OpenCLIP projection
            cfg["projection_class_embeddings_input_dim"] = 6 * cfg["addition_time_embed_dim"] + RUN_OPENCLIP[4]
    cfg.setdefault("layers_per_block", 2)
    cfg.setdefault("sample_size", 8 if tiny else (128 if family == "sdxl" else 64))
    return cfg


def _meta_state(cls, cfg) -> Table:
    with torch.device("meta"):
        model = cls(**cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def diffusers_unet_table(family: str, tiny: bool = True, runnable: bool = False) -> Table:
    from diffusers import UNet2DConditionModel  # heavy (seconds to import): only when a table is built

    return _meta_state(UNet2DConditionModel, unet_config(family, tiny, runnable))


def text_encoder_specs(family: str, tiny: bool = True, runnable: bool = False) -> tuple:
    """(CLIP-L or OpenCLIP spec, SDXL's second spec or None): (layers, width, mlp, vocab, projection)."""
    clip, openclip = ((RUN_CLIP, RUN_OPENCLIP) if runnable else (TINY_CLIP, TINY_OPENCLIP)) if tiny else \
        (CLIP_L, OPENCLIP_BIGG if family == "sdxl" else OPENCLIP_H)
    return {"sd1": (clip, None), "sd2": (openclip, None), "sdxl": (clip, openclip)}[family]


def clip_text_config(spec, family: str, second: bool = False) -> dict:
    """transformers ``config.json`` of a CLIP text encoder with ``spec``'s sizes (an OpenCLIP spec as converted to
    HF CLIP: SD2 drops the last layer, whose output SD2 never uses)."""
    layers, width, mlp, vocab, proj = spec
    openclip = family == "sd2" or second
    return {"architectures": ["CLIPTextModelWithProjection" if second else "CLIPTextModel"],
            "model_type": "clip_text_model", "hidden_size": width, "intermediate_size": mlp,
            "num_hidden_layers": layers - 1 if family == "sd2" else layers, "num_attention_heads": 2 if width < 64
            else width // 64, "hidden_act": "gelu" if openclip else "quick_gelu", "projection_dim": proj or width,
            "vocab_size": vocab, "max_position_embeddings": 77, "layer_norm_eps": 1e-05, "bos_token_id": 0,
            "eos_token_id": 2, "pad_token_id": 1}


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


def ldm_table(family: str, tiny: bool = True, extras: bool = False, runnable: bool = False) -> Table:
    """Key → (shape, dtype) of an ldm single-file checkpoint of ``family`` (sd1, sd2, sdxl). ``runnable``: tiny
    text encoders and UNet that fit together (see RUN_CLIP)."""
    out: Table = {}
    unet = diffusers_unet_table(family, tiny, runnable)
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
    if family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(family)
    te, te2 = text_encoder_specs(family, tiny, runnable)
    if family == "sd1":
        for k, v in clip_text_table(te).items():
            out["cond_stage_model.transformer." + k] = v
    elif family == "sd2":
        for k, v in _openclip(te).items():
            out["cond_stage_model.model." + k] = v
    else:
        for k, v in clip_text_table(te).items():
            out["conditioner.embedders.0.transformer." + k] = v
        for k, v in _openclip(te2).items():
            out["conditioner.embedders.1.model." + k] = v
    if extras and family != "sdxl":
        for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
            out[name] = ((1000,), torch.float32)
        out["model_ema.decay"] = ((), torch.float32)
        out["model_ema.num_updates"] = ((), torch.int32)
    return out


def diffusers_pipeline_tables(family: str, tiny: bool = True, runnable: bool = False) -> dict[str, Table]:
    """component → table for a diffusers pipeline folder."""
    comps = {"unet": diffusers_unet_table(family, tiny, runnable), "vae": diffusers_vae_table(tiny)}
    te, te2 = text_encoder_specs(family, tiny, runnable)
    if family == "sd2":  # the diffusers SD2 text encoder stops one layer short of OpenCLIP's (see clip_text_config)
        te = (te[0] - 1, *te[1:4], None)
    comps["text_encoder"] = clip_text_table(te, with_position_ids=False)
    if te2 is not None:
        comps["text_encoder_2"] = clip_text_table(te2, with_position_ids=False)
    return comps


def random_tensor(key: str, shape, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((zlib.crc32(key.encode()) ^ seed) & 0x7FFFFFFF)
    if not dtype.is_floating_point:
        if key.endswith("position_ids"):
            return torch.arange(shape[-1], dtype=dtype).reshape(shape)
        return torch.zeros(shape, dtype=dtype)
    noise = torch.randn(shape, generator=g)
    if len(shape) == 1 and key.endswith(".weight") and "norm" in key:
        return (1 + 0.05 * noise).to(dtype)  # a norm's gain near 1, as trained models have: the signal goes through
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        # a weight scaled to its fan-in keeps activations near unit size through a random network, so a tiny
        # runnable pipeline's blocks each visibly move its images (at a flat 0.05 the UNet's output vanishes)
        return (noise * min(0.05, fan_in ** -0.5) if key.endswith(("emb.weight", "embedding.weight")) else
                noise * fan_in ** -0.5).to(dtype)
    return (noise * 0.05).to(dtype)


def write_random(path: Path, table: Table, seed: int = 0, dtype: torch.dtype | None = None,
                 metadata: dict | None = None) -> Path:
    """Write random tensors with ``table``'s names and shapes, one tensor in memory at a time."""
    infos = {k: TensorInfo(s, (dtype if (dtype is not None and dt.is_floating_point) else dt))
             for k, (s, dt) in table.items()}
    write_safetensors(Path(path), infos, lambda k: random_tensor(k, infos[k].shape, infos[k].dtype, seed),
                      metadata or {"format": "pt"})
    return Path(path)


SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"}


def write_random_pipeline(folder: Path, family: str, seed: int = 0, tiny: bool = True, runnable: bool = False,
                          tokenizers: bool = False) -> Path:
    """A diffusers pipeline folder with random weights (model_index.json + component folders); ``tokenizers``: with
    the family's shipped CLIP tokenizer folders too (a pipeline ``from_pretrained`` loads without being given one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
               "text_encoder": ("transformers", "CLIPTextModel"),
               "text_encoder_2": ("transformers", "CLIPTextModelWithProjection")}
    pipe = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
    index = {"_class_name": pipe[family], "_diffusers_version": "0.42.1"}
    te_specs = dict(zip(("text_encoder", "text_encoder_2"), text_encoder_specs(family, tiny, runnable)))
    for comp, table in diffusers_pipeline_tables(family, tiny, runnable).items():
        index[comp] = list(classes[comp])
        sub = folder / comp
        sub.mkdir(exist_ok=True)
        if comp == "unet":
            cfg = {"_class_name": "UNet2DConditionModel", **{k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in unet_config(family, tiny, runnable).items()}}
            name = "diffusion_pytorch_model.safetensors"
        elif comp == "vae":
            cfg = {"_class_name": "AutoencoderKL", **{k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in (TINY_VAE if tiny else VAE_CONFIG).items()}}
            name = "diffusion_pytorch_model.safetensors"
        else:
            cfg = clip_text_config(te_specs[comp], family, second=comp == "text_encoder_2")
            name = "model.safetensors"
        write_json(sub / "config.json", cfg)
        write_random(sub / name, table, seed=seed + len(comp))
    (folder / "scheduler").mkdir(exist_ok=True)
    write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler", **SD_SCHEDULER})
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    for tok in write_tokenizers(folder, family) if tokenizers else []:
        index[tok] = ["transformers", "CLIPTokenizer"]
    write_json(folder / "model_index.json", index)
    return folder


# --------------------------------------------------------------------------------------------- Flux (tiny)
# A runnable Flux.1 shrunk in every width (diffusers names): 1 double and 1 single block, 2 heads of 16, text widths
# 32 (CLIP-L as RUN_CLIP, a one-layer T5), 16 latent channels in (the tiny VAE's 4, packed 2×2).
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
TINY_FLUX_VAE = dict(TINY_VAE, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                     shift_factor=0.1159, force_upcast=True)
TINY_T5 = dict(d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=1, vocab_size=64, feed_forward_proj="gated-gelu",
               is_encoder_decoder=False, use_cache=False, dense_act_fn="gelu_new", is_gated_act=True,
               layer_norm_epsilon=1e-6, relative_attention_num_buckets=32, relative_attention_max_distance=128,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
T5_WORDS = ("a", "an", "the", "of", "photo", "cat", "dog", "red", "blue", "house", "tree", "painting", "portrait")


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def tiny_t5_tokenizer_json() -> str:
    """A small unigram T5 tokenizer (pad 0, eos 1, unk 2; the words above, then single letters) as tokenizer.json."""
    from transformers import T5Tokenizer  # optional and heavy: only for the tiny Flux pipeline

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0 - i) for i, w in enumerate(T5_WORDS)]
    vocab += [(c, -20.0) for c in "▁abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0).backend_tokenizer.to_str()


def flux_tables(tiny: bool = True, guidance: bool = True) -> dict[str, Table]:
    """component → table of a tiny Flux pipeline (transformer, vae, text_encoder, text_encoder_2); ``guidance``:
    Flux dev's guidance embedder (schnell has none)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel  # heavy: only when a table is built
    from transformers import T5Config, T5EncoderModel  # heavy: only when a table is built

    if not tiny:
        raise ValueError("only tiny Flux tables are built here")
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**TINY_T5))
    t5_table = {k: (tuple(v.shape), v.dtype) for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return {"transformer": _meta_state(FluxTransformer2DModel, {**TINY_FLUX, "guidance_embeds": guidance}),
            "vae": _meta_state(AutoencoderKL, TINY_FLUX_VAE),
            "text_encoder": clip_text_table(RUN_CLIP, with_position_ids=False), "text_encoder_2": t5_table}


def write_random_flux_pipeline(folder: Path, family: str = "flux-dev", seed: int = 0,
                               components: tuple[str, ...] = ("transformer", "vae", "text_encoder",
                                                               "text_encoder_2")) -> Path:
    """A tiny diffusers Flux folder with random weights and a T5 tokenizer (no CLIP tokenizer: the shipped one
    serves). ``components`` picks which model folders are written (e.g. only vae + text encoders)."""
    folder = Path(folder)
    guidance = family == "flux-dev"
    configs = {"transformer": {"_class_name": "FluxTransformer2DModel", **_jsonable(TINY_FLUX),
                               "guidance_embeds": guidance},
               "vae": {"_class_name": "AutoencoderKL", **_jsonable(TINY_FLUX_VAE)},
               "text_encoder": clip_text_config(RUN_CLIP, "sd1"),
               "text_encoder_2": {"architectures": ["T5EncoderModel"], "model_type": "t5", **TINY_T5}}
    tables = flux_tables(guidance=guidance)
    classes = {"transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
               "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "tokenizer_2": ["transformers", "T5Tokenizer"]}
    for comp in components:
        index[comp] = classes[comp]
        write_json(folder / comp / "config.json", configs[comp])
        name = "model.safetensors" if comp.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        write_random(folder / comp / name, tables[comp], seed=seed + len(comp))
    write_text(folder / "tokenizer_2" / "tokenizer.json", tiny_t5_tokenizer_json())
    write_json(folder / "tokenizer_2" / "tokenizer_config.json",
               {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "extra_ids": 0, "model_max_length": 512})
    write_json(folder / "scheduler" / "scheduler_config.json",
               {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                "use_dynamic_shifting": guidance, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                "max_image_seq_len": 4096})
    write_json(folder / "model_index.json", index)
    return folder


def bfl_flux_table(guidance: bool = True, double: int = 19, single: int = 38, width: int = 3072,
                   prefix: str = UNET_PREFIX) -> Table:
    """Key → (shape, dtype) of a Flux.1 transformer as Black Forest Labs / ComfyUI single files store it (fused
    ``qkv`` and ``linear1``; full size by default: hidden 3072, 24 heads of 128, MLP ×4, T5 width 4096, CLIP 768,
    64 packed latent channels)."""
    mlp, head, f32 = 4 * width, 128, torch.float32
    t: Table = {}

    def lin(name, out_f, in_f):
        t[prefix + name + ".weight"] = ((out_f, in_f), f32)
        t[prefix + name + ".bias"] = ((out_f,), f32)

    lin("img_in", width, 64)
    lin("txt_in", width, 4096)
    for emb, n_in in (("time_in", 256), ("vector_in", 768)) + ((("guidance_in", 256),) if guidance else ()):
        lin(f"{emb}.in_layer", width, n_in)
        lin(f"{emb}.out_layer", width, width)
    for i in range(double):
        for side in ("img", "txt"):
            b = f"double_blocks.{i}.{side}_"
            lin(b + "mod.lin", 6 * width, width)
            lin(b + "attn.qkv", 3 * width, width)
            lin(b + "attn.proj", width, width)
            lin(b + "mlp.0", mlp, width)
            lin(b + "mlp.2", width, mlp)
            for norm in ("query_norm", "key_norm"):
                t[prefix + b + f"attn.norm.{norm}.scale"] = ((head,), f32)
    for i in range(single):
        b = f"single_blocks.{i}."
        lin(b + "modulation.lin", 3 * width, width)
        lin(b + "linear1", 3 * width + mlp, width)
        lin(b + "linear2", width, width + mlp)
        for norm in ("query_norm", "key_norm"):
            t[prefix + b + f"norm.{norm}.scale"] = ((head,), f32)
    lin("final_layer.linear", 64, width)
    lin("final_layer.adaLN_modulation.1", 2 * width, width)
    return t
