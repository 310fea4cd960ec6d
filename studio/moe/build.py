"""Build a mixture-of-experts model from dense ones (mergekit-moe's job): the base's attention, embeddings, norms and
head; expert e's MLP in every layer is dense model e's MLP; the routers come from :mod:`.gates`. Outputs Mixtral
(``block_sparse_moe.experts.E.w1/w2/w3`` = gate/down/up projections, ``block_sparse_moe.gate``) or Qwen2-MoE
(``mlp.experts.E.*``, ``mlp.gate``, ``mlp.shared_expert.*``, ``mlp.shared_expert_gate``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..errors import StudioError
from ..output import (AtomicTarget, ShardWriter, check_target, copy_side_files, plan_shards, source_paths, write_index,
                      write_json)
from ..sources import TensorSource, open_source
from .config import PROMPT_GATES, ExpertSpec, MoESpec
from .gates import prompt_gates, random_gates

DENSE_TYPES = {"mixtral": ("llama", "mistral"), "qwen2_moe": ("llama", "mistral", "qwen2")}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MLP_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
# config fields of a dense Llama/Mistral that a MoE config has no use for
DENSE_ONLY = ("attention_bias", "mlp_bias", "pretraining_tp", "_name_or_path", "architectures", "model_type")


@dataclass
class Inputs:
    base: TensorSource
    experts: list[TensorSource]
    shared: list[TensorSource]
    layers: int
    hidden: int


def _config(src: TensorSource, where: str) -> dict:
    if not src.config:
        raise StudioError("no config.json beside the weights", where=where,
                          hint="a MoE is built from transformers model folders (config.json + safetensors)")
    return src.config


def open_inputs(spec: MoESpec) -> Inputs:
    """Open every model and check that the experts can share the base's layers: same family, same shapes."""
    base = open_source(spec.base_model)
    cfg = _config(base, spec.base_model)
    allowed = DENSE_TYPES[spec.architecture]
    layers, hidden = cfg.get("num_hidden_layers"), cfg.get("hidden_size")

    def check(src: TensorSource, where: str) -> TensorSource:
        c = _config(src, where)
        if c.get("model_type") not in allowed:
            raise StudioError(f"a {c.get('model_type')!r} model cannot be an expert of {spec.architecture}", where=where,
                              hint=f"experts and base must be dense {' or '.join(allowed)} models")
        if c.get("mlp_bias"):
            raise StudioError("MLP biases have no place in the MoE's experts", where=where)
        for field in ("num_hidden_layers", "hidden_size", "intermediate_size"):
            if c.get(field) != cfg.get(field):
                raise StudioError(f"{field} is {c.get(field)}, the base's is {cfg.get(field)}", where=where,
                                  hint="every expert must have the base model's shapes (fine-tunes of one base)")
        for i in range(layers):
            for p in PROJECTIONS:
                key = f"model.layers.{i}.mlp.{p}.weight"
                if key not in src or key not in base or tuple(src.info(key).shape) != tuple(base.info(key).shape):
                    raise StudioError(f"{key} is missing or has another shape than the base's", where=where,
                                      hint="experts must be Llama/Mistral-shaped fine-tunes of the base")
        return src

    check(base, spec.base_model)
    if spec.architecture == "mixtral" and cfg.get("attention_bias"):
        raise StudioError("Mixtral attention has no biases; this base has them", where=spec.base_model,
                          hint="write architecture: qwen2_moe (its attention has q/k/v biases)")
    experts = [check(open_source(e.source_model), e.source_model) for e in spec.experts]
    shared = [check(open_source(e.source_model), e.source_model) for e in spec.shared_experts]
    return Inputs(base, experts, shared, layers, hidden)


def out_dtype(spec: MoESpec, base: TensorSource) -> torch.dtype:
    name = spec.dtype or (base.config or {}).get("dtype") or (base.config or {}).get("torch_dtype") or "float32"
    if name not in DTYPES:
        raise StudioError(f"unknown dtype {name!r}", where="dtype", hint="float32, float16 or bfloat16")
    return DTYPES[name]


