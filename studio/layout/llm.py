"""Layer-stacked models (transformers LLMs, encoders, the zoo's vision backbone): EMB, L00…L{n-1}, HEAD."""

from __future__ import annotations

import re

from .base import Layout

# `<prefix>.<stack>.<index>.` — model.layers.3., transformer.h.3., gpt_neox.layers.3., encoder.layer.3., blocks.3.
LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer|block))\.(?P<idx>\d+)\.")
# the config fields that hold a layer-stacked model's layer count (transformers' names across architectures)
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
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
    return LayerStackLayout(n, stack_prefix=prefix)
