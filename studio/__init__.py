"""Merge Studio: model merging for LLMs, diffusion checkpoints and LoRAs, as a library, a CLI and a Gradio studio."""

__version__ = "0.1.0"

# The built-in extensions register their hooks into the lower packages when imported; importing them here means
# any ``import studio.x`` has them registered.
from .zoo import unlabeled_data  # noqa: E402,F401  studio.learn's `zoo` / `zoo:<family>` data spec
from .zoo import vision_adapter  # noqa: E402,F401  studio.learn's adapter for the zoo's vision backbones
