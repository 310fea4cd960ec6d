"""A user's own MoE models in the studio: one slider per layer, each layer's router and experts following it, one
expert set on its own through the YAML."""

from __future__ import annotations

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from studio.ui.panels.recipe import slot_groups  # noqa: E402


def tiny_mixtral(path, seed):
    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=16, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    transformers.MixtralForCausalLM(cfg).save_pretrained(path)
    return str(path)


def test_moe_layers_get_sliders_and_experts_follow_them(env, tmp_path):
    env.roots.add(tmp_path)
    refs = [tiny_mixtral(tmp_path / "a", 1), tiny_mixtral(tmp_path / "b", 2)]
    s = env.new_session()
    s.start_own(refs)
    layout = s.layout()
    assert "L01.expert02" in layout.groups and "L01.router" in layout.groups
    _, strip, _ = slot_groups(layout.groups, layout.shape)
    assert [g for g in strip if g] == [g for g in layout.groups if "." not in g]  # EMB, L00, L01, HEAD
    s.set_group_value("L01", 0.3)
    values = dict(zip(layout.groups, s.group_values()))
    assert values["L01"] == values["L01.router"] == values["L01.expert02"] == pytest.approx(0.3)
    assert values["L00.expert02"] == 1.0
    # one expert on its own, typed in the YAML, as the layout names it
    recipe = yaml.safe_load(s.yaml())
    recipe["models"][0]["parameters"]["weight"]["L01.expert02"] = 0.9
    assert s.set_yaml(yaml.safe_dump(recipe)) == []
    values = dict(zip(layout.groups, s.group_values()))
    assert values["L01.expert02"] == pytest.approx(0.9) and values["L01.expert01"] == pytest.approx(0.3)
    assert s.dry_run()[0]
