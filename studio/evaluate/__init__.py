"""Evaluators: task accuracy, perplexity + generations, diffusion samples + style scores.

Every evaluator returns the same shape from ``evaluate(state_dict)`` (and ``evaluate_module(module)``)::

    {"metric": "accuracy" | "perplexity" | "style" | "image",
     "per_task": {task: float}, "average": float, "samples": None | {prompt: text} | uint8 H×W×3 grid | [PIL]}

Two budgets: ``preview`` (≤ 0.3 s per call for the zoo models on a 2-core CPU) and ``report`` (all test data).
Build an evaluator once and call ``evaluate`` repeatedly: modules and data are resident.
"""

from .common import BUDGETS, normalized, result
from .diffusion import DiffusionEvaluator, SDImageEvaluator
from .text import LLMEvaluator, TextEvaluator, greedy, perplexity_of
from .vision import VisionEvaluator

__all__ = [
    "BUDGETS", "normalized", "result", "VisionEvaluator", "TextEvaluator", "LLMEvaluator", "DiffusionEvaluator",
    "SDImageEvaluator", "greedy", "perplexity_of",
]
