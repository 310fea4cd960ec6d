"""SD exports in their target's layout: a merge of diffusers pipelines written to one file has ldm names and loads with
diffusers' ``from_single_file``; a merge of ldm files written to a folder is a pipeline ``from_pretrained`` loads.
Both equal, bit for bit, the same merge written in the inputs' own layout (tiny runnable SD1 / SD2 / SDXL)."""

from __future__ import annotations

import json

import pytest
import torch

from studio.cli import main
from studio.engine import merge_to_disk
from studio.errors import StudioError
from studio.layout.sd import detect_family
from studio.layout.sd_keys import UNET_PREFIX
from studio.recipe import Recipe
from studio.sd import synth
from studio.sd.configs import read_json, shipped_folder
from studio.sd.convert import to_diffusers, to_ldm
from studio.sd.export import pipeline_config_overrides
from studio.sources import TensorInfo, open_source

TEXT_KEY = {"sd1": "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "sd2": "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
            "sdxl": "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"}
DIFFUSERS_ROOTS = ("unet.", "vae.", "text_encoder.", "text_encoder_2.")
CLASS_DEFAULTS = {"transformer_layers_per_block": 1, "use_linear_projection": False}  # UNet2DConditionModel's


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fam → two tiny runnable pipelines (with tokenizers) and two ldm files, each with its own random weights."""
    made = {}

    def make(fam):
        if fam not in made:
            d = tmp_path_factory.mktemp(f"export_{fam}")
            table = synth.ldm_table(fam, tiny=True, runnable=True)
            made[fam] = {"a": synth.write_random_pipeline(d / "a", fam, seed=1, runnable=True, tokenizers=True),
                         "b": synth.write_random_pipeline(d / "b", fam, seed=2, runnable=True, tokenizers=True),
                         "la": synth.write_random(d / "la.safetensors", table, seed=1),
                         "lb": synth.write_random(d / "lb.safetensors", table, seed=2)}
        return made[fam]

    torch.set_num_threads(1)
    return make


def recipe_yaml(a, b) -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {a}\n"
            f"    parameters: {{weight: {{IN04: 0.8, BASE: 0.3, '*': 0.5}}}}\n"
            f"  - model: {b}\n    parameters: {{weight: 0.5}}\n")


def pipeline_class(fam):
    import diffusers

    return diffusers.StableDiffusionXLPipeline if fam == "sdxl" else diffusers.StableDiffusionPipeline


def assert_same_parameters(pipe, ref):
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(pipe, comp, None), getattr(ref, comp, None)
        assert (mine is None) == (theirs is None), comp
        if mine is None:
            continue
        a, b = dict(mine.named_parameters()), dict(theirs.named_parameters())
        assert a.keys() == b.keys(), comp
        for k in a:
            assert torch.equal(a[k], b[k]), f"{comp}.{k}"


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_diffusers_pipelines_merged_to_one_file_have_ldm_names_and_load_with_from_single_file(fam, models, tmp_path):
    f = models(fam)
    assert detect_family(open_source(str(f["a"]))) == fam  # shrunk widths: told apart by structure
    (tmp_path / "r.yaml").write_text(recipe_yaml(f["a"], f["b"]))
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "m.safetensors")]) == 0
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "m")]) == 0
    keys = open_source(str(tmp_path / "m.safetensors")).keys()
    assert not [k for k in keys if k.startswith(DIFFUSERS_ROOTS)]
    for k in (UNET_PREFIX + "input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight", TEXT_KEY[fam],
              "first_stage_model.decoder.mid.attn_1.q.weight"):
        assert k in keys, k
    assert open_source(str(tmp_path / "m")).keys() == open_source(str(f["a"])).keys()  # the folder: as before

    cls = pipeline_class(fam)
    single = cls.from_single_file(str(tmp_path / "m.safetensors"), config=str(f["a"]), local_files_only=True)
    folder = cls.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert_same_parameters(single, folder)


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_ldm_files_merged_to_a_folder_are_a_diffusers_pipeline_that_from_pretrained_loads(fam, models, tmp_path):
    f = models(fam)
    r = Recipe.from_yaml(recipe_yaml(f["la"], f["lb"]))
    merge_to_disk(r, tmp_path / "m.safetensors", device="cpu", progress=False)
    summary = merge_to_disk(r, tmp_path / "m", device="cpu", progress=False)
    assert open_source(str(tmp_path / "m.safetensors")).keys() == open_source(str(f["la"])).keys()  # as before
    out = tmp_path / "m"
    encoders = ["text_encoder", "text_encoder_2"] if fam == "sdxl" else ["text_encoder"]
    for comp in ["unet", "vae"] + encoders:
        assert (out / comp / "config.json").is_file()
    for tok in ["tokenizer", "tokenizer_2"] if fam == "sdxl" else ["tokenizer"]:
        assert (out / tok / "vocab.json").is_file() and (out / tok / "merges.txt").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class(fam).__name__
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    assert "library_name: diffusers" in (out / "README.md").read_text()
    # SD2: the last OpenCLIP layer has no place in diffusers' text encoder, and the merge says so
    assert bool(summary["warnings"]) == (fam == "sd2")

    cls = pipeline_class(fam)
    folder = cls.from_pretrained(str(out), local_files_only=True)
    single = cls.from_single_file(str(tmp_path / "m.safetensors"), config=str(f["a"]), local_files_only=True)
    assert_same_parameters(folder, single)


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_full_size_names_convert_both_ways_and_their_configs_are_the_published_ones(fam):
    ldm = {k: TensorInfo(s, d) for k, (s, d) in synth.ldm_table(fam, tiny=False).items()}
    pipe = {f"{c}.{k}": TensorInfo(s, d) for c, t in synth.diffusers_pipeline_tables(fam, tiny=False).items()
            for k, (s, d) in t.items()}
    as_diffusers = to_diffusers(ldm, fam)
    assert {e.name: e.info for e in as_diffusers.entries} == pipe
    # SD2: OpenCLIP's last layer and projection (12 + 1 tensors) have no place in diffusers' text encoder
    assert len(as_diffusers.left_out) == (13 if fam == "sd2" else 0)
    as_ldm = to_ldm(pipe, fam)
    assert as_ldm.left_out == []
    assert {e.name: e.info for e in as_ldm.entries} == {k: v for k, v in ldm.items() if not (
        k.endswith("position_ids") or k in as_diffusers.left_out)}

    overrides = pipeline_config_overrides(fam, {e.name: tuple(e.info.shape) for e in as_diffusers.entries})
    for comp, fields in overrides.items():
        shipped = read_json(shipped_folder(fam) / comp / "config.json")
        for field, value in fields.items():
            assert value == shipped.get(field, CLASS_DEFAULTS.get(field)), f"{comp}.{field}: {value}"


def alone(model) -> Recipe:
    """A merge of one model with weight 1: the model itself, written in the target's layout."""
    return Recipe.from_dict({"merge_method": "linear",
                             "models": [{"model": str(model), "parameters": {"weight": 1.0}}]})


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_one_recipe_may_mix_ldm_files_and_pipelines_and_merges_in_its_first_models_naming(fam, models, tmp_path):
    f = models(fam)
    cases = [("file", f["la"], f["b"], "m.safetensors"), ("folder", f["a"], f["lb"], "m")]
    if fam == "sd2":  # a pipeline lacks the last OpenCLIP layer an ldm reference has: the pipeline must lead
        with pytest.raises(StudioError, match="list this model first"):
            merge_to_disk(Recipe.from_yaml(recipe_yaml(f["la"], f["b"])), tmp_path / "x.safetensors", progress=False)
        cases = cases[1:]
    for name, first, other, out in cases:
        merge_to_disk(Recipe.from_yaml(recipe_yaml(first, other)), tmp_path / name / out, device="cpu", progress=False)
        # the other model converted on its own first, then merged: the same tensors
        merge_to_disk(alone(other), tmp_path / name / f"other_{out}", device="cpu", progress=False)
        merge_to_disk(Recipe.from_yaml(recipe_yaml(first, tmp_path / name / f"other_{out}")),
                      tmp_path / name / f"want_{out}", device="cpu", progress=False)
        got, want = open_source(str(tmp_path / name / out)), open_source(str(tmp_path / name / f"want_{out}"))
        assert got.keys() == want.keys() == open_source(str(first)).keys()
        for k in got.keys():
            assert torch.equal(got.get(k), want.get(k)), k


def test_a_dry_run_names_what_the_target_has_no_place_for(models, tmp_path, capsys):
    f = models("sd2")
    (tmp_path / "r.yaml").write_text(recipe_yaml(f["la"], f["lb"]))
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "m"), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "warning: 13 tensor(s) have no place in this output" in said and "resblocks.9." in said
    assert not (tmp_path / "m").exists()
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "m.safetensors"), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().out  # an ldm file keeps every tensor
