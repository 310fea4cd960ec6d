"""mergekit-moe's YAML: which dense models become the experts of a mixture-of-experts model, and how its routers
are initialised. Read into plain dataclasses; every mistake a user can make is a StudioError naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StudioError
from ..recipe.limits import parse_yaml

# prompt-based gates: "hidden" (= "hidden_last") takes each prompt's last-token hidden state at every layer's input,
# "hidden_avg" the mean over its tokens; "cheap_embed" the prompts' token embeddings (one vector for all layers)
PROMPT_GATES = ("hidden", "hidden_last", "hidden_avg", "cheap_embed")
RANDOM_GATES = ("random", "uniform_random")
ARCHITECTURES = ("mixtral", "qwen2_moe")
TOP_KEYS = {"base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture"}
EXPERT_KEYS = {"source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale"}


@dataclass
class ExpertSpec:
    source_model: str
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass
class MoESpec:
    base_model: str
    experts: list[ExpertSpec]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    shared_experts: list[ExpertSpec] = field(default_factory=list)
    architecture: str = "mixtral"

    @property
    def gated(self) -> list[ExpertSpec]:
        """The experts that get a router row: the routed ones, then a shared expert whose gate is learned from
        prompts (or drawn at random) — a shared expert without prompts keeps a zero gate (a constant ½)."""
        shared = [e for e in self.shared_experts if e.positive_prompts or self.gate_mode in RANDOM_GATES]
        return self.experts + shared


def _prompts(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise StudioError("prompts are a list of strings", where=where, hint='e.g. positive_prompts: ["write a poem"]')
    return list(value)


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudioError(f"{value!r} is not a number", where=where)
    return float(value)


def _expert(item, where: str) -> ExpertSpec:
    if isinstance(item, str):
        item = {"source_model": item}
    if not isinstance(item, dict) or not isinstance(item.get("source_model"), str):
        raise StudioError("an expert needs source_model (a model path or hub id)", where=where,
                          hint="experts: [{source_model: path/to/model, positive_prompts: [...]}]")
    unknown = set(item) - EXPERT_KEYS
    if unknown:
        raise StudioError(f"unknown key {sorted(unknown)[0]!r}", where=where, hint=f"keys: {', '.join(sorted(EXPERT_KEYS))}")
    return ExpertSpec(item["source_model"], _prompts(item.get("positive_prompts"), f"{where}.positive_prompts"),
                      _prompts(item.get("negative_prompts"), f"{where}.negative_prompts"),
                      _number(item.get("noise_scale"), f"{where}.noise_scale"),
                      _number(item.get("residual_scale"), f"{where}.residual_scale"))


def moe_spec(data, where: str = "moe config") -> MoESpec:
    """Validate a parsed mergekit-moe config (the checks mergekit makes, as errors instead of log lines)."""
    if not isinstance(data, dict):
        raise StudioError("a mergekit-moe config is a mapping", where=where, hint="base_model: …, experts: [...]")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise StudioError(f"unknown key {sorted(unknown)[0]!r}", where=where, hint=f"keys: {', '.join(sorted(TOP_KEYS))}")
    if not isinstance(data.get("base_model"), str):
        raise StudioError("base_model is missing", where=where, hint="the dense model whose attention, embeddings and "
                                                                     "norms the MoE keeps")
    experts = data.get("experts")
    if not isinstance(experts, list) or not experts:
        raise StudioError("experts is missing or empty", where=where, hint="experts: [{source_model: …}, …]")
    spec = MoESpec(data["base_model"], [_expert(e, f"experts[{i}]") for i, e in enumerate(experts)],
                   shared_experts=[_expert(e, f"shared_experts[{i}]")
                                   for i, e in enumerate(data.get("shared_experts") or [])])
    spec.gate_mode = str(data.get("gate_mode", "hidden"))
    if spec.gate_mode not in PROMPT_GATES + RANDOM_GATES:
        raise StudioError(f"unknown gate_mode {spec.gate_mode!r}", where="gate_mode",
                          hint=f"one of {', '.join(PROMPT_GATES + RANDOM_GATES)}")
    spec.dtype = data.get("dtype")
    k = data.get("experts_per_token", 2)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(spec.experts):
        n = len(spec.experts)
        raise StudioError(f"experts_per_token is {k!r}, and this config has {n} expert{'s' * (n != 1)}",
                          where="experts_per_token", hint=f"give a whole number from 1 to {n} (the default is 2)")
    spec.experts_per_token = k
    arch = data.get("architecture") or ("qwen2_moe" if spec.shared_experts else "mixtral")
    arch = {"qwen": "qwen2_moe", "qwen2moe": "qwen2_moe"}.get(str(arch).lower(), str(arch).lower())
    if arch not in ARCHITECTURES:
        raise StudioError(f"unknown architecture {data.get('architecture')!r}", where="architecture",
                          hint="mixtral, qwen2_moe, or leave it out (qwen2_moe when there are shared_experts)")
    if arch == "mixtral" and spec.shared_experts:
        raise StudioError("Mixtral has no shared experts", where="shared_experts",
                          hint="remove them, or write architecture: qwen2_moe")
    if arch == "qwen2_moe" and len(spec.shared_experts) != 1:
        raise StudioError(f"qwen2_moe takes exactly one shared expert, got {len(spec.shared_experts)}",
                          where="shared_experts", hint="shared_experts: [{source_model: …}]")
    spec.architecture = arch
    if spec.gate_mode in PROMPT_GATES:
        for i, e in enumerate(spec.experts):
            if not e.positive_prompts:
                raise StudioError(f"gate_mode {spec.gate_mode} needs prompts for every expert",
                                  where=f"experts[{i}].positive_prompts",
                                  hint="add positive_prompts, or use gate_mode: random")
        first = (spec.experts[0].positive_prompts, spec.experts[0].negative_prompts)
        if len(spec.experts) > 1 and all((e.positive_prompts, e.negative_prompts) == first for e in spec.experts[1:]):
            raise StudioError("every expert has the same prompts: the router could not tell them apart",
                              where="experts", hint="give each expert prompts for what it should receive")
    return spec


def load_moe_spec(path: str | Path) -> tuple[MoESpec, str]:
    """The spec in a YAML file, and the file's text (kept beside the output)."""
    path = Path(path)
    if not path.is_file():
        raise StudioError("config file not found", where=str(path), hint="python -m studio moe CONFIG.yaml OUT_DIR")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudioError(f"cannot read it ({e.__class__.__name__})", where=str(path)) from None
    return moe_spec(parse_yaml(text, where=str(path)), where=str(path)), text
