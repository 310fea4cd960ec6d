"""Diffusion evaluators: the zoo's fixed-seed sample grid + style scores, and prompt/seed images from SD pipelines."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from .common import check_budget, result

# (samples, DDIM steps)
BUDGET_SIZES = {"preview": (8, 8), "report": (64, 25)}


class DiffusionEvaluator:
    """Samples the zoo UNet from fixed seeds; ``per_task`` holds one style score per style (0 = the base look of
    the training images, 1 = that style's training images); ``samples`` is an ``H×W×3`` uint8 grid."""

    metric = "style"

    def __init__(self, base: str | Path, styles: list[str] | None = None, budget: str = "preview",
                 device: str = "cpu", seed: int = 0):
        from diffusers import UNet2DModel

        from ..zoo import diffusion as D

        check_budget(budget)
        self.D = D
        self.styles = list(styles or D.STYLES)
        self.seed = seed
        self.n, self.steps = BUDGET_SIZES[budget]
        self.unet = UNet2DModel.from_pretrained(str(base)).to(device).eval()

    @torch.no_grad()
    def evaluate_module(self, unet) -> dict:
        images = self.D.sample(unet, self.n, self.steps, self.seed)
        scores = self.D.style_scores(images)
        return result(self.metric, {s: scores[s] for s in self.styles}, self.D.grid(images))

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        own = self.unet.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise StudioError(f"UNet weights are missing {len(missing)} keys (e.g. {missing[0]!r})")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state_dict[k].to(v.dtype))
        return self.evaluate_module(self.unet)


class SDImageEvaluator:
    """One image per (prompt, seed) from a Stable Diffusion pipeline: a diffusers folder, or a single
    ``.safetensors``/``.ckpt`` file with a local ``config`` (a diffusers folder or original YAML) — never the network.

    ``evaluate_module(pipe)`` / ``evaluate(state_dict)`` (UNet weights in diffusers layout) return
    ``{"metric": "image", "per_task": {}, "average": nan, "samples": [PIL.Image, ...]}``.
    """

    metric = "image"
    STEPS = {"preview": 8, "report": 30}

    def __init__(self, model: str | Path, prompts: list[str], seeds: list[int] | None = None,
                 budget: str = "preview", device: str = "cpu", config: str | Path | None = None,
                 size: int | None = None):
        from diffusers import DiffusionPipeline, StableDiffusionPipeline

        check_budget(budget)
        path = Path(model)
        if path.is_dir():
            self.pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
        elif path.is_file():
            if config is None:
                raise StudioError("a single-file checkpoint needs a local config", where=str(path),
                                  hint="pass config=<diffusers folder or original .yaml>")
            kwargs = {"local_files_only": True}
            if Path(config).is_dir():
                kwargs["config"] = str(config)
            else:
                kwargs["original_config"] = str(config)
            self.pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        else:
            raise StudioError("model not found", where=str(path))
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.prompts, self.seeds = list(prompts), list(seeds or [0])
        self.steps, self.size, self.device = self.STEPS[budget], size, device

    @torch.no_grad()
    def evaluate_module(self, pipe=None) -> dict:
        pipe = pipe or self.pipe
        images = []
        for prompt in self.prompts:
            for seed in self.seeds:
                gen = torch.Generator(device="cpu").manual_seed(seed)
                kw = {"height": self.size, "width": self.size} if self.size else {}
                images.append(pipe(prompt, num_inference_steps=self.steps, generator=gen, **kw).images[0])
        return result(self.metric, {}, images)

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        self.pipe.unet.load_state_dict(state_dict, strict=False)
        return self.evaluate_module(self.pipe)
