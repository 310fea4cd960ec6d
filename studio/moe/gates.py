"""Router rows for a MoE built from dense experts, one per (layer, gated expert), with mergekit-moe's semantics:

* ``hidden``/``hidden_last``: the base model's hidden state at each layer's input (``hidden_states[i]``, before
  layer i) for the last token of each positive prompt, averaged over the prompts, minus the same for the negative
  prompts, scaled to unit length per layer. ``hidden_avg`` averages over the tokens instead of taking the last one.
  Each prompt runs alone (mergekit batches them left-padded, which shifts the positions of shorter prompts: equal
  with ours when the prompts have equal token counts).
* ``cheap_embed``: the sum of the prompts' token embeddings, unit length (negatives: minus their own unit vector,
  then unit length again), the same row for every layer.
* ``random``: standard normal; ``uniform_random``: U(−√(1/h), √(1/h)), nn.Linear's initialisation; seeded.

Prompts are prefixed with the tokenizer's BOS text and tokenized without special tokens, as mergekit does.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from .config import MoESpec


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def prompt_ids(tokenizer, prompts: list[str]) -> list[torch.Tensor]:
    bos = tokenizer.bos_token or ""
    return [torch.tensor(tokenizer(bos + p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in prompts]


def hidden_rows(model, ids: list[torch.Tensor], average: bool) -> torch.Tensor:
    """(layers, hidden): the mean over prompts of each layer's input hidden state (last token, or token mean)."""
    rows = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for one in ids:
            out = model(one[None].to(device), output_hidden_states=True, return_dict=True)
            states = torch.stack(out.hidden_states[:-1])[:, 0].float()  # (layers, tokens, hidden)
            rows.append(states.mean(dim=1) if average else states[:, -1])
    return torch.stack(rows).mean(dim=0).cpu()


def embed_row(embed: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
    """(hidden,): the prompts' summed token embeddings, unit length."""
    return unit(torch.cat([embed[one] for one in ids]).float().sum(dim=0))


def random_gates(spec: MoESpec, layers: int, hidden: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (layers, len(spec.gated), hidden)
    if spec.gate_mode == "random":
        return torch.randn(shape, generator=g)
    scale = math.sqrt(1.0 / hidden)
    return torch.rand(shape, generator=g) * 2 * scale - scale


def prompt_gates(spec: MoESpec, layers: int, tokenizer, embed: torch.Tensor | None = None, model=None,
                 quiet: bool = False) -> torch.Tensor:
    """(layers, gated experts, hidden) from each gated expert's prompts (``embed`` for cheap_embed, ``model``, a
    transformers causal LM of the base, for the hidden modes)."""
    rows = []
    for e in tqdm(spec.gated, desc="expert prompts", unit="expert", disable=quiet):
        pos, neg = prompt_ids(tokenizer, e.positive_prompts), prompt_ids(tokenizer, e.negative_prompts)
        if spec.gate_mode == "cheap_embed":
            row = embed_row(embed, pos) - (embed_row(embed, neg) if neg else 0)
            rows.append(unit(row).expand(layers, -1))
            continue
        average = spec.gate_mode == "hidden_avg"
        row = hidden_rows(model, pos, average) - (hidden_rows(model, neg, average) if neg else 0)
        rows.append(unit(row))
    return torch.stack(rows, dim=1)
