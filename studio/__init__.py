"""Merge Studio: model merging for LLMs, diffusion checkpoints and LoRAs, as a library, a CLI and a Gradio studio."""

__version__ = "0.1.0"
