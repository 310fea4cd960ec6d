"""Key → group maps. Detectors are tried in order; the first that recognises a model's keys wins."""

from __future__ import annotations

from typing import Callable

from .base import NEVER_MERGE, FlatLayout, Layout, is_mergeable
from .llm import LayerStackLayout, detect_layer_stack

# Each detector takes (keys, config, source) and returns a Layout or None. Diffusion layouts register themselves
# at the front (studio.layout.sd) because SD checkpoints also contain layer stacks (their text encoders).
DETECTORS: list[Callable] = [lambda keys, config, source: detect_layer_stack(keys, config)]


def detect_layout(source) -> Layout:
    keys = source.keys()
    for det in DETECTORS:
        layout = det(keys, source.config, source)
        if layout is not None:
            return layout
    return FlatLayout()


def _register_optional():
    try:
        from . import sd  # noqa: F401  (registers SD1/SD2/SDXL/Flux block layouts)
    except ImportError:
        pass


_register_optional()

__all__ = ["DETECTORS", "FlatLayout", "Layout", "LayerStackLayout", "NEVER_MERGE", "detect_layout", "is_mergeable"]
