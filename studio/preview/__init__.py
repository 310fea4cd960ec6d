"""Preview pipelines for real models: diffusers (SD1/SD2/SDXL/Flux) and transformers causal LMs, fed in place by
the live engine; evaluation sets of the user's own. See :mod:`studio.preview.base`.

Importing this package registers the built-in previewers in ``PREVIEWERS`` (diffusion: diffusers is imported only
when a pipeline is built)."""

from .base import PREVIEWERS, Previewer, previewer_for
from .diffusion import DiffusionPreviewer, ImageRequest  # registers the diffusion detector
from .evalset import load_eval_set, score_eval_set
from .llm import LLMPreviewer, TextRequest, detect_causal_lm, render_text  # registers the causal-LM detector

__all__ = ["PREVIEWERS", "DiffusionPreviewer", "ImageRequest", "LLMPreviewer", "Previewer", "TextRequest",
           "detect_causal_lm", "load_eval_set", "previewer_for", "render_text", "score_eval_set"]
