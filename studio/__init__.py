"""Merge Studio: model merging for LLMs, diffusion checkpoints and LoRAs, as a library, a CLI and a Gradio studio."""

__version__ = "0.1.0"

# The built-in extensions register their hooks in the lower floors when imported; importing any studio.x runs this
# first, so the hooks are always in place. Keep these cheap (no transformers/diffusers/sklearn at their module top).
from . import lora  # noqa: E402,F401  studio.sources.REFERENCE_MODIFIERS: BASE+LORA[:strength] references
from .sd import vae  # noqa: E402,F401  studio.engine.plan.PLAN_HOOKS: the VAE slot of SD merges (copy or bake)
