"""The elementary methods: linear, task arithmetic, SLERP, passthrough (mergekit 0.1.5 names, defaults and
semantics)."""

from __future__ import annotations

import torch

from .cache_blocks import blocked_cast
from .registry import FRACTION, Param, method
from .shared_params import INT8_MASK, LAMBDA, WEIGHT

def weighted_sum(tensors: list[torch.Tensor], weights: list[float], out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ wᵢ·xᵢ in float32 (inputs may be fp16/bf16: the in-place adds upcast them on the fly)."""
    if out is None:
        out = torch.zeros(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    else:
        out.zero_()
    for x, w in zip(tensors, weights):
        out.add_(x, alpha=float(w))
    return out


def _castable(out, out_dtype, tensors) -> bool:
    """Whether to compute block by block (blocked_cast) on contiguous CPU inputs: for a non-float32 result (no
    ``out`` buffer: rounded once per block), or for a float32 result from half-precision inputs — a mixed-dtype
    ``add_`` over a whole tensor is several times slower than over cache-sized blocks (same values either way)."""
    if not all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return False
    if out is None and out_dtype is not None and out_dtype != torch.float32:
        return True
    return ((out is None or out.device.type == "cpu" and out.is_contiguous())
            and any(t.dtype != torch.float32 for t in tensors))


@method(
    "linear",
    params=[WEIGHT, Param("normalize", default=True, kind=bool, doc="divide by the sum of the weights")],
    includes_base=True,
    ref="Wortsman et al. 2022, Model Soups (arXiv 2203.05482); mergekit linear",
    formula="θ = Σᵢ wᵢ·θᵢ / Σᵢ wᵢ  (without normalize: Σᵢ wᵢ·θᵢ)",
    label="Linear (weighted average)",
    pure_inputs=True,
    stored_dtype_inputs=True,
    accepts_out=True,
    casts_output=True,
)
def linear(base, models, *, weight, normalize, out=None, out_dtype=None):
    """θ = Σᵢ wᵢ θᵢ, divided by Σᵢ wᵢ when ``normalize`` (the default). The base counts as a model when listed."""
    total = float(sum(weight))
    divide = normalize and abs(total) > 1e-8  # mergekit leaves a zero total undivided rather than dividing by zero
    if _castable(out, out_dtype, models):
        flat = [m.reshape(-1) for m in models]

        def fill(s, e, acc):
            weighted_sum([m[s:e] for m in flat], weight, acc)
            return acc.div_(total) if divide else acc

        return blocked_cast(models[0].shape, out_dtype if out is None and out_dtype else torch.float32, fill,
                            out=out)
    out = weighted_sum(models, weight, out)
    if divide:
        out.div_(total)
    return out if out_dtype is None else out.to(out_dtype)


TASK_ARITHMETIC_PARAMS = [
    WEIGHT,
    Param("normalize", default=False, kind=bool, doc="divide the summed delta by Σ weights"),
    LAMBDA,
    Param("density", per_model=True, default=1.0, range=(0.0, 1.0), bounds=FRACTION,
          doc="accepted for mergekit compatibility; task arithmetic keeps the whole delta", compat=True),
    Param("rescale", default=False, kind=bool, doc="accepted for mergekit compatibility; no effect here", compat=True),
    INT8_MASK,
]


@method(
    "task_arithmetic",
    params=TASK_ARITHMETIC_PARAMS,
    needs_base=True,
    ref="Ilharco et al. 2023, Editing Models with Task Arithmetic (arXiv 2212.04089); mergekit task_arithmetic",
    formula="θ = θ₀ + λ·Σᵢ wᵢ·(θᵢ − θ₀)  (normalize: ÷ Σᵢ wᵢ)",
    label="Task arithmetic",
    pure_inputs=True,
    stored_dtype_inputs=True,
    accepts_out=True,
    casts_output=True,
)
def task_arithmetic(base, models, *, weight, normalize, lambda_, density=None, rescale=None, int8_mask=None,
                    out=None, out_dtype=None):
    """τᵢ = θᵢ − θ₀;  θ = θ₀ + λ·Σᵢ wᵢ τᵢ (divided by Σᵢ wᵢ when ``normalize``)."""
    total = float(sum(weight))
    scale = lambda_ / total if normalize and abs(total) >= 1e-8 else lambda_
    coeffs = [scale * float(w) for w in weight]
    keep = 1.0 - sum(coeffs)

    # θ₀ + Σ cᵢ(θᵢ − θ₀) = (1 − Σcᵢ)·θ₀ + Σ cᵢθᵢ: n + 1 passes over memory and no temporaries per model
    def combine(acc, b, ms):
        acc.copy_(b).mul_(keep)
        for m, c in zip(ms, coeffs):
            acc.add_(m, alpha=c)
        return acc

    if _castable(out, out_dtype, [base, *models]):
        b, ms = base.reshape(-1), [m.reshape(-1) for m in models]
        return blocked_cast(base.shape, out_dtype if out is None and out_dtype else torch.float32,
                            lambda s, e, acc: combine(acc, b[s:e], [m[s:e] for m in ms]), out=out)
    out = combine(torch.empty(base.shape, dtype=torch.float32, device=base.device) if out is None else out,
                  base, models)
    return out if out_dtype is None else out.to(out_dtype)


def slerp_tensors(t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995,
                  eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two whole tensors (t = fraction toward ``b``); lerp when nearly collinear."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    na, nb = torch.linalg.vector_norm(fa), torch.linalg.vector_norm(fb)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = torch.dot(fa / na, fb / nb).clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return torch.lerp(a, b, t)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * a + (torch.sin(t * theta) / s) * b


@method(
    "slerp",
    params=[Param("t", range=(0.0, 1.0), bounds=FRACTION, doc="fraction of the way from the base to the other model", start=0.5)],
    needs_base=True,
    min_models=1,
    max_models=1,
    ref="Shoemake 1985; mergekit slerp",
    formula="Ω = arccos⟨θ₀/‖θ₀‖, θ₁/‖θ₁‖⟩;  θ = sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁  (lerp if |cos Ω| > 0.9995)",
    label="SLERP (two models)",
    pure_inputs=True,
)
def slerp(base, models, *, t):
    """Spherical linear interpolation between the base (t = 0) and the one other model (t = 1), per tensor."""
    return slerp_tensors(float(t), base, models[0])


@method(
    "passthrough",
    params=[Param("scale", default=1.0, per_model=True, range=(0.0, 2.0), doc="multiply the tensor by this")],
    includes_base=True,
    min_models=1, max_models=1,
    ref="mergekit passthrough",
    formula="θ = scale·θ₁",
    label="Passthrough",
    pure_inputs=True,
)
def passthrough(base, models, *, scale):
    """Copy the single input tensor, optionally scaled (mergekit's ``scale``; its default ``None`` means 1)."""
    s = scale[0]
    return models[0].clone() if s is None or float(s) == 1.0 else models[0] * float(s)
