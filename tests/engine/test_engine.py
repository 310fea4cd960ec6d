import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinymodels import load_state, make_llama
from studio.engine import build_plan, merge_in_memory, merge_to_disk
from studio.errors import StudioError
from studio.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def ta_recipe(f, **extra):
    d = {"merge_method": "task_arithmetic", "base_model": str(f["base"]),
         "models": [{"model": str(f["a"]), "parameters": {"weight": [0.0, 1.0]}},
                    {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
         "parameters": {"lambda": 0.8}, "dtype": "float32"}
    d.update(extra)
    return Recipe.from_dict(d)


def test_task_arithmetic_closed_form_with_gradient(llama_family):
    f = llama_family
    base, a, b = (load_state(f[k]) for k in ("base", "a", "b"))
    out = merge_in_memory(ta_recipe(f))
    for key in out:
        layer = int(key.split(".")[2]) if key.startswith("model.layers.") else None
        wa = 0.0 if layer is None else layer / 2  # 3 layers: t = 0, 0.5, 1; outside the stack t = 0
        expect = base[key] + 0.8 * (wa * (a[key] - base[key]) + 0.5 * (b[key] - base[key]))
        torch.testing.assert_close(out[key], expect, rtol=0, atol=1e-6)


def test_linear_normalizes_and_includes_listed_base(llama_family):
    f = llama_family
    base, a = load_state(f["base"]), load_state(f["a"])
    r = Recipe.from_dict({"merge_method": "linear", "base_model": str(f["base"]),
                          "models": [{"model": str(f["base"]), "parameters": {"weight": 1.0}},
                                     {"model": str(f["a"]), "parameters": {"weight": 3.0}}]})
    out = merge_in_memory(r)
    for key in out:
        torch.testing.assert_close(out[key], (base[key] + 3 * a[key]) / 4, rtol=0, atol=1e-6)


def test_slerp_closed_form(llama_family):
    f = llama_family
    base, a = load_state(f["base"]), load_state(f["a"])
    t = 0.3
    out = merge_in_memory(Recipe.from_dict({"merge_method": "slerp", "base_model": str(f["base"]),
                                            "models": [str(f["base"]), str(f["a"])], "parameters": {"t": t}}))
    key = "model.layers.1.mlp.down_proj.weight"
    x, y = base[key].double().flatten(), a[key].double().flatten()
    omega = math.acos(float(torch.dot(x / x.norm(), y / y.norm())))
    expect = (math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / math.sin(omega)
    torch.testing.assert_close(out[key].double().flatten(), expect, rtol=0, atol=1e-6)
    # t = 0 gives the base back exactly
    same = merge_in_memory(Recipe.from_dict({"merge_method": "slerp", "base_model": str(f["base"]),
                                             "models": [str(f["base"]), str(f["a"])], "parameters": {"t": 0.0}}))
    torch.testing.assert_close(same[key], base[key], rtol=0, atol=1e-6)


def test_cli_merge_writes_loadable_sharded_folder(llama_family, tmp_path):
    f = llama_family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ta_recipe(f, out_dtype="bfloat16").to_yaml())
    out = tmp_path / "out"
    r = run_cli("merge", recipe, out, "--device", "cpu", "--shard-size", "40K", "--quiet")
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    shards = [n for n in files if n.startswith("model-")]
    assert len(shards) > 1 and all(n.endswith(f"-of-{len(shards):05d}.safetensors") for n in shards)
    assert {"config.json", "README.md", "mergekit_config.yml", "tokenizer_config.json",
            "model.safetensors.index.json", "generation_config.json"} <= set(files)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert Recipe.load(out / "mergekit_config.yml").to_yaml() == Recipe.load(recipe).to_yaml()
    assert "task_arithmetic" in (out / "README.md").read_text()
    from safetensors import safe_open

    with safe_open(str(out / shards[0]), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt" and json.loads(meta["merge_studio_recipe"])["merge_method"] == "task_arithmetic"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    expect = merge_in_memory(ta_recipe(f))
    got = model.state_dict()
    for k, v in expect.items():
        torch.testing.assert_close(got[k].float(), v.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_dry_run_reports_shape_mismatch_without_reading_tensor_data(tmp_path, monkeypatch):
    base = make_llama(tmp_path / "base", 0, hidden=32)
    other = make_llama(tmp_path / "other", 1, hidden=48)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {other}\n    parameters: {{weight: 1}}\n")
    from studio.sources.safetensors_file import SafetensorsFile

    def forbidden(self, key):
        raise AssertionError("tensor data was read during a dry run")

    monkeypatch.setattr(SafetensorsFile, "_read", forbidden)
    with pytest.raises(StudioError) as e:
        build_plan(Recipe.load(recipe))
    assert "shape" in str(e.value) and "expected" in str(e.value)
    r = run_cli("merge", recipe, tmp_path / "out", "--dry-run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "shape" in r.stderr and not (tmp_path / "out").exists()


def test_interrupted_merge_leaves_no_target(llama_family, tmp_path, monkeypatch):
    from studio.sources.safetensors_file import SafetensorsFile

    calls = {"n": 0}
    real = SafetensorsFile._read

    def flaky(self, key):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt  # what Ctrl-C looks like mid-merge
        return real(self, key)

    monkeypatch.setattr(SafetensorsFile, "_read", flaky)
    out = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        merge_to_disk(ta_recipe(llama_family), out, device="cpu", progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too


def test_refuses_non_empty_target_and_input_folders(llama_family, tmp_path):
    f = llama_family
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(StudioError, match="not empty"):
        merge_to_disk(ta_recipe(f), out, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(StudioError, match="inside an input"):
        merge_to_disk(ta_recipe(f), f["a"] / "merged", progress=False)
    merge_to_disk(ta_recipe(f), out, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_inputs_are_never_modified(llama_family, tmp_path):
    import hashlib

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    before = {k: digest(v) for k, v in llama_family.items()}
    merge_to_disk(ta_recipe(llama_family), tmp_path / "o", progress=False)
    assert {k: digest(v) for k, v in llama_family.items()} == before


def test_passthrough_slices_frankenmerge(llama_family, tmp_path):
    f = llama_family
    a, b = load_state(f["a"]), load_state(f["b"])
    r = Recipe.from_dict({"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(f["a"]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(f["b"]), "layer_range": [1, 3]}]}]})
    out_dir = tmp_path / "frank"
    summary = merge_to_disk(r, out_dir, progress=False)
    assert summary["num_layers"] == 4
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4
    got = load_state(out_dir)
    k = "self_attn.q_proj.weight"
    torch.testing.assert_close(got[f"model.layers.0.{k}"], a[f"model.layers.0.{k}"])
    torch.testing.assert_close(got[f"model.layers.1.{k}"], a[f"model.layers.1.{k}"])
    torch.testing.assert_close(got[f"model.layers.2.{k}"], b[f"model.layers.1.{k}"])
    torch.testing.assert_close(got[f"model.layers.3.{k}"], b[f"model.layers.2.{k}"])
    torch.testing.assert_close(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    torch.testing.assert_close(got["lm_head.weight"], b["lm_head.weight"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out_dir).config.num_hidden_layers == 4


def test_bad_input_exit_code_and_one_line(tmp_path):
    r = run_cli("merge", tmp_path / "missing.yaml", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    bad = tmp_path / "r.yaml"
    bad.write_text("merge_method: linear\nmodels: [does/not-exist-anywhere]\nparameters: {weight: 1}\n")
    r = run_cli("merge", bad, tmp_path / "out")
    assert r.returncode == 2 and "does/not-exist-anywhere" in r.stderr and "Traceback" not in r.stderr


def test_inspect_reports_mismatches(tmp_path):
    a = make_llama(tmp_path / "a", 0, vocab=64)
    b = make_llama(tmp_path / "b", 1, vocab=80)
    r = run_cli("inspect", a, b, "--json")
    assert r.returncode == 1, r.stderr  # the models do not line up
    data = json.loads(r.stdout)
    assert data["models"][0]["architecture"] == "LlamaForCausalLM"
    assert data["models"][0]["parameters"] == sum(v.numel() for v in load_state(a).values())
    cmp = data["comparison"]["against"][0]
    assert cmp["vocab_size"] == {"expected": 64, "got": 80} and not cmp["compatible"]
    assert {m["key"] for m in cmp["shape_mismatches"]} == {"model.embed_tokens.weight", "lm_head.weight"}


def _resolved_one_by_one(plan):
    """Every merge task's parameters resolved for that tensor alone (no sharing between tensors)."""
    from studio.recipe.resolve import resolve_param

    r, n = plan.recipe, len(plan.layout.groups)
    out = {}
    for t in plan.tasks:
        if t.op != "merge":
            continue
        pos, models = plan.layout.position(t.out_key), [m for m in r.models if m.model != r.base_model]
        out[t.out_key] = {p.name: resolve_param(p, [r.parameters], t.out_key, pos, t.group, n, "") for p in
                          plan.spec.global_params()}
        out[t.out_key] |= {p.name: [resolve_param(p, [m.parameters, r.parameters], t.out_key, pos, t.group, n, "")
                                    for m in models] for p in plan.spec.per_model_params()}
    return out


@pytest.mark.parametrize("weight", [{"L01": 0.9, "*": 0.3}, [0.0, 1.0],
                                    [{"filter": "mlp", "value": {"L01": 2.0, "*": 0.1}}, {"value": 0.4}]])
def test_parameters_shared_by_group_and_position_equal_resolving_each_tensor(llama_family, weight):
    """The plan resolves name-free settings once per (group, position): each tensor still gets exactly its own
    values, and a name filter (mlp vs attention in one layer) still tells tensors of one group apart."""
    plan = build_plan(ta_recipe(llama_family, models=[
        {"model": str(llama_family["a"]), "parameters": {"weight": weight}},
        {"model": str(llama_family["b"]), "parameters": {"weight": 0.5}}]))
    got = {t.out_key: t.params for t in plan.tasks if t.op == "merge"}
    assert got == _resolved_one_by_one(plan)
    if isinstance(weight, list) and isinstance(weight[0], dict):
        assert got["model.layers.1.mlp.up_proj.weight"]["weight"][0] == 2.0
        assert got["model.layers.1.self_attn.q_proj.weight"]["weight"][0] == 0.4
    a = got["model.layers.0.mlp.up_proj.weight"]["weight"]
    a.append(9.0)  # tensors of a group hold their own lists: editing one task's values leaves the others alone
    assert got["model.layers.0.mlp.down_proj.weight"]["weight"] != a
