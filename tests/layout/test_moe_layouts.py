"""Mixture-of-experts LLMs: each layer's router, shared expert and experts are groups of their own, positioned at
their layer; merges weight them one by one. Tiny transformers models of six MoE families, built here."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from studio import cli
from studio.layout import LayerStackLayout, detect_layout
from studio.layout.llm import MoELayerStackLayout
from studio.recipe.edit import SettingPath, group_values, set_group_values
from studio.sources import open_source
from tinymodels import load_state

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64)


def family(name):
    t = transformers
    if name == "mixtral":
        return t.MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2), \
            t.MixtralForCausalLM
    if name == "qwen2_moe":
        return t.Qwen2MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, num_experts=4,
                                shared_expert_intermediate_size=16, num_experts_per_tok=2), t.Qwen2MoeForCausalLM
    if name == "qwen3_moe":
        return t.Qwen3MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, num_experts=4,
                                num_experts_per_tok=2, head_dim=8), t.Qwen3MoeForCausalLM
    if name == "deepseek_v3":  # first layer dense (first_k_dense_replace), the second MoE
        return t.DeepseekV3Config(**COMMON, intermediate_size=16, moe_intermediate_size=16, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                                  topk_group=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                  qk_nope_head_dim=4, v_head_dim=8), t.DeepseekV3ForCausalLM
    if name == "llama4":
        return t.Llama4TextConfig(**COMMON, intermediate_size=16, intermediate_size_mlp=16, num_local_experts=4,
                                  num_experts_per_tok=1, head_dim=8), t.Llama4ForCausalLM
    return t.GptOssConfig(**COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, head_dim=8), \
        t.GptOssForCausalLM


FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "llama4", "gpt_oss"]
FUSED = {"llama4", "gpt_oss"}
# the sub-groups of a MoE layer, in order
PARTS = {"mixtral": ["router", "expert00", "expert01", "expert02", "expert03"],
         "qwen2_moe": ["router", "shared", "expert00", "expert01", "expert02", "expert03"],
         "qwen3_moe": ["router", "expert00", "expert01", "expert02", "expert03"],
         "deepseek_v3": ["router", "shared", "expert00", "expert01", "expert02", "expert03"],
         # fused: the tensors' group, then one (tensor-less) group per expert slice along dim 0
         "llama4": ["router", "shared", "experts", "expert00", "expert01", "expert02", "expert03"],
         "gpt_oss": ["router", "experts", "expert00", "expert01", "expert02", "expert03"]}


def save(name, path, seed, base_state=None):
    cfg, cls = family(name)
    torch.manual_seed(seed)
    model = cls(cfg)
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base_state.items()},
                                  strict=False)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def moe_family(request, tmp_path_factory):
    name = request.param
    d = tmp_path_factory.mktemp(name)
    base = save(name, d / "base", 0)
    base_state = load_state(base)
    return name, base, save(name, d / "a", 1, base_state), save(name, d / "b", 2, base_state)


def test_every_key_lands_in_exactly_one_group(moe_family):
    name, base, _, _ = moe_family
    src = open_source(str(base))
    layout = detect_layout(src)
    assert isinstance(layout, MoELayerStackLayout)
    moe_layers = [1] if name == "deepseek_v3" else [0, 1]
    expected = ["EMB"]
    for i in range(2):
        expected += [f"L{i:02d}"] + ([f"L{i:02d}.{p}" for p in PARTS[name]] if i in moe_layers else [])
    assert layout.groups == expected + ["HEAD"]
    by_group = layout.group_keys(src.keys())
    slices = {g for g in layout.groups if name in FUSED and re.fullmatch(r"L\d\d\.expert\d\d", g)}
    assert set(by_group) == set(layout.groups) and all(bool(by_group[g]) != (g in slices) for g in layout.groups)
    assert sorted(k for ks in by_group.values() for k in ks) == sorted(src.keys())
    for k in src.keys():
        g = layout.group_of(k)
        m = re.search(r"\.experts\.(\d+)\.", k)
        if m:
            assert g == f"L{int(k.split('.')[2]):02d}.expert{int(m.group(1)):02d}"
        elif re.search(r"\.experts\.\w+$", k):
            assert g.endswith(".experts") and src.info(k).shape[0] == 4
            assert layout.expert_groups(layout.group_of(k)) == [f"{g[:3]}.expert{e:02d}" for e in range(4)]
        elif re.search(r"\.(gate|router)\.", k):
            assert g.endswith(".router"), k
        elif "shared_expert" in k:
            assert g.endswith(".shared"), k
        elif ".layers." in k:
            assert re.fullmatch(r"L\d\d", g), (k, g)
        # every group of a layer sits at the layer's position: a gradient list gives them the dense value
        assert layout.position(k) == layout.group_position(g)
        assert layout.position(k) == (float(k.split(".")[2]) if ".layers." in k else 0.0)


def test_a_dense_model_keeps_its_plain_layer_groups(tmp_path):
    from tinymodels import make_llama

    layout = detect_layout(open_source(str(make_llama(tmp_path / "m", 0, layers=3))))
    assert type(layout) is LayerStackLayout and layout.groups == ["EMB", "L00", "L01", "L02", "HEAD"]


def test_sliders_per_expert_round_trip_and_a_layer_entry_covers_its_experts():
    layout = MoELayerStackLayout(2, {0: ["router", "expert00", "expert01"], 1: ["router", "expert00", "expert01"]})
    recipe = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": {"*": 1.0, "L01": 0.25}}},
                                                    {"model": "b"}]}
    path = SettingPath.parse("models.0.weight")
    values = dict(zip(layout.groups, group_values(recipe, path, layout)))
    assert values["L01.expert01"] == values["L01.router"] == 0.25 and values["L00.expert00"] == 1.0
    # one expert changed: written as its own entry, its siblings keep the layer's value
    changed = set_group_values(recipe, SettingPath.parse("models.0.weight@L01.expert00"), layout,
                               {"L01.expert00": 1.0})
    after = dict(zip(layout.groups, group_values(changed, path, layout)))
    assert after == {**values, "L01.expert00": 1.0}
    # all of layer 1 back to 1.0 except its attention: the experts must be written although they equal "*"
    back = set_group_values(changed, path, layout, {g: (0.25 if g == "L01" else 1.0) for g in layout.groups})
    assert dict(zip(layout.groups, group_values(back, path, layout))) == {g: (0.25 if g == "L01" else 1.0)
                                                                         for g in layout.groups}


def test_an_experts_slider_moves_every_fused_expert_and_a_layer_slider_its_whole_layer():
    parts = ["router", "experts", "expert00", "expert01"]
    layout = MoELayerStackLayout(2, {0: parts, 1: parts}, fused_experts=2)
    recipe = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 0.5}}, {"model": "b"}]}
    path = SettingPath.parse("models.0.weight")
    experts = set_group_values(recipe, path, layout, {"L01.experts": 0.9})
    got = dict(zip(layout.groups, group_values(experts, path, layout)))
    assert got == {g: 0.9 if g.startswith("L01.expert") else 0.5 for g in layout.groups}
    layer = set_group_values(experts, path, layout, {"L00": 0.3})
    got = dict(zip(layout.groups, group_values(layer, path, layout)))
    assert got == {g: 0.3 if g.startswith("L00") else 0.9 if g.startswith("L01.expert") else 0.5
                   for g in layout.groups}


def merge(tmp_path, recipe, *sets):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    argv = ["merge", str(tmp_path / "r.yaml"), str(out), "--quiet", "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    return out


def test_merging_two_moe_finetunes_weights_one_expert_on_its_own(moe_family, tmp_path):
    name, base, a, b = moe_family
    fused = name in FUSED
    target = "L01.expert02"
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(a), "parameters": {"weight": [1.0, 3.0]}},
                         {"model": str(b), "parameters": {"weight": 1.0}}]}
    out = merge(tmp_path, recipe, f"models.0.weight@{target}=0.0", "models.1.weight@L01.router=0.0")
    sa, sb, so = load_state(a), load_state(b), load_state(out)
    layout = detect_layout(open_source(str(out)))
    def expected(k, g):
        # the gradient [1, 3] at the layer's position (0 → 1.0, 1 → 3.0), outside the stack t = 0
        wa = 0.0 if g == target else 3.0 if g.startswith("L01") else 1.0
        wb = 0.0 if g == "L01.router" else 1.0
        return (wa * sa[k] + wb * sb[k]) / (wa + wb)

    hit = 0
    for k, v in so.items():
        slices = layout.expert_groups(layout.group_of(k))
        if slices:  # a fused experts tensor: expert e's slice along dim 0 with expert e's weights
            want = torch.stack([expected(k, g)[e] for e, g in enumerate(slices)])
            if target in slices:  # the one expert's slice differs from what the whole tensor's weights give
                assert not torch.allclose(want[2], expected(k, layout.group_of(k))[2])
        else:
            want = expected(k, layout.group_of(k))
        hit += layout.group_of(k) == target or target in (slices or [])
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    assert hit == (4 if name == "gpt_oss" else 2 if fused else 3)
    cfg, cls = family(name)
    model = cls.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == cfg.model_type
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


def test_an_experts_entry_covers_every_expert_of_its_layer(moe_family, tmp_path):
    name, base, a, b = moe_family
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(a), "parameters": {"weight": {"*": 1.0, "L00.experts": 0.0,
                                                                      "L00.expert01": 2.0}}},
                         {"model": str(b), "parameters": {"weight": 1.0}}]}
    out = merge(tmp_path, recipe)
    sa, sb, so = load_state(a), load_state(b), load_state(out)
    layout = detect_layout(open_source(str(out)))

    def weight(g):
        return 2.0 if g == "L00.expert01" else 0.0 if g.startswith("L00.expert") else 1.0

    checked = 0
    for k, v in so.items():
        groups = layout.expert_groups(layout.group_of(k)) or [layout.group_of(k)] * v.shape[0] if v.dim() else [layout.group_of(k)]
        for e, g in enumerate(groups):
            if not g.startswith("L00.expert"):
                continue
            w = weight(g)
            torch.testing.assert_close(v[e], (w * sa[k][e] + sb[k][e]) / (w + 1), rtol=0, atol=1e-6, msg=k)
            checked += 1
    assert checked > 0 or name == "deepseek_v3"  # its first layer is dense


@pytest.mark.parametrize("moe_family", ["mixtral"], indirect=True)  # one family is enough for the task-vector path
def test_ties_over_moe_finetunes_with_an_expert_left_at_the_base(moe_family, tmp_path):
    name, base, a, b = moe_family
    recipe = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
              "parameters": {"density": 1.0, "weight": {"*": 1.0, "L00.expert01": 0.0}},
              "models": [{"model": str(a)}, {"model": str(b)}]}
    out = merge(tmp_path, recipe)
    s0, sa, sb, so = load_state(base), load_state(a), load_state(b), load_state(out)
    layout = detect_layout(open_source(str(out)))
    for k, v in so.items():
        if layout.group_of(k) == "L00.expert01":
            torch.testing.assert_close(v, s0[k], rtol=0, atol=0)
        else:  # density 1: TIES = base + the sign-elected mean of the deltas
            da, db = sa[k] - s0[k], sb[k] - s0[k]
            sign = torch.sign(da + db)
            keep = [d * (torch.sign(d) == sign) for d in (da, db)]
            count = sum((torch.sign(d) == sign).float() * (d != 0) for d in (da, db)).clamp(min=1)
            torch.testing.assert_close(v, s0[k] + (keep[0] + keep[1]) / count, rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("moe_family", sorted(FUSED), indirect=True)
def test_a_fused_tensor_is_merged_whole_unless_its_experts_settings_differ(moe_family):
    from studio.engine import build_plan
    from studio.recipe import Recipe

    name, base, a, b = moe_family

    def sliced(weight):
        recipe = Recipe.from_dict({"merge_method": "linear", "models": [
            {"model": str(a), "parameters": {"weight": weight}}, {"model": str(b), "parameters": {"weight": 1.0}}]})
        return {t.out_key: t.expert_params for t in build_plan(recipe).tasks if t.expert_params}

    # every expert of the layer alike (the tensor's own entry, or the layer's): one merge over the whole tensor, as
    # mergekit does it (a method ranking values over a tensor would rank each slice alone otherwise)
    assert sliced({"*": 1.0, "L01.experts": 0.5}) == {} and sliced({"*": 1.0, "L01": 0.5}) == {}
    per = sliced({"*": 1.0, "L01.expert03": 0.5})
    assert per and all(k.startswith("model.layers.1.") for k in per)
    assert all([p["weight"][0] for p in ps] == [1.0, 1.0, 1.0, 0.5] for ps in per.values())


def test_curves_and_presets_give_a_moe_layers_groups_its_layer_value():
    from studio.recipe.edit import apply_curve, apply_preset

    moe = MoELayerStackLayout(3, {i: ["router", "expert00", "expert01"] for i in range(3)})
    dense = LayerStackLayout(3)
    recipe = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}}, {"model": "b"}]}
    path = SettingPath.parse("models.0.weight")
    for apply in (lambda r, lay: apply_curve(r, path, lay, "ramp up", 0.0, 1.0),
                  lambda r, lay: apply_preset(r, path, lay, "GRAD_V")):
        want = dict(zip(dense.groups, group_values(apply(recipe, dense), path, dense)))
        got = dict(zip(moe.groups, group_values(apply(recipe, moe), path, moe)))
        assert len(set(want.values())) > 1
        assert got == {g: want[g.split(".")[0]] for g in moe.groups}
