"""LoRA algebra: exact ΔW for every flavour, baking into checkpoints, combining (exact concat / SVD), extraction."""

from .apply import LoraAppliedSource, apply_lora_source, block_weight_fn, match_network
from .network import LoraModule, LoraNetwork, detect_lora_family, read_lora

__all__ = ["LoraAppliedSource", "LoraModule", "LoraNetwork", "apply_lora_source", "block_weight_fn",
           "detect_lora_family", "match_network", "read_lora"]
