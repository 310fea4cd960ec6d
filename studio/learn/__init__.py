"""Data-aware merging: AdaMerging, SAMerging, FDA, Fisher and RegMean → coefficients (a recipe) or weights.

Entry point: ``run_learned(method, base, experts, data, device=..., steps=..., progress=...) -> LearnResult``.
The learners are declared with ``@learner`` (registry.py): ``list_learners()``, ``get_learner(name)``,
``list_variants()``.
"""

from .api import RUN_OPTIONS, LearnResult, run_learned
from .registry import LearnerSpec, Variant, get_learner, get_variant, learner, list_learners, list_variants

# importing the learner modules registers them, in this order (the order of the CLI's help, the Optimize panel's
# choices and the zoo report's rows): AdaMerging, SAMerging; FDA; Fisher, RegMean
from . import coefficient_learners, fda, closed_form  # noqa: E402,F401  isort: skip

__all__ = ["RUN_OPTIONS", "LearnResult", "LearnerSpec", "Variant", "get_learner", "get_variant", "learner",
           "list_learners", "list_variants", "run_learned"]
