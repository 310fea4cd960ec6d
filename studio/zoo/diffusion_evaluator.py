"""The diffusion zoo's evaluator: a fixed-seed sample grid of the zoo UNet and one style score per style."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from ..evaluate.common import check_budget, result
from . import diffusion as D

# (samples, DDIM steps)
BUDGET_SIZES = {"preview": (8, 8), "report": (64, 25)}


class DiffusionEvaluator:
    """Samples the zoo UNet from fixed seeds; ``per_task`` holds one style score per style (0 = the base look of
    the training images, 1 = that style's training images); ``samples`` is an ``H×W×3`` uint8 grid."""

    metric = "style"

    def __init__(self, base: str | Path, styles: list[str] | None = None, budget: str = "preview",
                 device: str = "cpu", seed: int = 0):
        from diffusers import UNet2DModel  # optional and heavy: only when diffusion samples are drawn

        check_budget(budget)
        self.styles = list(styles or D.STYLES)
        self.seed = seed
        self.n, self.steps = BUDGET_SIZES[budget]
        self.unet = UNet2DModel.from_pretrained(str(base)).to(device).eval()

    @torch.no_grad()
    def evaluate_module(self, unet) -> dict:
        images = D.sample(unet, self.n, self.steps, self.seed)
        scores = D.style_scores(images)
        return result(self.metric, {s: scores[s] for s in self.styles}, D.grid(images))

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        own = self.unet.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise StudioError(f"UNet weights are missing {len(missing)} keys (e.g. {missing[0]!r})")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state_dict[k].to(v.dtype))
        return self.evaluate_module(self.unet)
