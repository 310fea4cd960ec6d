"""Modules of multimodal and encoder–decoder models, as mergekit's ``modules:`` names them (``text_decoder``,
``vision_tower``, ``multi_modal_projector``, ``encoder``, ``decoder``, …): which tensors belong to which module, read
from key names alone — a module's alias appearing as a dotted component of the key (``model.language_model.…`` →
``text_decoder``). mergekit reads the same from a table per architecture; names are enough here, so a new
architecture needs no entry."""

from __future__ import annotations

from .base import Layout
from .llm import LAYER_COUNT_KEYS

# module name → the key components that mark its tensors (the name itself always does)
MODULE_ALIASES: dict[str, tuple[str, ...]] = {
    "text_decoder": ("language_model", "text_model", "llm"),
    "text_encoder": ("text_model", "text_encoder"),
    "vision_tower": ("vision_tower", "vision_model", "visual", "vision_encoder"),
    "vision_model": ("vision_model", "vision_tower", "visual"),
    "multi_modal_projector": ("multi_modal_projector", "mm_projector", "connector", "merger"),
    "audio_tower": ("audio_tower", "audio_model"),
    "encoder": ("encoder",),
    "decoder": ("decoder",),
    "shared": ("shared",),
}
# modules that hold the language head: tensors no module claims (``lm_head``, a top-level norm) go to the first of
# these the recipe names — mergekit's tables put the head in the text decoder
HEAD_OWNERS = ("text_decoder", "decoder", "default")


def module_aliases(name: str) -> tuple[str, ...]:
    return (name,) + MODULE_ALIASES.get(name, ())


def module_of(key: str, modules: list[str]) -> str | None:
    """The module of ``modules`` a tensor belongs to: the one whose alias comes first among the key's components;
    ``default`` (mergekit's name for a single-module model) takes everything; keys no module claims go to the head's
    owner; None when the key belongs to a known module the recipe does not name."""
    if "default" in modules:
        return "default"
    parts = key.split(".")
    best, at = None, len(parts)
    for name in modules:
        for alias in module_aliases(name):
            if alias in parts and parts.index(alias) < at:
                best, at = name, parts.index(alias)
    if best is not None:
        return best
    if any(alias in parts for known in MODULE_ALIASES for alias in module_aliases(known)):
        return None
    return next((m for m in HEAD_OWNERS if m in modules), modules[0])


# where a config keeps a module's layer count (dotted paths, first found wins): updated when slices change it
LAYER_COUNT_FIELDS: dict[str, tuple[str, ...]] = {
    "default": LAYER_COUNT_KEYS,
    "text_decoder": ("text_config.num_hidden_layers", "num_hidden_layers"),
    "vision_tower": ("vision_config.num_hidden_layers", "vision_config.depth"),
    "vision_model": ("vision_config.num_hidden_layers", "vision_config.depth"),
    "encoder": ("encoder_layers", "num_layers"),
    "decoder": ("decoder_layers", "num_decoder_layers"),
}


class ModulesLayout(Layout):
    """Groups of a merge by modules: each module's own layout, its group ids prefixed ``module:``."""

    def __init__(self, parts: dict[str, Layout]):
        groups = [f"{m}:{g}" for m, lay in parts.items() for g in lay.groups]
        labels = {f"{m}:{g}": f"{m} · {lay.labels.get(g, g)}" for m, lay in parts.items() for g in lay.groups}
        super().__init__(name="modules", groups=groups, labels=labels, shape="flat",
                         description=f"{len(parts)} modules: {', '.join(parts)}")
        self.parts = parts

    def group_of(self, key):
        m = module_of(key, list(self.parts))
        return f"{m}:{self.parts[m].group_of(key)}" if m is not None else "other"
