"""Spherical interpolations from mergekit 0.1.5: NuSLERP, Multi-SLERP and the Karcher mean (whole-tensor
geometry unless an option says rows/columns)."""

from __future__ import annotations

import math

import torch

from .registry import NON_NEGATIVE, Param, method


WEIGHT_REQ = Param("weight", per_model=True, range=(0.0, 2.0), doc="this model's share of the interpolation",
                   start=1.0)


def nuslerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool = False, flatten: bool = True,
                    eps: float = 1e-8) -> torch.Tensor:
    """SLERP of ``v0`` → ``v1`` by fraction ``t``: over the whole tensor (``flatten``), per row (last axis) or per
    column (``row_wise``: mergekit's name for interpolating along axis 0). Collinear vectors fall back to lerp."""
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=1e-7)
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = ((a / na) * (b / nb)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(collinear, 0, cos))
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin
    out = torch.where(collinear, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@method(
    "nuslerp",
    params=[WEIGHT_REQ,
            Param("nuslerp_row_wise", default=False, kind=bool, doc="interpolate each column (axis 0) separately"),
            Param("nuslerp_flatten", default=True, kind=bool, doc="treat the whole tensor as one vector")],
    min_models=2, max_models=2,
    ref="mergekit nuslerp (SLERP with weights; optional task-vector form about the base)",
    formula="t = w₂/(w₁+w₂);  θ = θ₀ + slerp(t, θ₁−θ₀, θ₂−θ₀)  (no base: slerp(t, θ₁, θ₂))",
    label="NuSLERP",
    pure_inputs=True,
)
def nuslerp(base, models, *, weight, nuslerp_row_wise, nuslerp_flatten):
    """SLERP between two models with t = w₂/(w₁+w₂) (0.5 when the weights sum to ~0). With a base, interpolates
    the two task vectors and adds the base back."""
    total = float(sum(weight))
    t = 0.5 if abs(total) < 1e-6 else float(weight[1]) / total
    a, b = models
    if base is None:
        return nuslerp_tensors(t, a, b, nuslerp_row_wise, nuslerp_flatten)
    return base + nuslerp_tensors(t, a - base, b - base, nuslerp_row_wise, nuslerp_flatten)


@method(
    "multislerp",
    params=[WEIGHT_REQ,
            Param("normalize_weights", default=True, kind=bool, doc="divide the weights by their sum"),
            Param("eps", default=1e-8, range=(0.0, 1e-4), bounds=NON_NEGATIVE, doc="numerical floor for norms")],
    min_models=1,
    ref="Goddard, Multi-SLERP (goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit multislerp",
    formula="uᵢ = xᵢ/‖xᵢ‖; μ = Σwᵢuᵢ/‖·‖; v = Σwᵢ(uᵢ−⟨uᵢ,μ⟩μ); θ = (cos‖v‖μ + sin‖v‖·v/‖v‖)·Σwᵢ‖xᵢ‖",
    label="Multi-SLERP",
    pure_inputs=True,
)
def multislerp(base, models, *, weight, normalize_weights, eps):
    """Barycentric interpolation on the hypersphere: project the unit vectors onto the tangent space at their
    weighted mean, average there, map back with the exponential map, and scale by the weighted mean norm.
    xᵢ are task vectors θᵢ − θ₀ when a base is given."""
    if len(models) == 1:
        return models[0].clone()
    x = torch.stack(models)
    if base is not None:
        x.sub_(base)
    flat = x.view(x.shape[0], -1)
    w = torch.tensor([float(v) for v in weight], dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        # No direction to interpolate around: every task vector is zero (fine-tunes that left a tensor as the base
        # had it, e.g. deltas that round to zero in bf16) or the directions cancel. The weighted sum is then the
        # limit (zero, or the cancelling mix); mergekit does this for two inputs and raises for more.
        out = (x * w.view(-1, *([1] * (x.dim() - 1)))).sum(0)
        return out if base is None else out + base
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * w.view(-1, 1)).sum(0)
    tnorm = torch.linalg.vector_norm(tangent) + eps
    out = mean * torch.cos(tnorm) + tangent * (torch.sin(tnorm) / tnorm)
    out = (out * (norms.squeeze(-1) * w).sum()).view(x.shape[1:])
    return out if base is None else out + base


STALL_STEPS = 5


def karcher_mean(tensors: list[torch.Tensor], alphas: list[float], max_iter: int = 10,
                 tol: float = 1e-5) -> torch.Tensor:
    """Weighted Riemannian (Karcher) mean of the directions on the unit sphere, scaled by Σ αᵢ‖xᵢ‖."""
    if len(tensors) == 1:
        return tensors[0].clone()
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    valid = [i for i, nrm in enumerate(norms) if nrm.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    units = [tensors[i] / norms[i] for i in valid]
    a_sum = sum(alphas[i] for i in valid)
    a = [alphas[i] / a_sum for i in valid]
    mean = torch.zeros_like(units[0])
    for ai, u in zip(a, units):
        mean += ai * u
    mnorm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mnorm.item() < tol else mean / mnorm
    best, stalled = math.inf, 0
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for ai, u in zip(a, units):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += ai * (theta / torch.sin(theta)) * (u - dot * mean)
        tnorm = torch.linalg.vector_norm(tangent)
        if tnorm.item() < tol:
            break
        # A tol below float32's resolution (published recipes ask for 1e-9 with max_iter 9999) is never met: the step
        # settles at rounding noise. Once it has not shrunk for STALL_STEPS steps the mean is as good as float32
        # gets, so stop there (mergekit iterates on, minutes per model, to the same tensor).
        best, stalled = (tnorm.item(), 0) if tnorm.item() < best else (best, stalled + 1)
        if stalled >= STALL_STEPS:
            break
        mean = torch.cos(tnorm) * mean + torch.sin(tnorm) * (tangent / tnorm)
        unorm = torch.linalg.vector_norm(mean)
        if unorm.item() > tol:
            mean = mean / unorm
    scale = sum(alpha * nrm for alpha, nrm in zip(alphas, norms))
    return scale * mean


@method(
    "karcher",
    params=[Param("max_iter", default=10, kind=int, range=(1, 100), bounds=(1, None), doc="fixed-point iterations"),
            Param("tol", default=1e-5, range=(0.0, 1e-2), bounds=NON_NEGATIVE, doc="stop when the tangent step is this small")],
    includes_base=True,
    min_models=1,
    ref="Karcher 1977, Riemannian center of mass; mergekit karcher",
    formula="μ ← exp_μ(Σᵢ ⅟N·θᵢ/sin θᵢ·(uᵢ − cos θᵢ·μ)), θᵢ = ∠(μ, uᵢ);  θ = (Σᵢ ‖xᵢ‖/N)·μ",
    label="Karcher mean",
    pure_inputs=True,
)
def karcher(base, models, *, max_iter, tol):
    """Equal-weight Karcher mean of the raw weights' directions on the unit sphere (fixed-point iteration),
    rescaled to the mean norm. The base, when given, is one of the inputs."""
    if len(models) == 1:
        return models[0].clone()
    return karcher_mean(models, [1.0 / len(models)] * len(models), max_iter=max_iter, tol=tol)
