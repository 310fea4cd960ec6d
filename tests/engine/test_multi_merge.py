"""Multi-step merges: the output equals running the steps by hand, intermediates live in a temporary folder that never
outlives the merge, a dry run refuses what the merge would, the CLI's one error line, and mergekit-multi's result."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio import cli
from studio.engine import merge_in_memory, merge_steps, merge_to_disk, plan_steps
from studio.errors import StudioError
from studio.recipe.multi import MultiRecipe, substitute
from tinymodels import load_state, make_llama


def three_steps(f, final_name="final"):
    """ab = task arithmetic of a and b on base; abc = ab and c, linear; the output: slerp of base and abc (ab is read
    by abc alone, abc by the output alone). float32 throughout, as mergekit computes."""
    name = f"name: {final_name}\n" if final_name else ""
    return f"""name: ab
merge_method: task_arithmetic
base_model: {f['base']}
models:
  - model: {f['a']}
    parameters: {{weight: [0.2, 0.9]}}
  - model: {f['b']}
    parameters: {{weight: 0.6}}
dtype: float32
---
name: abc
merge_method: linear
models:
  - model: ab
    parameters: {{weight: 2.0}}
  - model: {f['c']}
    parameters: {{weight: 1.0}}
dtype: float32
---
{name}merge_method: slerp
base_model: {f['base']}
models: [{{model: {f['base']}}}, {{model: abc}}]
parameters: {{t: [{{filter: self_attn, value: 0.7}}, {{value: 0.35}}]}}
dtype: float32
"""


def by_hand(mr: MultiRecipe, work: Path) -> dict[str, torch.Tensor]:
    """The steps run one by one: each written by merge_to_disk, the next reading it; the last merged in memory."""
    places = {}
    for i, step in enumerate(mr.steps[:-1]):
        places[step.name] = str(merge_to_disk_at(substitute(step.recipe, places), work / f"hand{i}"))
    return merge_in_memory(substitute(mr.final.recipe, places))


def merge_to_disk_at(recipe, out: Path) -> Path:
    merge_to_disk(recipe, out, device="cpu", progress=False)
    return out


def test_the_output_equals_the_steps_by_hand_and_no_temporary_folder_is_left(llama_family, tmp_path):
    mr = MultiRecipe.from_yaml(three_steps(llama_family), "m.yml")
    parent = tmp_path / "outs"
    seen = []

    def announce(line):   # what the temporary folder holds as each step starts
        temps = [p for p in parent.iterdir() if p.name.startswith(".out.steps-")]
        seen.append((line, sorted(p.name for t in temps for p in t.iterdir())))

    summaries = merge_steps(mr, parent / "out", device="cpu", progress=False, announce=announce)
    assert seen == [("step 1/3: ab", []), ("step 2/3: abc", ["01-ab"]), ("step 3/3: final", ["02-abc"])]
    assert [s["step"] for s in summaries] == ["step 1/3: ab", "step 2/3: abc", "step 3/3: final"]
    assert [s["method"] for s in summaries] == ["task_arithmetic", "linear", "slerp"]
    # a step's output is opened under the name the recipe reads it by, not its temporary path
    assert summaries[1]["models"] == ["ab", str(llama_family["c"])]
    assert summaries[2]["models"] == [str(llama_family["base"]), "abc"]
    assert os.listdir(parent) == ["out"]
    ours = load_state(parent / "out")
    hand = by_hand(mr, tmp_path)
    assert set(ours) == set(hand) and len(hand) == 30
    for k in hand:
        assert hand[k].dtype == torch.float32
        assert torch.equal(ours[k], hand[k]), k
    # the output's recipe keeps reading the step by its name, not a temporary path gone since
    written = (parent / "out" / "mergekit_config.yml").read_text()
    assert "model: abc" in written and ".steps-" not in written


def test_a_step_failing_leaves_neither_output_nor_temporary_folder(llama_family, tmp_path):
    broken = tmp_path / "broken"
    make_llama(broken, 7)
    path = broken / "model.safetensors"
    state = load_file(str(path))
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")   # found only when step 3 reads it
    save_file(state, str(path), metadata={"format": "pt"})
    base = llama_family["base"]
    text = three_steps(llama_family).replace(f"base_model: {base}\nmodels: [{{model: {base}}}, {{model: abc}}]",
                                             f"base_model: {broken}\nmodels: [{{model: {broken}}}, {{model: abc}}]")
    assert str(broken) in text
    parent = tmp_path / "outs"
    steps = []
    with pytest.raises(StudioError) as e:
        merge_steps(MultiRecipe.from_yaml(text, "m.yml"), parent / "out", device="cpu", progress=False,
                    announce=steps.append)
    assert steps == ["step 1/3: ab", "step 2/3: abc", "step 3/3: final"], e.value   # it failed in the last step
    assert e.value.where.startswith("step 3/3: final: model ")
    assert "NaN" in e.value.what
    assert os.listdir(parent) == []


def mismatched(f, tmp_path) -> str:
    """Step 2 merges a model of vocabulary 80 with step 1 (vocabulary 64): their embeddings cannot be merged."""
    wide = tmp_path / "wide"
    if not wide.exists():
        make_llama(wide, 5, vocab=80)
    return f"""name: one
