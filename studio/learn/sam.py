"""Sharpness-aware minimisation around a base optimiser (SAM, Foret et al. 2021; adaptive ASAM, Kwon et al. 2021).

One update: gradient g at w; perturbation e = ρ · s² ⊙ g / ‖s ⊙ g‖ with s = |w| (adaptive) or 1 (plain);
gradient g' at w + e; back to w; the base optimiser steps with g'. At w = 0 the adaptive perturbation is 0.
"""

from __future__ import annotations

import torch


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam, rho: float = 0.07,
                 adaptive: bool = True, **base_kw):
        if rho < 0:
            raise ValueError("rho must be ≥ 0")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kw))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kw)
        self.param_groups = self.base_optimizer.param_groups

    def _scale(self, p, group):
        return p.abs() if group["adaptive"] else torch.ones_like(p)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        norms = [(self._scale(p, g) * p.grad).norm(2) for g in self.param_groups for p in g["params"]
                 if p.grad is not None]
        return torch.stack(norms).norm(2) if norms else torch.tensor(0.0)

    @torch.no_grad()
    def perturbation(self) -> list[torch.Tensor | None]:
        """e for every parameter from its current gradient (not applied)."""
        norm = self.grad_norm()
        out = []
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    out.append(None)
                    continue
                s = self._scale(p, g)
                out.append(g["rho"] * s * s * p.grad / (norm + 1e-12))
        return out

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move to w + e (the gradient at w must be in ``.grad``)."""
        es = self.perturbation()
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                e = es[i]
                i += 1
                if e is None:
                    continue
                p.add_(e)
                self.state[p]["e"] = e
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to w and step the base optimiser with the gradient taken at w + e."""
        for g in self.param_groups:
            for p in g["params"]:
                e = self.state[p].pop("e", None)
                if e is not None:
                    p.sub_(e)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """Full SAM update; ``closure`` must zero grads, compute the loss and call backward, and return the loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (two forward/backward passes per update)")
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss
