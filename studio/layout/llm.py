"""Layer-stacked models (transformers LLMs, encoders, the zoo's vision backbone): EMB, L00…L{n-1}, HEAD.

Mixture-of-experts LLMs split each MoE layer further, so that routers and experts can be weighted one by one:
``L07`` (attention, norms, a dense MLP), ``L07.router`` (the gate/router, DeepSeek's score-correction bias),
``L07.shared`` (a shared expert and its gate), ``L07.expert03`` (expert 3's projections). Experts stored fused in
3-D tensors (Llama 4, GPT-OSS: one tensor holds every expert along dim 0) belong to ``L07.experts``; when the config
says how many experts there are, ``L07.expert00``… are groups too, holding no tensor of their own but a slice of each
fused one (:meth:`MoELayerStackLayout.expert_groups`): the engine merges those slices one by one when their settings
differ. Every group of a layer has the layer's position, so gradient lists give all of them the value the dense layer
would get; a per-group mapping's ``L07`` entry covers the layer's sub-groups that have none of their own, and an
``L07.experts`` entry every expert of the layer (:func:`studio.recipe.resolve.group_entry`).
"""

from __future__ import annotations

import re

from .base import Layout

# `<prefix>.<stack>.<index>.` — model.layers.3., transformer.h.3., gpt_neox.layers.3., encoder.layer.3., blocks.3.
LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer|block))\.(?P<idx>\d+)\.")
# the config fields that hold a layer-stacked model's layer count (transformers' names across architectures)
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# the config fields that hold a MoE's routed expert count (Mixtral/Llama 4/GPT-OSS, Qwen-MoE, DeepSeek)
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
EMBED_HINT = re.compile(r"embed|wte|wpe|tok_emb|pos_emb|patch|cls_token|pos_embed|embeddings")


class LayerStackLayout(Layout):
    def __init__(self, num_layers: int, stack_prefix: str | None = None, name: str = "layers"):
        groups = ["EMB"] + [f"L{i:02d}" for i in range(num_layers)] + ["HEAD"]
        labels = {"EMB": "embeddings", "HEAD": "final norm + head"}
        labels.update({f"L{i:02d}": f"layer {i}" for i in range(num_layers)})
        super().__init__(name=name, groups=groups, labels=labels, shape="strip",
                         description=f"{num_layers} layers plus embeddings and head")
        self.num_layers = num_layers
        self.stack_prefix = stack_prefix

    def layer_index(self, key):
        m = LAYER.match(key)
        if m and (self.stack_prefix is None or m.group("prefix") == self.stack_prefix):
            return int(m.group("idx"))
        return None

    def group_of(self, key):
        i = self.layer_index(key)
        if i is not None:
            return f"L{i:02d}"
        return "EMB" if EMBED_HINT.search(key) else "HEAD"

    def position(self, key):
        # mergekit: t = index / (n − 1) inside the layer stack (t = 1 for a single layer); outside it t = 0
        i = self.layer_index(key)
        if i is None:
            return 0.0
        return i / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def group_position(self, group):
        if group in ("EMB", "HEAD"):
            return 0.0
        i = int(group[1:])
        return i / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def rename_layer(self, key, new_index):
        m = LAYER.match(key)
        if not m:
            raise ValueError(f"{key} is not a layer tensor")
        return f"{m.group('prefix')}.{new_index}.{key[m.end():]}"


# Inside a layer (the key after ``<stack>.<i>.``): where a MoE block keeps its parts, across transformers' names
MOE_BLOCK = r"(?:^|\.)(?:block_sparse_moe|mlp|feed_forward|moe)\."
EXPERT = re.compile(MOE_BLOCK + r"experts\.(?P<expert>\d+)\.")
FUSED_EXPERTS = re.compile(MOE_BLOCK + r"experts\.[^.]+$")  # experts.gate_up_proj, experts.down_proj_bias
ROUTER = re.compile(MOE_BLOCK + r"(?:gate|router)\.")
SHARED = re.compile(MOE_BLOCK + r"(?:shared_experts?|shared_expert_gate)\.")


def moe_part(rest: str) -> str | None:
    """The sub-group suffix of a layer tensor (``rest`` = the key after the layer prefix): ``expert03`` needs the
    width, so this returns ``expert:3``, ``router``, ``shared``, ``experts`` (fused), or None (the layer's own)."""
    m = EXPERT.search(rest)
    if m:
        return f"expert:{int(m.group('expert'))}"
    if FUSED_EXPERTS.search(rest):
        return "experts"
    if SHARED.search(rest):
        return "shared"
    if ROUTER.search(rest):
        return "router"
    return None


