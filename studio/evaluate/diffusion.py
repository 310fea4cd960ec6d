"""Prompt/seed images from Stable Diffusion pipelines (the diffusion zoo's evaluator lives with the zoo)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from .common import check_budget, result


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
        from diffusers import DiffusionPipeline, StableDiffusionPipeline  # optional and heavy: only for SD images

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
