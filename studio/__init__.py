"""Merge Studio: model merging for LLMs, diffusion checkpoints and LoRAs, as a library, a CLI and a Gradio studio."""

__version__ = "0.1.0"  # before the imports below: the modules they load read it

# The built-in extensions whose hooks register themselves when imported (torch only; nothing heavy at module top):
# engine.SIDE_FILE_HOOKS ← EMR's masks and rescalers in a merged folder
from .engine import emr  # noqa: E402,F401
# engine.METADATA_HOOKS ← modelspec and sd_merge_recipe keys of a single-file diffusion merge
from .sd import metadata  # noqa: E402,F401