class MoELayerStackLayout(LayerStackLayout):
    """A layer stack whose MoE layers have router, shared-expert and per-expert groups (see the module docstring).
    ``parts``: layer index → its sub-group suffixes in order (``router``, ``shared``, ``experts``, ``expert00``…)."""

    def __init__(self, num_layers: int, parts: dict[int, list[str]], expert_width: int = 2,
                 stack_prefix: str | None = None, fused_experts: int = 0):
        super().__init__(num_layers, stack_prefix=stack_prefix, name="moe-layers")
        self.parts = parts
        self.expert_width = expert_width
        self.fused_experts = fused_experts  # experts along dim 0 of a fused tensor (0: not known, not sliced)
        groups, labels = ["EMB"], dict(self.labels)
        for i in range(num_layers):
            layer = f"L{i:02d}"
            groups.append(layer)
            if parts.get(i):
                labels[layer] = f"layer {i} · attention, norms"
            for part in parts.get(i, []):
                groups.append(f"{layer}.{part}")
                labels[f"{layer}.{part}"] = f"layer {i} · " + _part_label(part)
        self.groups = groups + ["HEAD"]
        self.labels = labels
        n_moe = sum(1 for p in parts.values() if p)
        self.description = f"{num_layers} layers ({n_moe} mixture-of-experts) plus embeddings and head"

    def group_of(self, key):
        i = self.layer_index(key)
        if i is None:
            return super().group_of(key)
        part = moe_part(key[LAYER.match(key).end():])
        if part is None:
            return f"L{i:02d}"
        if part.startswith("expert:"):
            part = f"expert{int(part[7:]):0{self.expert_width}d}"
        return f"L{i:02d}.{part}"

    def group_position(self, group):
        return super().group_position(group.split(".", 1)[0])

    def expert_groups(self, group: str) -> list[str] | None:
        """For the group of a fused experts tensor (``L07.experts``): the group of each slice along dim 0
        (``L07.expert00``…), else None."""
        if not self.fused_experts or not group.endswith(".experts"):
            return None
        layer = group[:-len(".experts")]
        return [f"{layer}.expert{e:0{self.expert_width}d}" for e in range(self.fused_experts)]


def _part_label(part: str) -> str:
    if part.startswith("expert") and part[6:].isdigit():
        return f"expert {int(part[6:])}"
    return {"router": "router", "shared": "shared expert", "experts": "experts (fused)"}.get(part, part)


def layer_stack_for(keys, num_layers: int, stack_prefix: str | None = None, fused_experts: int = 0
                    ) -> LayerStackLayout:
    """The layout of a stack of ``num_layers`` layers with these keys: a MoE layout when any layer holds experts
    (``fused_experts``: how many experts a fused tensor holds, when known; its slices then get groups)."""
    parts: dict[int, set[str]] = {}
    top = -1
    for k in keys:
        m = LAYER.match(k)
        if not m or (stack_prefix is not None and m.group("prefix") != stack_prefix):
            continue
        part = moe_part(k[m.end():])
        if part is not None:
            parts.setdefault(int(m.group("idx")), set()).add(part)
            if part.startswith("expert:"):
                top = max(top, int(part[7:]))
            if part == "experts" and fused_experts:
                parts[int(m.group("idx"))].update(f"expert:{e}" for e in range(fused_experts))
                top = max(top, fused_experts - 1)
    if not any(p.startswith("expert") for ps in parts.values() for p in ps):
        return LayerStackLayout(num_layers, stack_prefix=stack_prefix)
    width = max(2, len(str(top)))
    order = {"router": 0, "shared": 1, "experts": 2}
    ordered = {}
    for i, ps in parts.items():
        named = [p if not p.startswith("expert:") else f"expert{int(p[7:]):0{width}d}" for p in ps]
        ordered[i] = sorted(named, key=lambda p: (order.get(p, 3), p))
    return MoELayerStackLayout(num_layers, ordered, expert_width=width, stack_prefix=stack_prefix,
                               fused_experts=fused_experts)


def detect_layer_stack(keys, config: dict | None) -> LayerStackLayout | None:
    counts: dict[str, set[int]] = {}
    for k in keys:
        m = LAYER.match(k)
        if m:
            counts.setdefault(m.group("prefix"), set()).add(int(m.group("idx")))
    if not counts:
        return None
    # the main stack is the one with the most layers (ties → the first seen)
    prefix = max(counts, key=lambda p: len(counts[p]))
    n = max(counts[prefix]) + 1
    if config:
        for field in LAYER_COUNT_KEYS:
            if isinstance(config.get(field), int) and config[field] >= n:
                n = config[field]
                break
    experts = next((config[f] for f in EXPERT_COUNT_KEYS if isinstance((config or {}).get(f), int)), 0)
    return layer_stack_for(keys, n, stack_prefix=prefix, fused_experts=experts)
