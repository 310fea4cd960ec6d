"""The diffusion zoo: a tiny unconditional diffusers ``UNet2DModel`` (16×16 RGB) drawing digit-like shapes.

The base is trained on plain white-on-black digits (scikit-learn's 8×8 digits upsampled to 16×16). Three style
experts are fine-tuned from it, each changing one visual property, so a merge that mixes styles shows it at a
glance: ``ember`` (colour: orange-red strokes), ``bold`` (stroke: dilated, thick strokes) and ``stripes``
(texture: horizontal bands). Each style also has a PEFT LoRA adapter on the UNet's convolutions.

Style scores are numbers computed on generated samples, scaled so that the clean training images of the base
score 0 and those of the style score 1 (see :func:`style_raw` and :func:`style_refs`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .training import optimizer_step, warmup_cosine

STYLES: tuple[str, ...] = ("ember", "bold", "stripes")
STYLE_DOC = {
    "ember": "colour: orange-red strokes",
    "bold": "stroke: thick, dilated strokes",
    "stripes": "texture: strokes banded by horizontal stripes",
}
SIZE = 16
EMBER = torch.tensor([1.0, 0.35, 0.1]).view(1, 3, 1, 1)


def unet_config() -> dict:
    return dict(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8)


def make_unet():
    from diffusers import UNet2DModel  # optional and heavy: the diffusion family only

    return UNet2DModel(**unet_config())


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                clip_sample=True)


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler  # optional and heavy: the diffusion family only

    return DDPMScheduler(**scheduler_config()), DDIMScheduler(**scheduler_config())


@lru_cache(maxsize=1)
def _gray() -> torch.Tensor:
    """All 1,797 digits as ``[N, 1, 16, 16]`` in [0, 1]."""
    from sklearn.datasets import load_digits  # optional and heavy: read once, then cached

    img = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    img = F.interpolate(img, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (img / img.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)).clamp(0, 1)


def _stripe_pattern() -> torch.Tensor:
    rows = torch.arange(SIZE)
    return torch.where((rows % 4) < 2, 1.0, 0.25).view(1, 1, SIZE, 1)


def styled(style: str | None, gray: torch.Tensor | None = None) -> torch.Tensor:
    """RGB images ``[N, 3, 16, 16]`` in [0, 1] of the digits drawn in ``style`` (None = the base look)."""
    g = _gray() if gray is None else gray
    if style == "bold":
        g = F.max_pool2d(g, 3, stride=1, padding=1)
    if style == "stripes":
        g = g * _stripe_pattern()
    rgb = g.expand(-1, 3, -1, -1)
    if style == "ember":
        rgb = g * EMBER
    return rgb.contiguous()


def style_raw(images: torch.Tensor) -> dict[str, float]:
    """Raw style measures of RGB images in [0, 1]: ``ember`` mean (R − B) on ink, ``bold`` ink fraction,
    ``stripes`` share of the row profile at the stripes' period (phase-free)."""
    v = images.amax(dim=1)                                    # [N, H, W] brightness
    ink = v > 0.3
    r, b = images[:, 0], images[:, 2]
    ember = ((r - b) * ink).sum() / ink.sum().clamp_min(1)
    bold = ink.float().mean()
    rows = v.mean(dim=2)                                      # [N, H] row profile
    phase = 2 * math.pi * torch.arange(SIZE) / 4              # the stripes' period is 4 rows, any phase
    power = torch.sqrt((rows * torch.cos(phase)).sum(1) ** 2 + (rows * torch.sin(phase)).sum(1) ** 2)
    stripes = (power / rows.sum(dim=1).clamp_min(1e-6)).mean()
    return {"ember": ember.item(), "bold": bold.item(), "stripes": stripes.item()}


@lru_cache(maxsize=1)
def style_refs() -> dict[str, tuple[float, float]]:
    """Per style ``(raw on base-look training images, raw on that style's training images)``."""
    base = style_raw(styled(None))
    return {s: (base[s], style_raw(styled(s))[s]) for s in STYLES}


def style_scores(images: torch.Tensor) -> dict[str, float]:
    raw = style_raw(images)
    refs = style_refs()
    return {s: (raw[s] - refs[s][0]) / (refs[s][1] - refs[s][0]) for s in STYLES}


def train_unet(unet, style: str | None, steps: int, lr: float, seed: int, batch: int = 32):
    """Epsilon-prediction DDPM training on the digits in ``style`` (random ±1 px shifts as augmentation)."""
    ddpm, _ = make_schedulers()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = styled(style) * 2 - 1
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    unet.train()
    for step in range(steps):
        warmup_cosine(opt, lr, step, steps, steps // 20)
        x0 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x0 = torch.roll(x0, shifts=(dy, dx), dims=(2, 3))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (batch,), generator=gen)
        loss = F.mse_loss(unet(ddpm.add_noise(x0, noise, t), t).sample, noise)
        optimizer_step(opt, loss, params)
    unet.eval()
    return unet


@torch.no_grad()
def sample(unet, n: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``n`` images ``[n, 3, 16, 16]`` in [0, 1] by DDIM with ``steps`` steps from seeded noise (η = 0)."""
    _, ddim = make_schedulers()
    ddim.set_timesteps(steps)
    x = torch.randn((n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        eps = unet(x, t).sample
        x = ddim.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).float()


def grid(images: torch.Tensor, cols: int = 8, scale: int = 4, gap: int = 1) -> np.ndarray:
    """A ``H×W×3`` uint8 grid of images (nearest-neighbour upscaled by ``scale``)."""
    n = images.shape[0]
    rows = math.ceil(n / cols)
    tile = SIZE * scale
    out = np.full((rows * (tile + gap) + gap, cols * (tile + gap) + gap, 3), 40, dtype=np.uint8)
    up = F.interpolate(images, scale_factor=scale, mode="nearest")
    arr = (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (tile + gap), gap + c * (tile + gap)
        out[y:y + tile, x:x + tile] = arr[i]
    return out


def lora_config():
    from peft import LoraConfig  # optional and heavy: building the LoRAs only

    return LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, bias="none",
                      target_modules=["conv1", "conv2", "time_emb_proj"])
