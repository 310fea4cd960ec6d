"""Preview pipelines for real models: diffusers (SD1/SD2/SDXL/Flux) and transformers causal LMs, fed in place by
the live engine; evaluation sets of the user's own. See :mod:`studio.preview.base`.

Importing this package registers the built-in previewers in ``PREVIEWERS`` (diffusion: diffusers is imported only
when a pipeline is built)."""

from .base import PREVIEWERS, Previewer, previewer_for
from .diffusion import DiffusionPreviewer, ImageRequest

__all__ = ["PREVIEWERS", "DiffusionPreviewer", "ImageRequest", "Previewer", "previewer_for"]
