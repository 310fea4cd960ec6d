"""Mixture-of-experts models built from dense ones (mergekit-moe's YAML): :func:`build_moe`."""

from .build import build_moe
from .config import MoESpec, load_moe_spec, moe_spec

__all__ = ["MoESpec", "build_moe", "load_moe_spec", "moe_spec"]
