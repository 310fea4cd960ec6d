"""The diffusion zoo's evaluator: fixed prompts and seeds through diffusers' ``StableDiffusionPipeline``, one style
score per style, and the pictures as a grid."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from ..evaluate.common import check_budget, result
from . import diffusion_data as data
from .diffusion import GUIDANCE

# (pictures, DDIM steps); the preview's 8 pictures come back as one row
BUDGET_SIZES = {"preview": (8, 12), "report": (30, 25)}
COMPONENTS = ("unet", "text_encoder", "vae")


def load_pipeline(folder: str | Path, device: str = "cpu"):
    """The ``StableDiffusionPipeline`` of a local diffusers folder (never the network)."""
    from diffusers import StableDiffusionPipeline  # optional and heavy: only when diffusion pictures are drawn

    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise StudioError("not a diffusers pipeline folder (no model_index.json)", where=str(path),
                          hint="rebuild the zoo: python -m studio zoo build --family diffusion")
    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_images(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float = GUIDANCE) -> torch.Tensor:
    """``[N, 3, H, W]`` pictures in [0, 1], one per (prompt, seed), each from its own seeded CPU generator."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                output_type="pt").images.float().cpu()


class DiffusionEvaluator:
    """Draws fixed prompts with fixed seeds; ``per_task`` holds one style score per style (0 = the base look of the
    training pictures, 1 = that style's training pictures); ``samples`` is an ``H×W×3`` uint8 grid (the preview's
    8 pictures in one row)."""

    metric = "style"

    def __init__(self, base: str | Path, styles: list[str] | None = None, budget: str = "preview",
                 device: str = "cpu", seed: int = 0):
        check_budget(budget)
        self.styles = list(styles or data.STYLES)
        n, self.steps = BUDGET_SIZES[budget]
        self.prompts = [p for p, _, _ in data.fixed_prompts(n)]
        self.seeds = [seed + i for i in range(n)]
        self.cols = 8 if budget == "preview" else 10
        self.pipe = load_pipeline(base, device)

    def images(self, pipe=None, prompts: list[str] | None = None, seeds: list[int] | None = None) -> torch.Tensor:
        """The pictures of ``prompts`` (the fixed ones by default) with ``seeds``."""
        return render_images(pipe or self.pipe, prompts or self.prompts, seeds or self.seeds, self.steps)

    def evaluate_module(self, pipe=None) -> dict:
        images = self.images(pipe)
        scores = data.style_scores(images)
        return result(self.metric, {s: scores[s] for s in self.styles}, data.grid(images, self.cols))

    def load_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a pipeline state dict (keys ``unet.…``, ``text_encoder.…``, ``vae.…``) into the pipeline."""
        for name in COMPONENTS:
            module = getattr(self.pipe, name)
            own = module.state_dict()
            missing = [k for k in own if f"{name}.{k}" not in state_dict]
            if missing:
                raise StudioError(f"the {name} weights are missing {len(missing)} keys (e.g. {name}.{missing[0]})",
                                  hint="pass the whole pipeline's weights (keys unet.…, text_encoder.…, vae.…)")
            with torch.no_grad():
                for k, v in own.items():
                    v.copy_(state_dict[f"{name}.{k}"].to(v.dtype))

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        self.load_state(state_dict)
        return self.evaluate_module(self.pipe)
