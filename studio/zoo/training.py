"""The two pieces every zoo training loop shares: the warm-up + cosine learning-rate schedule and one optimiser step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int) -> None:
    """Set ``opt``'s learning rate for ``step`` of ``total``: linear warm-up over ``warmup`` steps, cosine decay."""
    scale = min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / total))
    for g in opt.param_groups:
        g["lr"] = base_lr * scale


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip_params=None, max_norm: float = 1.0) -> None:
    """Backpropagate ``loss`` and step ``opt``; with ``clip_params``, clip their gradient norm to ``max_norm`` first."""
    opt.zero_grad()
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    opt.step()
