"""Recipes: mergekit YAML in and out, validated against method declarations; per-tensor parameter resolution."""

from .model import InputModel, Recipe, Slice
from .resolve import evaluate_setting, interpolate, resolve_param

__all__ = ["InputModel", "Recipe", "Slice", "evaluate_setting", "interpolate", "resolve_param"]
