"""python -m studio moe: a Mixtral / Qwen2-MoE model built from tiny dense Llamas, checked against closed forms
(identical experts route to the dense model's logits), direct computations of the gates, and mergekit-moe."""

from __future__ import annotations

import pytest
import torch
import yaml

from studio import cli
from studio.moe import moe_spec
from studio.moe.gates import prompt_ids
from tinymodels import add_word_tokenizer, load_state, make_llama

transformers = pytest.importorskip("transformers")

PROMPTS = [["w3 w4 w5", "w6 w7 w8"], ["w20 w21"], ["w40 w41 w42 w43"]]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense")
    base = add_word_tokenizer(make_llama(d / "base", 0, layers=2))
    state = load_state(base)
    experts = [add_word_tokenizer(make_llama(d / f"e{i}", i + 1, layers=2, base_state=state, noise=0.05))
               for i in range(3)]
    other = make_llama(d / "wide", 9, layers=2, hidden=48)
    return {"base": base, "experts": experts, "wide": other}


def build(tmp_path, config, *extra):
    (tmp_path / "moe.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    rc = cli.main(["moe", str(tmp_path / "moe.yaml"), str(out), "--quiet", *extra])
    return rc, out


def config(dense, gate_mode="hidden", n=3, **kw):
    experts = [{"source_model": str(dense["experts"][i]), "positive_prompts": PROMPTS[i]} for i in range(n)]
    return {"base_model": str(dense["base"]), "gate_mode": gate_mode, "dtype": "float32", "experts": experts, **kw}


def logits(model, ids=((1, 5, 9, 12, 30),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def test_mixtral_from_dense_experts_loads_generates_and_keeps_each_experts_mlp(dense, tmp_path):
    rc, out = build(tmp_path, config(dense, experts_per_token=2))
    assert rc == 0
    model = transformers.MixtralForCausalLM.from_pretrained(out)
    assert model.config.num_local_experts == 3 and model.config.num_experts_per_tok == 2
    generated = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)
    so, base = load_state(out), load_state(dense["base"])
    for i, path in enumerate(dense["experts"]):
        se = load_state(path)
        for layer in range(2):
            for proj, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
                assert torch.equal(so[f"model.layers.{layer}.block_sparse_moe.experts.{i}.{w}.weight"],
                                   se[f"model.layers.{layer}.mlp.{proj}.weight"])
    for k, v in base.items():
        if ".mlp." not in k:
            assert torch.equal(so[k], v), k
    assert not any(".mlp." in k for k in so)
    assert (out / "tokenizer.json").is_file() and (out / "mergekit_moe_config.yml").is_file()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_identical_experts_route_to_the_dense_models_logits_whatever_the_gate(dense, tmp_path, top_k):
    # the top-k routing weights are renormalised to sum to 1: k copies of one MLP are that MLP
    same = {"base_model": str(dense["base"]), "gate_mode": "random", "dtype": "float32",
            "experts_per_token": top_k, "experts": [{"source_model": str(dense["base"])}] * 3}
    rc, out = build(tmp_path, same, "--seed", str(top_k))
    assert rc == 0
    moe = transformers.MixtralForCausalLM.from_pretrained(out)
    base = transformers.LlamaForCausalLM.from_pretrained(dense["base"])
    assert load_state(out)["model.layers.0.block_sparse_moe.gate.weight"].std() > 0.5  # a real random gate
    torch.testing.assert_close(logits(moe), logits(base), rtol=0, atol=1e-5)


def test_hidden_gates_are_the_bases_layer_inputs_for_the_prompts(dense, tmp_path):
    cfg = config(dense, "hidden")
    cfg["experts"][1]["negative_prompts"] = ["w3 w9"]
    rc, out = build(tmp_path, cfg)
    assert rc == 0
    # computed here with hooks on each decoder layer's input, not through output_hidden_states
    model = transformers.LlamaForCausalLM.from_pretrained(dense["base"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(dense["base"])
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, kw, i=i: seen.__setitem__(i, (args[0] if args else
                                             kw["hidden_states"])[0, -1].clone()), with_kwargs=True)
             for i, layer in enumerate(model.model.layers)]

    def mean_last(prompts):
        rows = []
        for p in prompts:
            ids = tok("<s>" + p, add_special_tokens=False)["input_ids"]
            assert ids[0] == 1
            with torch.no_grad():
                model(torch.tensor([ids]))
            rows.append(torch.stack([seen[i] for i in range(2)]))
        return torch.stack(rows).mean(0)

    want = [mean_last(PROMPTS[0]), mean_last(PROMPTS[1]) - mean_last(["w3 w9"]), mean_last(PROMPTS[2])]
    for h in hooks:
        h.remove()
    so = load_state(out)
    for layer in range(2):
        gate = so[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
        for e in range(3):
            row = want[e][layer]
            torch.testing.assert_close(gate[e], row / row.norm(), rtol=0, atol=1e-6)


def test_cheap_embed_gates_are_the_prompts_summed_embeddings(dense, tmp_path):
    rc, out = build(tmp_path, config(dense, "cheap_embed"))
    assert rc == 0
    embed = load_state(dense["base"])["model.embed_tokens.weight"]
    tok = transformers.AutoTokenizer.from_pretrained(dense["base"])
    so = load_state(out)
    for e in range(3):
        ids = [i for one in prompt_ids(tok, PROMPTS[e]) for i in one.tolist()]
        assert ids.count(1) == len(PROMPTS[e])  # a BOS per prompt
        v = sum(embed[i] for i in ids)
        for layer in range(2):
            torch.testing.assert_close(so[f"model.layers.{layer}.block_sparse_moe.gate.weight"][e], v / v.norm(),
                                       rtol=0, atol=1e-6)


def test_qwen2_moe_with_a_silent_shared_expert_is_the_dense_model(dense, tmp_path):
    # routed experts all the base's MLP, the shared one's down projection × 0: the MoE computes the dense model
    cfg = {"base_model": str(dense["base"]), "gate_mode": "random", "dtype": "float32", "experts_per_token": 2,
           "experts": [{"source_model": str(dense["base"])}] * 2,
           "shared_experts": [{"source_model": str(dense["experts"][0]), "residual_scale": 0.0}]}
    rc, out = build(tmp_path, cfg)
    assert rc == 0
    moe = transformers.Qwen2MoeForCausalLM.from_pretrained(out)
    assert moe.config.num_experts == 2 and moe.config.shared_expert_intermediate_size == 64
    so, e0 = load_state(out), load_state(dense["experts"][0])
    assert torch.equal(so["model.layers.1.mlp.shared_expert.up_proj.weight"], e0["model.layers.1.mlp.up_proj.weight"])
    assert not so["model.layers.1.mlp.shared_expert.down_proj.weight"].any()
    assert not so["model.layers.0.self_attn.q_proj.bias"].any()
    base = transformers.LlamaForCausalLM.from_pretrained(dense["base"])
    torch.testing.assert_close(logits(moe), logits(base), rtol=0, atol=1e-5)


def test_qwen2_moe_shared_expert_gate_from_its_prompts(dense, tmp_path):
    cfg = config(dense, "cheap_embed", n=2, shared_experts=[{"source_model": str(dense["experts"][2]),
                                                             "positive_prompts": PROMPTS[2]}])
    rc, out = build(tmp_path, cfg)
    assert rc == 0
    so = load_state(out)
    transformers.Qwen2MoeForCausalLM.from_pretrained(out)
    (tmp_path / "three").mkdir()
    routed_three = load_state(build(tmp_path / "three", config(dense, "cheap_embed"))[1])
    torch.testing.assert_close(so["model.layers.1.mlp.shared_expert_gate.weight"][0],
                               routed_three["model.layers.1.block_sparse_moe.gate.weight"][2], rtol=0, atol=0)
    assert so["model.layers.1.mlp.gate.weight"].shape == (2, 32)


@pytest.mark.parametrize("gate_mode", ["hidden", "cheap_embed", "random"])
def test_equal_to_mergekit_moe(dense, tmp_path, gate_mode):
    pytest.importorskip("mergekit")
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build as mergekit_build

    cfg = config(dense, gate_mode)
    # one prompt per expert: mergekit left-pads a batch of prompts (their positions shift), ours run one by one
    for e in cfg["experts"]:
        e["positive_prompts"] = e["positive_prompts"][:1]
    rc, out = build(tmp_path, cfg)
    assert rc == 0
    mergekit_build(MoEMergeConfig.model_validate(cfg), str(tmp_path / "mk"), MergeOptions(device="cpu"),
                   device="cpu")
    ours = transformers.MixtralForCausalLM.from_pretrained(out).state_dict()
    theirs = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "mk").state_dict()
    assert sorted(ours) == sorted(theirs)
    gates = [k for k in ours if k.endswith("gate.weight") and "proj" not in k]
    assert len(gates) == 2
    for k in ours:
        if k in gates:
            if gate_mode != "random":  # mergekit runs the base in bfloat16 for hidden states
                tol = 1e-2 if gate_mode == "hidden" else 1e-6
                torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=tol)
        else:
            assert torch.equal(ours[k], theirs[k]), k


def bad(dense, tmp_path, change):
    cfg = config(dense)
    change(cfg)
    return cfg


@pytest.mark.parametrize("change,words", [
    (lambda c: c.update(gate_mode="hiddn"), "unknown gate_mode"),
    (lambda c: c["experts"][1].pop("positive_prompts"), "experts[1].positive_prompts"),
    (lambda c: c.update(experts_per_token=4), "experts_per_token"),
    (lambda c: c.update(shared_experts=[{"source_model": "x"}], architecture="mixtral"), "shared experts"),
    (lambda c: c.update(bogus=1), "unknown key 'bogus'"),
    (lambda c: c["experts"].append({"source_model": "WIDE", "positive_prompts": ["w5"]}), "hidden_size is 48"),
    (lambda c: [e.update(positive_prompts=["w3"]) for e in c["experts"]], "same prompts"),
])
def test_bad_configs_exit_2_with_one_line(dense, tmp_path, capsys, change, words):
    cfg = bad(dense, tmp_path, change)
    for e in cfg["experts"]:
        if e["source_model"] == "WIDE":
            e["source_model"] = str(dense["wide"])
    rc, out = build(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_an_existing_output_is_kept_without_overwrite(dense, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    rc, _ = build(tmp_path, config(dense, "random"))
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    rc, out = build(tmp_path, config(dense, "random"), "--overwrite")
    assert rc == 0 and not (out / "keep.txt").exists()


def test_the_spec_reads_mergekits_defaults():
    spec = moe_spec({"base_model": "b", "gate_mode": "random", "experts": [{"source_model": "x"}, "y"]})
    assert spec.architecture == "mixtral" and spec.experts_per_token == 2 and spec.dtype is None
    assert [e.source_model for e in spec.experts] == ["x", "y"]
    spec = moe_spec({"base_model": "b", "gate_mode": "random", "experts_per_token": 1,
                     "experts": [{"source_model": "x"}], "shared_experts": [{"source_model": "s"}]})
    assert spec.architecture == "qwen2_moe" and len(spec.gated) == 2


def test_a_sharded_output_has_an_index_and_loads(dense, tmp_path):
    rc, out = build(tmp_path, config(dense, "random"), "--shard-size", "40K")
    assert rc == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    one = tmp_path / "one"
    one.mkdir()
    rc, single = build(one, config(dense, "random"))
    moe = transformers.MixtralForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(moe), logits(transformers.MixtralForCausalLM.from_pretrained(single)),
                               rtol=0, atol=0)


def test_a_missing_config_or_a_moe_expert_is_refused(dense, tmp_path, capsys):
    assert cli.main(["moe", str(tmp_path / "nope.yaml"), str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err
    rc, moe = build(tmp_path, config(dense, "random"))
    assert rc == 0
    cfg = config(dense, "random")
    cfg["experts"][0]["source_model"] = str(moe)
    (tmp_path / "again").mkdir()
    rc, _ = build(tmp_path / "again", cfg)
    err = capsys.readouterr().err
    assert rc == 2 and "'mixtral' model cannot be an expert" in err and len(err.strip().splitlines()) == 1
