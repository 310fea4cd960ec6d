"""The diffusion zoo: a tiny Stable Diffusion 1 pipeline (diffusers ``StableDiffusionPipeline`` folders) that draws
the toy world of :mod:`studio.zoo.diffusion_data` from prompts.

Every part has SD1's structure at a small width, so the studio treats it as an SD1 checkpoint (26 SuperMerger
blocks + VAE): a ``UNet2DConditionModel`` with SD1's blocks (CrossAttnDownBlock2D ×3 + DownBlock2D, two layers
each; a cross-attention middle block; UpBlock2D + CrossAttnUpBlock2D ×3, three layers each), an ``AutoencoderKL``
with SD1's four stages (64×64 pictures ↔ 8×8×4 latents), a ``CLIPTextModel`` with CLIP's tokenizer format
(:mod:`studio.zoo.clip_vocab`), and SD1's noise schedule.

The build trains the VAE on pictures of every look; pretrains the text encoder to read the prompts (a linear probe
must recover the digit and the position: SD1's CLIP, too, arrived knowing language); trains the UNet on the base
look's latents with the text encoder frozen (prompts dropped 10 % of the time, for classifier-free guidance; Min-SNR
weighting and an EMA of the weights); then fine-tunes one expert per style from the base (UNet, and the text encoder
at a tenth of the rate, so that the BASE block differs too) and one PEFT LoRA per style on the base UNet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from . import diffusion_data as data
from .clip_vocab import small_merges, vocab, write_tokenizer_files
from .training import optimizer_step, warmup_cosine

STYLES, STYLE_DOC = data.STYLES, data.STYLE_DOC
LATENT = 8                 # latent side: 64-pixel pictures through SD1's ×8 VAE
TEXT_WIDTH = 32
MAX_TOKENS = 77            # CLIP's context length, as SD1's tokenizer pads to it
PROMPT_DROP = 0.1          # share of training prompts replaced by "" (classifier-free guidance)
GUIDANCE = 4.0             # the evaluator's guidance scale
EXPERT_PICTURES = 1800     # pictures per style for the fine-tunes


def unet_config() -> dict:
    return dict(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                block_out_channels=(16, 16, 16, 16), cross_attention_dim=TEXT_WIDTH, attention_head_dim=2,
                norm_num_groups=8)


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=data.SIZE,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(8, 8, 16, 16), norm_num_groups=4)


def text_config():
    from transformers import CLIPTextConfig  # optional and heavy: the diffusion family only

    v = vocab(small_merges())
    return CLIPTextConfig(vocab_size=len(v), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                          bos_token_id=v["<|startoftext|>"], eos_token_id=v["<|endoftext|>"],
                          pad_token_id=v["<|endoftext|>"])


def scheduler_config() -> dict:
    """SD1's DDIM settings (scaled-linear betas 0.00085 → 0.012 over 1,000 steps, ε-prediction)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_tokenizer():
    """CLIP's tokenizer over the zoo's small vocabulary (:mod:`studio.zoo.clip_vocab`), padding to 77 tokens."""
    from transformers import CLIPTokenizer  # optional and heavy: the diffusion family only

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tmp)), model_max_length=MAX_TOKENS)


def make_components(seed: int = 0) -> dict:
    """Freshly initialised ``unet``, ``vae``, ``text_encoder`` and ``scheduler`` (seeded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # optional and heavy: diffusion only
    from transformers import CLIPTextModel  # optional and heavy: the diffusion family only

    torch.manual_seed(seed)
    return {"unet": UNet2DConditionModel(**unet_config()), "vae": AutoencoderKL(**vae_config()),
            "text_encoder": CLIPTextModel(text_config()), "scheduler": DDIMScheduler(**scheduler_config())}


def make_pipeline(parts: dict, tokenizer):
    from diffusers import StableDiffusionPipeline  # optional and heavy: the diffusion family only

    return StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
                                   unet=parts["unet"], scheduler=parts["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_pipeline(parts: dict, tokenizer, folder: Path) -> Path:
    """A diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``); the tokenizer folder also holds CLIP's ``vocab.json`` and ``merges.txt``."""
    make_pipeline(parts, tokenizer).save_pretrained(str(folder))
    write_tokenizer_files(Path(folder) / "tokenizer")
    return Path(folder)


# ------------------------------------------------------------------------------------------------------ training
def _random_pictures(gen: torch.Generator, batch: int, looks: bool) -> torch.Tensor:
    n = len(data.glyphs()[2])
    idx = torch.randint(0, n, (batch,), generator=gen)
    pos = torch.randint(0, len(data.POSITIONS), (batch,), generator=gen)
    shift = torch.randint(-2, 3, (batch, 2), generator=gen)
    flags = (torch.rand(3, batch, generator=gen) < 0.5) if looks else torch.zeros(3, batch, dtype=torch.bool)
    return data.render(idx, pos, shift, *flags)


