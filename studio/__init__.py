"""Merge Studio: model merging for LLMs, diffusion checkpoints and LoRAs, as a library, a CLI and a Gradio studio."""

__version__ = "0.1.0"  # before the imports below: the modules they load read it

# The built-in extensions register their hooks in the lower floors when imported; importing any studio.x runs this
# first, so the hooks are always in place. Keep these cheap (torch only; no transformers/diffusers/sklearn at their
# module top).
from . import lora  # noqa: E402,F401  sources.REFERENCE_MODIFIERS ← BASE+LORA[:strength] references
from .engine import emr  # noqa: E402,F401  engine.SIDE_FILE_HOOKS ← EMR's masks and rescalers in a merged folder
from .sd import convert  # noqa: E402,F401  engine.plan.INPUT_VIEWS ← ldm files and SD pipelines mixed in one recipe
from .sd import export  # noqa: E402,F401  engine.OUTPUT_FORMS ← SD files in ldm names, SD folders as pipelines
from .sd import metadata  # noqa: E402,F401  engine.METADATA_HOOKS ← modelspec and sd_merge_recipe keys of SD files
from .sd import infotext  # noqa: E402,F401  recipe.files.READERS ← A1111 sd_merge_recipe, Model Mixer infotext
from .sd import vae  # noqa: E402,F401  engine.plan.PLAN_HOOKS ← the VAE slot of SD merges (copy or bake)
from .zoo import unlabeled_data  # noqa: E402,F401  learn.DATA_RESOLVERS ← the `zoo` / `zoo:<family>` data spec
from .zoo import vision_adapter  # noqa: E402,F401  learn.ADAPTER_DETECTORS ← the zoo's vision backbones
from .zoo import search_evaluator  # noqa: E402,F401  search.EVALUATORS ← the `zoo` evaluator of searches
