"""Preview pipelines for real models: diffusers (SD1/SD2/SDXL/Flux) and transformers causal LMs, fed in place by
the live engine; evaluation sets of the user's own. See :mod:`studio.preview.base`."""

from .base import PREVIEWERS, Previewer, previewer_for

__all__ = ["PREVIEWERS", "Previewer", "previewer_for"]