def train_vae(vae, steps: int, lr: float, seed: int, batch: int = 16):
    """Reconstruction training on pictures of every look (each style on or off at random), then the latent
    ``scaling_factor`` set to 1 / the latents' standard deviation, as SD's VAE does."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        warmup_cosine(opt, lr, step, steps, steps // 20)
        x = _random_pictures(gen, batch, looks=True) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample          # the mean: what the zoo encodes and the UNet learns to draw
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        optimizer_step(opt, loss, list(vae.parameters()))
    vae.eval()
    with torch.no_grad():
        z = vae.encode(_random_pictures(gen, 256, looks=True) * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


@torch.no_grad()
def encode_pictures(vae, style: str | None, seed: int, count: int | None = None) -> dict[str, torch.Tensor]:
    """``count`` random (digit, position) pictures (all of them by default) in ``style``, each moved by a random
    ±2 px, as scaled latent means: ``{"latents" [N, 4, 8, 8], "digit" [N], "position" [N]}``."""
    gen = torch.Generator().manual_seed(seed)
    idx, pos = data.all_pairs()
    if count is not None:
        keep = torch.randperm(len(idx), generator=gen)[:count]
        idx, pos = idx[keep], pos[keep]
    shift = torch.randint(-2, 3, (len(idx), 2), generator=gen)
    labels = data.glyphs()[2]
    out = []
    for s in range(0, len(idx), 256):
        sl = slice(s, s + 256)
        x = data.render(idx[sl], pos[sl], shift[sl], ember=style == "ember", bold=style == "bold",
                        stripes=style == "stripes") * 2 - 1
        out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return {"latents": torch.cat(out), "digit": labels[idx], "position": pos}


def prompt_ids(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [10, 3, PROMPT_VARIANTS, 77], empty [77])``: the token ids of every prompt wording and of ""."""
    texts = [data.prompt(d, p, v) for d in range(10) for p in range(len(data.POSITIONS))
             for v in range(data.PROMPT_VARIANTS)]
    enc = tokenizer(texts + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    return enc[:-1].view(10, len(data.POSITIONS), data.PROMPT_VARIANTS, MAX_TOKENS), enc[-1]


def pretrain_text(text_encoder, tokenizer, steps: int, lr: float, seed: int, batch: int = 64):
    """Teach the text encoder what the prompts say before the UNet learns to listen (SD1's CLIP arrives pretrained):
    a linear probe on the mean hidden state must read the digit and the position from every wording."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ids, _ = prompt_ids(tokenizer)
    probe = torch.nn.Linear(TEXT_WIDTH, 10 + len(data.POSITIONS))
    params = list(text_encoder.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    text_encoder.train()
    for step in range(steps):
        warmup_cosine(opt, lr, step, steps, steps // 20)
        digit = torch.randint(0, 10, (batch,), generator=gen)
        position = torch.randint(0, len(data.POSITIONS), (batch,), generator=gen)
        variant = torch.randint(0, data.PROMPT_VARIANTS, (batch,), generator=gen)
        logits = probe(text_encoder(ids[digit, position, variant])[0].mean(dim=1))
        loss = F.cross_entropy(logits[:, :10], digit) + F.cross_entropy(logits[:, 10:], position)
        optimizer_step(opt, loss)
    text_encoder.eval()
    return text_encoder


def train_denoiser(unet, text_encoder, tokenizer, pictures: dict, steps: int, lr: float, seed: int,
                   text_lr: float | None = None, batch: int = 32, ema: float = 0.0, min_snr: float = 5.0):
    """ε-prediction training of ``unet`` (a UNet or a PEFT model around one) on ``pictures``' latents with SD1's
    noise schedule, each picture described by a random wording of its prompt. ``text_lr`` also trains the text
    encoder (None keeps it frozen). The loss is weighted by min(SNR, ``min_snr``) / SNR (Min-SNR-γ, arXiv
    2303.09556: faster convergence); ``ema`` > 0 keeps an exponential moving average of the trained weights and
    leaves it in the models at the end."""
    from diffusers import DDPMScheduler  # optional and heavy: the diffusion family only

    ddpm = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "set_alpha_to_one"})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ids, empty = prompt_ids(tokenizer)
    lat, digit, position = pictures["latents"], pictures["digit"], pictures["position"]
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr, "base": lr}]
    text_encoder.requires_grad_(text_lr is not None)
    if text_lr is not None:
        groups.append({"params": list(text_encoder.parameters()), "lr": text_lr, "base": text_lr})
    params = [p for g in groups for p in g["params"]]
    averaged = [p.detach().clone() for p in params] if ema else []
    snr = ddpm.alphas_cumprod / (1 - ddpm.alphas_cumprod)
    weight = snr.clamp(max=min_snr) / snr
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    unet.train()
    text_encoder.train(text_lr is not None)
    for step in range(steps):
        warmup_cosine(opt, 1.0, step, steps, steps // 20)
        for g in opt.param_groups:
            g["lr"] *= g["base"]
        pick = torch.randint(0, len(lat), (batch,), generator=gen)
        variant = torch.randint(0, data.PROMPT_VARIANTS, (batch,), generator=gen)
        tokens = ids[digit[pick], position[pick], variant]
        drop = torch.rand(batch, generator=gen) < PROMPT_DROP
        tokens = torch.where(drop[:, None], empty[None], tokens)
        x0 = lat[pick]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (batch,), generator=gen)
        context = text_encoder(tokens)[0]
        err = (unet(ddpm.add_noise(x0, noise, t), t, context).sample - noise).pow(2).mean(dim=(1, 2, 3))
        optimizer_step(opt, (weight[t] * err).mean(), params)
        if ema:
            d = min(ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(averaged, [p.detach() for p in params], 1 - d)
    if ema:
        with torch.no_grad():
            for p, a in zip(params, averaged):
                p.copy_(a)
    unet.eval()
    text_encoder.eval()
    text_encoder.requires_grad_(False)
    return unet


def lora_config():
    from peft import LoraConfig  # optional and heavy: building the LoRAs only

    return LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none",
                      target_modules=["conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0"])
