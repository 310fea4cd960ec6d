"""Layouts: which group (layer / block) a tensor belongs to, and its position for gradient interpolation.

A layout is data: an ordered list of group ids plus a key → group rule. The studio draws one slider per group; the
recipe resolver uses ``position(key)`` (t ∈ [0, 1]) to interpolate gradient lists, following mergekit: a layer's t is
its index / (n − 1), and weights outside the layer stack (embeddings, final norm, head) get t = 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

# Tensors that are never averaged: integer buffers, position ids, EMA copies, noise-schedule buffers.
NEVER_MERGE = re.compile(
    r"(^|\.)(position_ids|num_batches_tracked)$|^model_ema\.|(^|\.)(betas|alphas_cumprod|alphas_cumprod_prev|"
    r"sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|"
    r"sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|"
    r"posterior_mean_coef2|logvar)$"
)


def is_mergeable(key: str, dtype: torch.dtype) -> bool:
    """Floating-point weights only; see NEVER_MERGE for the named exceptions (copied from the base instead)."""
    return dtype.is_floating_point and not NEVER_MERGE.search(key)


@dataclass
class Layout:
    name: str
    groups: list[str]
    description: str = ""
    # group id → human label (e.g. "IN04 · down 1, res 0")
    labels: dict[str, str] = field(default_factory=dict)
    # shape of the slider panel: "strip" (LLM layers), "unet" (SD in/mid/out), "flat"
    shape: str = "strip"

    def group_of(self, key: str) -> str:
        raise NotImplementedError

    def position(self, key: str) -> float:
        """t ∈ [0, 1] used to interpolate gradient lists: the position of the key's group."""
        return self.group_position(self.group_of(key))

    def group_position(self, group: str) -> float:
        """t ∈ [0, 1] of a whole group (block layouts: group index / (G − 1)); what a gradient list gives the group's
        tensors, so per-group values shown in the studio are the ones the engine applies."""
        n = len(self.groups)
        return self.groups.index(group) / (n - 1) if n > 1 else 0.0

    def layer_index(self, key: str) -> int | None:
        """For layer-stacked models: the layer number inside the key, else None."""
        return None

    def expert_groups(self, group: str) -> list[str] | None:
        """For the group of tensors holding several experts along dim 0 (a MoE's fused experts): each slice's group,
        else None."""
        return None

    def rename_layer(self, key: str, new_index: int) -> str:
        raise NotImplementedError(f"layout {self.name} has no layer stack")

    def group_keys(self, keys) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for k in keys:
            out.setdefault(self.group_of(k), []).append(k)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "groups": list(self.groups), "shape": self.shape, "description": self.description}


class FlatLayout(Layout):
    """Everything in one group; used when nothing better is detected."""

    def __init__(self):
        super().__init__(name="flat", groups=["ALL"], shape="flat", description="one group for the whole model")

    def group_of(self, key):
        return "ALL"

    def group_position(self, group):
        return 0.0