def moe_config(spec: MoESpec, base_cfg: dict, dtype: torch.dtype) -> dict:
    cfg = {k: v for k, v in base_cfg.items() if k not in DENSE_ONLY}
    n = len(spec.experts)
    dtype_name = str(dtype).removeprefix("torch.")
    cfg.update({"dtype": dtype_name, "sliding_window": None, "num_experts_per_tok": spec.experts_per_token})
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype_name
    if spec.architecture == "mixtral":
        cfg.update({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": n})
    else:
        size = base_cfg["intermediate_size"]
        cfg.update({"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "num_experts": n,
                    "decoder_sparse_step": 1, "norm_topk_prob": True, "use_sliding_window": False,
                    "moe_intermediate_size": size, "shared_expert_intermediate_size": size, "mlp_only_layers": []})
    return cfg


def _scaled(fetch: Callable[[], torch.Tensor], expert: ExpertSpec, residual: bool, gen: torch.Generator):
    """mergekit's per-expert options: seeded noise of scale noise_scale, down projections × residual_scale."""
    def get():
        t = fetch().float()
        if expert.noise_scale is not None:
            t = t + torch.randn(t.shape, generator=gen) * expert.noise_scale
        if residual and expert.residual_scale is not None:
            t = t * expert.residual_scale
        return t
    return get


def tensor_table(spec: MoESpec, inputs: Inputs, gates: torch.Tensor, seed: int) -> dict[str, tuple]:
    """Output name → (shape, fetch) in writing order: the base's tensors outside the MLPs, then per layer the router,
    the experts (and the shared expert with its gate)."""
    base, table = inputs.base, {}
    gen = torch.Generator().manual_seed(seed + 1)
    attn_bias = spec.architecture == "qwen2_moe"
    for key in base.keys():
        if not MLP_KEY.match(key):
            table[key] = (tuple(base.info(key).shape), lambda key=key: base.get(key))
    n = len(spec.experts)
    for i in range(inputs.layers):
        block = "block_sparse_moe" if spec.architecture == "mixtral" else "mlp"
        prefix = f"model.layers.{i}.{block}"
        table[f"{prefix}.gate.weight"] = ((n, inputs.hidden), lambda i=i: gates[i, :n])
        for e, (src, expert) in enumerate(zip(inputs.experts, spec.experts)):
            for p in PROJECTIONS:
                key = f"model.layers.{i}.mlp.{p}.weight"
                name = MIXTRAL_NAMES[p] if spec.architecture == "mixtral" else p
                table[f"{prefix}.experts.{e}.{name}.weight"] = (
                    tuple(src.info(key).shape), _scaled(lambda s=src, k=key: s.get(k), expert, p == "down_proj", gen))
        if attn_bias:
            _shared_expert(spec, inputs, gates, i, table, gen)
    if attn_bias:
        _zero_attention_biases(base, inputs.layers, table)
    return table


def _shared_expert(spec, inputs, gates, i, table, gen):
    src, expert = inputs.shared[0], spec.shared_experts[0]
    for p in PROJECTIONS:
        key = f"model.layers.{i}.mlp.{p}.weight"
        table[f"model.layers.{i}.mlp.shared_expert.{p}.weight"] = (
            tuple(src.info(key).shape), _scaled(lambda k=key: src.get(k), expert, p == "down_proj", gen))
    n = len(spec.experts)
    has_row = gates.shape[1] > n
    table[f"model.layers.{i}.mlp.shared_expert_gate.weight"] = (
        (1, inputs.hidden), (lambda i=i: gates[i, n:n + 1]) if has_row else (lambda: torch.zeros(1, inputs.hidden)))


def _zero_attention_biases(base: TensorSource, layers: int, table: dict) -> None:
    """Qwen2-MoE's q/k/v projections have biases; a Llama/Mistral base has none: zeros keep its attention as is."""
    for i in range(layers):
        for p in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{p}"
            if f"{name}.bias" not in table:
                rows = base.info(f"{name}.weight").shape[0]
                table[f"{name}.bias"] = ((rows,), lambda rows=rows: torch.zeros(rows))


def compute_gates(spec: MoESpec, inputs: Inputs, seed: int, device: str = "cpu", quiet: bool = False) -> torch.Tensor:
    if spec.gate_mode not in PROMPT_GATES:
        return random_gates(spec, inputs.layers, inputs.hidden, seed)
    # optional and heavy: tokenizers (and for the hidden modes the base model) only when prompts make the gates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = inputs.base.folder or Path(inputs.base.path).parent
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise StudioError(f"the base model's tokenizer cannot be loaded ({type(e).__name__})", where=str(folder),
                          hint="prompt gates need the base's tokenizer; or use gate_mode: random") from None
    if spec.gate_mode == "cheap_embed":
        return prompt_gates(spec, inputs.layers, tokenizer, embed=inputs.base.get("model.embed_tokens.weight"),
                            quiet=quiet)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    return prompt_gates(spec, inputs.layers, tokenizer, model=model, quiet=quiet)


def build_moe(spec: MoESpec, out: Path, *, seed: int = 0, overwrite: bool = False, device: str = "cpu",
              shard_bytes: int = 5 << 30, config_text: str | None = None, quiet: bool = False) -> dict:
    """Write the MoE model folder ``out`` atomically; returns a summary (architecture, experts, tensors, bytes)."""
    out = Path(out)
    inputs = open_inputs(spec)
    check_target(out, overwrite, source_paths([inputs.base, *inputs.experts, *inputs.shared]))
    dtype = out_dtype(spec, inputs.base)
    gates = compute_gates(spec, inputs, seed, device, quiet)
    table = tensor_table(spec, inputs, gates, seed)
    entries = [(name, shape, dtype) for name, (shape, _) in table.items()]
    shards = plan_shards(entries, shard_bytes, single_name="model.safetensors")
    with AtomicTarget(out) as tmp:
        writer = ShardWriter(tmp, shards, metadata={"format": "pt"})
        for name, _, _ in tqdm(entries, desc="moe", unit="tensor", disable=quiet):
            writer.write(name, table[name][1]().to(dtype).contiguous())
        writer.close()
        if len(shards) > 1:
            write_index(tmp, writer)
        write_json(tmp / "config.json", moe_config(spec, inputs.base.config, dtype))
        copy_side_files(inputs.base.folder, tmp)
        if config_text is not None:
            (tmp / "mergekit_moe_config.yml").write_text(config_text, encoding="utf-8")
    return {"architecture": spec.architecture, "experts": len(spec.experts), "shared_experts": len(spec.shared_experts),
            "experts_per_token": spec.experts_per_token, "gate_mode": spec.gate_mode, "layers": inputs.layers,
            "tensors": len(entries), "output_bytes": sum(s.nbytes for s in shards), "dtype": str(dtype)}
