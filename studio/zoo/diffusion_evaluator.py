"""The diffusion zoo's evaluator: fixed prompts and seeds drawn by the studio's own SD1 preview pipeline
(:class:`studio.preview.diffusion.DiffusionPreviewer`, the one that draws a user's SD1 checkpoint), one style score
per style, and the pictures as a grid."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from ..evaluate.common import check_budget, result
from ..preview.diffusion import DiffusionPreviewer
from ..sources import DictSource, open_source
from . import diffusion_data as data
from .diffusion import GUIDANCE

# (pictures, DDIM steps); the preview's 8 pictures come back as one row
BUDGET_SIZES = {"preview": (8, 12), "report": (30, 25)}


def open_previewer(folder: str | Path, device: str = "cpu") -> DiffusionPreviewer:
    """The studio's SD1 preview pipeline for a zoo pipeline folder, holding that folder's own weights."""
    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise StudioError("not a diffusers pipeline folder (no model_index.json)", where=str(path),
                          hint="rebuild the zoo: python -m studio zoo build --family diffusion")
    source = open_source(str(path))
    previewer = DiffusionPreviewer(source, device=device)
    previewer.load(source)  # the previewer builds its modules without weights (meta device, then empty memory)
    return previewer


@torch.no_grad()
def render_images(previewer: DiffusionPreviewer, prompts: list[str], seeds: list[int], steps: int,
                  guidance: float = GUIDANCE) -> torch.Tensor:
    """``[N, 3, H, W]`` pictures in [0, 1], one per (prompt, seed) pair, each from its own seeded CPU generator.

    The previewer's ``render`` draws every prompt with every seed, one pipeline call per prompt; scoring wants 30
    different prompts in one batch (a tiny UNet's step costs about the same for 1 picture as for 30), so this calls
    the previewer's pipeline and scheduler directly. A test checks both give the same pictures."""
    if len(prompts) != len(seeds):
        raise StudioError(f"{len(prompts)} prompts but {len(seeds)} seeds", hint="give one seed per prompt")
    pipe = previewer.pipe
    pipe.scheduler = previewer.scheduler("default")   # the zoo's DDIM, as render(sampler="default") takes it
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    return pipe(list(prompts), num_inference_steps=int(steps), guidance_scale=float(guidance), generator=gens,
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
        self.previewer = open_previewer(base, device)
        self.keys = list(self.previewer.reference.keys())

    def images(self, prompts: list[str] | None = None, seeds: list[int] | None = None,
               previewer: DiffusionPreviewer | None = None) -> torch.Tensor:
        """The pictures of ``prompts`` (the fixed ones by default) with ``seeds``, from the weights loaded last (or
        from ``previewer``'s, e.g. one attached to a live merge)."""
        return render_images(previewer or self.previewer, prompts or self.prompts, seeds or self.seeds, self.steps)

    def load_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Put a pipeline state dict (keys ``unet.…``, ``text_encoder.…``, ``vae.…``) into the pipeline."""
        missing = [k for k in self.keys if k not in state_dict]
        if missing:  # the previewer's load fills what it is given: a partial state would leave stale weights
            raise StudioError(f"the weights are missing {len(missing)} of the pipeline's tensors (e.g. {missing[0]})",
                              hint="pass the whole pipeline's weights (keys unet.…, text_encoder.…, vae.…)")
        self.previewer.load(DictSource({k: state_dict[k] for k in self.keys}, ref="<zoo evaluation>"))

    def evaluate_module(self, previewer: DiffusionPreviewer | None = None) -> dict:
        """The evaluators' shared ``evaluate_module``: here the module is a whole pipeline (a DiffusionPreviewer;
        by default the evaluator's own, holding the weights loaded last)."""
        images = self.images(previewer=previewer)
        scores = data.style_scores(images)
        return result(self.metric, {s: scores[s] for s in self.styles}, data.grid(images, self.cols))

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        self.load_state(state_dict)
        return self.evaluate_module()
