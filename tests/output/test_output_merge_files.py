"""What a merge writes through studio.output: a single-file merge is the weights plus ``<stem>.recipe.yml``, written
together or not at all; family hooks add metadata and side files; the built-in hooks are registered on import."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from studio.engine import METADATA_HOOKS, SIDE_FILE_HOOKS, merge_in_memory, merge_to_disk
from studio.errors import StudioError
from studio.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def ta_recipe(f):
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(f["base"]),
                             "models": [{"model": str(f["a"]), "parameters": {"weight": [0.0, 1.0]}},
                                        {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
                             "parameters": {"lambda": 0.8}, "dtype": "float32"})


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_single_file_merge_writes_weights_and_recipe_that_re_merges_equal(llama_family, tmp_path):
    recipe = ta_recipe(llama_family)
    merge_to_disk(recipe, tmp_path / "x.safetensors", device="cpu", progress=False)
    assert names(tmp_path) == ["x.recipe.yml", "x.safetensors"]
    again = Recipe.load(tmp_path / "x.recipe.yml")
    assert again.to_yaml() == recipe.to_yaml()
    written = load_file(tmp_path / "x.safetensors")
    expect = merge_in_memory(again, device="cpu")
    assert set(written) == set(expect)
    for k, v in expect.items():
        assert torch.equal(written[k], v), k
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["merge_studio_recipe"]) == recipe.to_dict()


def test_single_file_merge_refuses_either_existing_file(llama_family, tmp_path):
    recipe = ta_recipe(llama_family)
    (tmp_path / "x.recipe.yml").write_text("mine")
    with pytest.raises(StudioError, match="not empty") as e:
        merge_to_disk(recipe, tmp_path / "x.safetensors", progress=False)
    assert "x.recipe.yml" in str(e.value)
    assert names(tmp_path) == ["x.recipe.yml"] and (tmp_path / "x.recipe.yml").read_text() == "mine"
    (tmp_path / "y.safetensors").write_bytes(b"old")
    with pytest.raises(StudioError, match="not empty"):
        merge_to_disk(recipe, tmp_path / "y.safetensors", progress=False)
    assert (tmp_path / "y.safetensors").read_bytes() == b"old" and not (tmp_path / "y.recipe.yml").exists()
    merge_to_disk(recipe, tmp_path / "x.safetensors", progress=False, overwrite=True)
    assert Recipe.load(tmp_path / "x.recipe.yml").to_yaml() == recipe.to_yaml()
    assert names(tmp_path) == ["x.recipe.yml", "x.safetensors", "y.safetensors"]


def test_interrupted_single_file_merge_leaves_neither_file(llama_family, tmp_path, monkeypatch):
    from studio.engine import stream

    computed = []

    def interrupted_after_five(plan, device, seed, **options):
        for task, tensor in real_run_tasks(plan, device, seed, **options):
            if len(computed) == 5:
                raise KeyboardInterrupt  # Ctrl-C half-way through the weights
            computed.append(task.out_key)
            yield task, tensor

    real_run_tasks = stream.run_tasks
    monkeypatch.setattr(stream, "run_tasks", interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        merge_to_disk(ta_recipe(llama_family), tmp_path / "x.safetensors", device="cpu", progress=False)
    assert len(computed) == 5 and names(tmp_path) == []


def test_dry_run_refuses_an_existing_recipe_beside_a_single_file(llama_family, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ta_recipe(llama_family).to_yaml())
    (tmp_path / "x.recipe.yml").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "studio", "merge", str(recipe), str(tmp_path / "x.safetensors"),
                        "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "x.recipe.yml" in r.stderr


def test_registered_hooks_add_metadata_to_single_files_and_files_to_folders(llama_family, tmp_path, monkeypatch):
    seen = []

    def metadata_hook(plan):
        seen.append(plan.spec.name)
        return {"family_key": "v"}

    def side_file_hook(plan, folder, device):
        (folder / "extra.json").write_text(json.dumps({"tensors": len(plan.tasks), "device": str(device)}))

    monkeypatch.setattr("studio.engine.stream.METADATA_HOOKS", METADATA_HOOKS + [metadata_hook])
    monkeypatch.setattr("studio.engine.stream.SIDE_FILE_HOOKS", SIDE_FILE_HOOKS + [side_file_hook])
    recipe = ta_recipe(llama_family)
    merge_to_disk(recipe, tmp_path / "one.safetensors", device="cpu", progress=False)
    with safe_open(str(tmp_path / "one.safetensors"), "pt") as f:
        assert f.metadata()["family_key"] == "v"
    assert seen == ["task_arithmetic"]
    merge_to_disk(recipe, tmp_path / "folder", device="cpu", progress=False)
    n_tensors = len(load_file(tmp_path / "folder" / "model.safetensors"))
    assert json.loads((tmp_path / "folder" / "extra.json").read_text()) == {"tensors": n_tensors, "device": "cpu"}
    assert seen == ["task_arithmetic"]            # metadata hooks are for single files only
    assert not (tmp_path / "folder" / "emr").exists()   # the EMR hook writes only for emr merges


def test_importing_the_engine_registers_the_built_in_hooks():
    code = ("import studio.engine as e; "
            "print(sorted(f'{h.__module__}.{h.__name__}' for h in e.METADATA_HOOKS + e.SIDE_FILE_HOOKS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == str(["studio.engine.emr.write_emr_side_files", "studio.sd.metadata.plan_metadata"])


def test_emr_merge_folder_gets_masks_and_rescalers_through_its_hook(llama_family, tmp_path):
    f = llama_family
    recipe = Recipe.from_dict({"merge_method": "emr", "base_model": str(f["base"]),
                               "models": [{"model": str(f["a"])}, {"model": str(f["b"])}], "dtype": "float32"})
    merge_to_disk(recipe, tmp_path / "m", device="cpu", progress=False)
    assert names(tmp_path / "m" / "emr") == ["emr.json", "masks.safetensors"]
    info = json.loads((tmp_path / "m" / "emr" / "emr.json").read_text())
    assert info["tasks"] == [str(f["a"]), str(f["b"])] and len(info["rescalers"]) == 2
    masks = load_file(tmp_path / "m" / "emr" / "masks.safetensors")
    merged = load_file(tmp_path / "m" / "model.safetensors")
    key = next(k for k in merged if k.endswith("q_proj.weight"))
    assert masks[f"task0.{key}"].dtype == torch.bool and masks[f"task0.{key}"].shape == merged[key].shape
