"""Recipes: mergekit YAML in and out, validated against method declarations; per-tensor parameter resolution."""

from .lora_scale import LoraScale, effective_lora_scales
from .model import InputModel, Recipe, Slice
from .resolve import evaluate_setting, interpolate, resolve_param

__all__ = ["InputModel", "LoraScale", "Recipe", "Slice", "effective_lora_scales", "evaluate_setting", "interpolate",
           "resolve_param"]
