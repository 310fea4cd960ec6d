"""Key → group maps. Detectors are tried in order; the first that recognises a model's keys wins."""

from __future__ import annotations

from typing import Callable

from .base import NEVER_MERGE, FlatLayout, Layout, is_mergeable
from .inferred import detect_inferred_layout
from .llm import LayerStackLayout, detect_layer_stack
from .sd import detect_sd_layout

# Each detector takes (keys, config, source) and returns a Layout or None. Diffusion layouts come first because SD
# checkpoints also contain layer stacks (their text encoders). A family defined above this package appends its own.
DETECTORS: list[Callable] = [detect_sd_layout, lambda keys, config, source: detect_layer_stack(keys, config)]
# Last: a layout inferred from repeated `<stack>.<i>.` key names, for models (DiTs, …) nothing above recognises.
DETECTORS.append(detect_inferred_layout)


def detect_layout(source) -> Layout:
    keys = source.keys()
    for det in DETECTORS:
        layout = det(keys, source.config, source)
        if layout is not None:
            return layout
    return FlatLayout()


__all__ = ["DETECTORS", "FlatLayout", "Layout", "LayerStackLayout", "NEVER_MERGE", "detect_layout", "is_mergeable"]
