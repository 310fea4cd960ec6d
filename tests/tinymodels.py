"""Tiny Llama-shaped transformers models built in tmp dirs (no network), shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_llama(path: Path, seed: int, *, layers: int = 3, hidden: int = 32, vocab: int = 64, dtype=torch.float32,
               base_state: dict | None = None, noise: float = 0.02, shard: str | None = None) -> Path:
    """Save a tiny LlamaForCausalLM at ``path``. With ``base_state``, the weights are base + noise (a fine-tune)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            sd = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
            model.load_state_dict(sd)
    model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from studio.sources import open_source

    src = open_source(str(path))
    return {k: src.get(k).float().clone() for k in src.keys()}