merge_method: linear
models: [{{model: {f['a']}}}, {{model: {f['b']}}}]
parameters: {{weight: 1.0}}
---
merge_method: linear
models: [{{model: {wide}}}, {{model: one}}]
parameters: {{weight: 1.0}}
"""


def test_a_dry_run_refuses_what_the_merge_refuses_and_writes_nothing(llama_family, tmp_path, capsys):
    recipe = tmp_path / "steps.yml"
    recipe.write_text(mismatched(llama_family, tmp_path))
    parent = tmp_path / "outs"
    capsys.readouterr()   # what building the models said
    assert cli.main(["merge", str(recipe), str(parent / "out"), "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert dry.out == ""
    assert dry.err.count("\n") == 1
    # the step is named as the recipe names it, in the dry run and in the merge
    assert dry.err == ("error: step 2/2: document 2: one: tensor 'lm_head.weight' has shape [64, 32], expected "
                       "[80, 32] — vocabulary sizes differ; set tokenizer_source: union (or base) to merge them over one "
                       "vocabulary\n")
    assert not parent.exists()
    assert cli.main(["merge", str(recipe), str(parent / "out"), "--quiet"]) == 2
    real = capsys.readouterr()
    assert real.err == dry.err
    assert not parent.exists() or os.listdir(parent) == []


def test_a_dry_run_plans_a_later_step_against_the_layers_an_earlier_one_makes(llama_family, tmp_path):
    """Step 1 stacks 4 layers out of 3-layer models; step 2 reads it whole (4 layers: its planned config says so),
    and a slice of layers 2–4 exists only because step 1 made them."""
    f = llama_family
    text = f"""name: tall
merge_method: passthrough
slices:
  - sources: [{{model: {f['a']}, layer_range: [0, 2]}}]
  - sources: [{{model: {f['b']}, layer_range: [1, 3]}}]
---
merge_method: passthrough
slices:
  - sources: [{{model: tall, layer_range: [2, 4]}}]
"""
    mr = MultiRecipe.from_yaml(text, "m.yml")
    plans = plan_steps(mr, tmp_path / "out")
    assert [p.plan.num_layers for p in plans] == [4, 2]
    merge_steps(mr, tmp_path / "out", device="cpu", progress=False)
    out, b = load_state(tmp_path / "out"), load_state(f["b"])
    # output layers 0–1 are step 1's layers 2–3, which are b's layers 1–2
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"], b["model.layers.2.self_attn.q_proj.weight"])
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(StudioError, match=r"step 2/2: document 2: tall: layer_range \[2, 5\] exceeds the model's 4"):
        plan_steps(MultiRecipe.from_yaml(text.replace("[2, 4]", "[2, 5]"), "m.yml"), tmp_path / "out2")


def test_single_file_steps_stay_single_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    files = []
    for n in range(3):
        path = tmp_path / f"m{n}.safetensors"
        save_file({"w.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(4, generator=g)}, str(path))
        files.append(path)
    text = f"""name: first
merge_method: linear
models: [{{model: {files[0]}, parameters: {{weight: 1.0}}}}, {{model: {files[1]}, parameters: {{weight: 3.0}}}}]
---
name: out
merge_method: linear
models: [{{model: first, parameters: {{weight: 1.0}}}}, {{model: {files[2]}, parameters: {{weight: 1.0}}}}]
"""
    mr = MultiRecipe.from_yaml(text, "m.yml")
    assert plan_steps(mr, tmp_path / "o" / "out.safetensors")[0].intermediate == "01-first.safetensors"
    merge_steps(mr, tmp_path / "o" / "out.safetensors", device="cpu", progress=False)
    assert sorted(os.listdir(tmp_path / "o")) == ["out.recipe.yml", "out.safetensors"]
    out = load_file(str(tmp_path / "o" / "out.safetensors"))
    t = [load_file(str(p)) for p in files]
    for k in ("w.weight", "b.bias"):
        torch.testing.assert_close(out[k], ((t[0][k] + 3 * t[1][k]) / 4 + t[2][k]) / 2, rtol=0, atol=1e-6)


def test_the_cli_merges_every_step_and_refuses_a_bad_multi_recipe_in_one_line(llama_family, tmp_path, capsys):
    recipe = tmp_path / "steps.yaml"
    recipe.write_text(three_steps(llama_family))
    assert cli.main(["merge", str(recipe), str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["step 1/3: ab", "step 2/3: abc", "step 3/3: final"]
    assert "(3 steps)" in out.splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["out", "steps.yaml"]
    assert cli.main(["merge", str(recipe), str(tmp_path / "out2"), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("dry run: headers only, nothing written (3 steps)\nstep 1/3: ab\n")
    assert not (tmp_path / "out2").exists()
    recipe.write_text(three_steps(llama_family).replace("model: ab\n", "model: abb\n"))
    assert cli.main(["merge", str(recipe), str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {recipe}: document 2 (abc): 'abb' is neither a step of this file, a file or folder, nor "
                   "a hub id — the steps: ab, abc, final\n")
    recipe.write_text(three_steps(llama_family))
    assert cli.main(["merge", str(recipe), str(tmp_path / "out3"), "--set", "dtype=float16"]) == 2
    assert "--set changes one recipe" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out", "steps.yaml"]


def test_equal_to_mergekit_multi(llama_family, tmp_path):
    pytest.importorskip("mergekit")
    from mergekit.scripts.multimerge import main as mergekit_multi

    recipe = tmp_path / "steps.yml"
    recipe.write_text(three_steps(llama_family, final_name=None))   # mergekit-multi writes the unnamed one to --out-path
    merge_steps(MultiRecipe.from_yaml(recipe.read_text(), str(recipe)), tmp_path / "ours", device="cpu",
                progress=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        mergekit_multi.main([str(recipe), "--intermediate-dir", str(tmp_path / "mk_steps"), "--out-path",
                             str(tmp_path / "theirs"), "--no-copy-tokenizer", "--quiet", "--no-lazy"],
                            standalone_mode=False)
    finally:  # it configures the root logger (logging.basicConfig): later tests read stderr
        root.handlers[:] = handlers
        root.setLevel(level)
    assert sorted(os.listdir(tmp_path / "mk_steps")) == ["ab", "abc"]
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
