"""Evaluators of any model: perplexity + generations of causal LMs, and the one result shape every evaluator returns
(the demo zoo's own evaluators live with the zoo, in :mod:`studio.zoo`; images of SD / SDXL / Flux pipelines are
:class:`studio.preview.DiffusionPreviewer`'s, which returns the same shape).

Every evaluator returns the same shape from ``evaluate(state_dict)`` (and ``evaluate_module(module)``)::

    {"metric": "accuracy" | "perplexity" | "style" | "image",
     "per_task": {task: float}, "average": float, "samples": None | {prompt: text} | uint8 H×W×3 grid | [PIL],
     "table": {...} and "notes": [str], only where an evaluator has them (see common.result)}

Two budgets: ``preview`` (≤ 0.3 s per call for the zoo models on a 2-core CPU) and ``report`` (all test data).
Build an evaluator once and call ``evaluate`` repeatedly: modules and data are resident.
"""

from .common import BUDGETS, LOWER_IS_BETTER, lower_is_better, normalized, result
from .text import LLMEvaluator, continuation, greedy, perplexity_of, sampler, token_windows

__all__ = ["BUDGETS", "LOWER_IS_BETTER", "lower_is_better", "normalized", "result", "LLMEvaluator", "continuation",
           "greedy", "perplexity_of", "sampler", "token_windows"]
