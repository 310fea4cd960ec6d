"""How strongly each LoRA of a recipe reaches the merge.

A model ``BASE+LORA:0.8`` is its base with the LoRA applied at strength 0.8; the merge method then scales that model's
delta again, by its weight and λ (and ÷ the summed weights when it normalises). So a LoRA at strength 0.8 in a task
arithmetic merge with λ 0.5 lands at 0.4 — which the studio used to leave unsaid (#17). For ``linear`` and
``task_arithmetic`` the product is exact; methods that trim, drop or elect signs scale what they keep by it (and
those that normalise per entry divide by the weights that agree there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..sources.resolve import ModelRef, short_name, split_strength
from .edit import SettingPath, plain_value, scalar_value
from .model import Recipe

# θ = θ₀ + λ·Σᵢ wᵢ·(θᵢ − θ₀) (÷ Σ w) and θ = Σᵢ wᵢ·θᵢ (÷ Σ w): a model's delta reaches the output times one number
EXACT = ("linear", "task_arithmetic")
PER_LAYER = "per layer"


@dataclass(frozen=True)
class LoraScale:
    """One LoRA of a recipe: the factors its delta is multiplied by on the way into the merge."""

    model: str                  # the recipe's reference, e.g. ``base.safetensors+ink.safetensors:0.8``
    lora: str                   # the LoRA's file or folder
    strength: float
    weight: float | None        # the model's weight; None when the method has none or it differs by layer
    lambda_: float | None       # the method's λ; None when it has none or it differs by layer
    total_weight: float | None  # the summed weights the method divides by (normalize), else None
    effective: float | None     # strength × weight × λ ÷ total; None when no one number says it
    explanation: str            # one line for a person

    def to_dict(self) -> dict:
        return {k.rstrip("_"): v for k, v in asdict(self).items()}


def _factor(recipe: dict, path: SettingPath, names: set[str]) -> float | str | None:
    """A factor's one number, PER_LAYER when it differs by layer, None when the method has no such parameter."""
    if path.name not in names:
        return None
    value = plain_value(recipe, path)
    return PER_LAYER if value is None else value


def _number(value) -> float | None:
    return None if value is None or value == PER_LAYER else float(value)


def _factors(recipe: Recipe, index: int, inputs: list[int]) -> dict[str, float | str]:
    """The factors the method scales model ``index``'s delta by: ``weight``, ``λ`` and ``÷ summed weights``."""
    data, names = recipe.to_dict(), {p.name for p in recipe.spec.params}
    out = {"weight": _factor(data, SettingPath("weight", index), names),
           "λ": _factor(data, SettingPath("lambda"), names)}
    if "normalize" in names and scalar_value(data, SettingPath("normalize"))[0]:
        weights = [_factor(data, SettingPath("weight", i), names) for i in inputs]
        out["÷ summed weights"] = PER_LAYER if PER_LAYER in weights else sum(weights)
    return {k: v for k, v in out.items() if v is not None}


def _effective(strength: float, factors: dict) -> float | None:
    if not factors or PER_LAYER in factors.values() or factors.get("÷ summed weights") == 0:
        return None
    total = strength * factors.get("weight", 1.0) * factors.get("λ", 1.0)
    return total / factors.get("÷ summed weights", 1.0)


def _explain(name: str, strength: float, method: str, factors: dict, effective: float | None) -> str:
    head = f"LoRA {name} at strength {strength:g}"
    if not factors:
        return (f"{head} enters {method} as a whole model (its base plus {strength:g} × the LoRA); {method}'s own "
                f"settings decide its share")
    head += "".join(f" {k if k.startswith('÷') else '× ' + k} {v if v == PER_LAYER else format(v, 'g')}"
                    for k, v in factors.items())
    if effective is None:
        return f"{head}: the effective scale differs by layer"
    if method in EXACT:
        return f"{head} = {effective:.3g} effective"
    if "÷ summed weights" not in factors:
        return f"{head} = {effective:.3g} effective on the entries {method} keeps"
    # sign election divides each entry by the weights that agree on it: all of them, or this model's alone
    alone = strength * factors.get("λ", 1.0)
    return (f"{head} = {effective:.3g} effective where all models agree in sign, up to {alone:.3g} where {method} "
            f"keeps this model's entry alone")


def effective_lora_scales(recipe: Recipe) -> list[LoraScale]:
    """Every LoRA among the recipe's merged models (``BASE+LORA[:strength]``), in recipe order, with its effective
    scale: strength × the model's weight × λ (÷ the summed weights when the method normalises) — each factor where
    the method has it. A LoRA on the base model is not listed: the merge starts from it as it is."""
    spec = recipe.spec
    models = recipe.models or []
    inputs = [i for i, m in enumerate(models) if spec.includes_base or m.model != recipe.base_model]
    out = []
    for i in inputs:
        ref = ModelRef.parse(models[i].model)
        if ref.lora is None:
            continue
        lora, strength = split_strength(ref.lora)
        factors = _factors(recipe, i, inputs)
        effective = _effective(strength, factors)
        out.append(LoraScale(models[i].model, lora, strength, _number(factors.get("weight")),
                             _number(factors.get("λ")), _number(factors.get("÷ summed weights")), effective,
                             _explain(short_name(lora), strength, spec.name, factors, effective)))
    return out
