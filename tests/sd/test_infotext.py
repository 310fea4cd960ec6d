"""Other tools' merge settings read back as recipes: A1111's sd_merge_recipe and Model Mixer's infotext. A Model
Mixer chain becomes one linear recipe; the merge it gives equals the chain applied step by step."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinymodels import tagged_png

from studio.engine import merge_in_memory
from studio.errors import StudioError
from studio.layout.sd import SD1_BLOCKS
from studio.recipe import Recipe
from studio.recipe.files import read_recipe
from studio.sd.synth import ldm_table, write_random
from studio.sd.infotext import find_named_model, format_infotext, parse_infotext

# a tensor of the text encoder (BASE), of IN01, of OUT05 and of the VAE in a tiny SD1 ldm checkpoint
KEYS = ["cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "model.diffusion_model.input_blocks.1.1.norm.weight",
        "model.diffusion_model.output_blocks.5.0.in_layers.0.weight",
        "first_stage_model.decoder.conv_in.weight"]


def _checkpoints(folder, names):
    out = {}
    for i, n in enumerate(names):
        write_random(folder / f"{n}.safetensors", ldm_table("sd1"), seed=i)
        out[n] = load_file(str(folder / f"{n}.safetensors"))
    return out



def _png(path, text):
    return tagged_png(path, parameters=text)


def test_infotext_round_trip():
    params = {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": 7, "Seed": 5, "Size": "512x512",
              "ModelMixer mbw weights b": "0,0.5,1"}
    text = format_infotext("a red fox, forest", "blurry", params)
    prompt, negative, got = parse_infotext(text)
    assert (prompt, negative) == ("a red fox, forest", "blurry")
    assert got == {k: str(v) for k, v in params.items()}


def test_find_named_model_strips_a1111_hash_and_looks_one_level_down(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dreamy_v2.safetensors").write_bytes(b"")
    assert find_named_model("dreamy_v2 [0123456789]", [tmp_path]) == str(tmp_path / "sub" / "dreamy_v2.safetensors")
    assert find_named_model("dreamy_v2.safetensors", [tmp_path / "sub"]) == str(tmp_path / "sub" / "dreamy_v2.safetensors")
    assert find_named_model("absent", [tmp_path]) is None


def test_a1111_weighted_sum_from_checkpoint_metadata(tmp_path):
    sds = _checkpoints(tmp_path, ["alpha", "beta"])
    meta = {"sd_merge_recipe": json.dumps({"type": "webui", "interp_method": "Weighted sum", "multiplier": 0.3,
                                           "primary_model_hash": "h1", "secondary_model_hash": "h2",
                                           "custom_name": "mix"}),
            "sd_merge_models": json.dumps({"h1": {"name": "alpha.safetensors"}, "h2": {"name": "beta [abcdef0123]"}})}
    save_file({"w": torch.zeros(1)}, str(tmp_path / "mix.safetensors"), metadata=meta)
    found = read_recipe(tmp_path / "mix.safetensors")
    assert found.notes == []
    merged = merge_in_memory(Recipe.from_dict(found.recipe))
    for k in KEYS[:3]:
        torch.testing.assert_close(merged[k], 0.7 * sds["alpha"][k] + 0.3 * sds["beta"][k])
    torch.testing.assert_close(merged[KEYS[3]], sds["alpha"][KEYS[3]])  # the VAE is never averaged: model A's


def test_a1111_unknown_mode_and_missing_models_are_said(tmp_path):
    meta = {"sd_merge_recipe": json.dumps({"interp_method": "No interpolation", "primary_model_hash": "h1"})}
    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata=meta)
    with pytest.raises(StudioError, match="No interpolation"):
        read_recipe(tmp_path / "x.safetensors")
    meta = {"sd_merge_recipe": json.dumps({"interp_method": "Add difference", "multiplier": 1,
                                           "primary_model_hash": "a", "secondary_model_hash": "b",
                                           "tertiary_model_hash": "c"})}
    save_file({"w": torch.zeros(1)}, str(tmp_path / "y.safetensors"), metadata=meta)
    found = read_recipe(tmp_path / "y.safetensors")
    assert found.recipe["merge_method"] == "add_difference" and len(found.notes) == 3


def _mixer(**steps):
    params = {"Steps": 20, "Seed": 1, "ModelMixer model a": "A.safetensors [0123456789]", "ModelMixer base model": "Z"}
    for letter, (model, mode, alpha, weights) in steps.items():
        params.update({f"ModelMixer use model {letter}": "True", f"ModelMixer model {letter}": model,
                       f"ModelMixer merge mode {letter}": mode, f"ModelMixer alpha {letter}": alpha})
        if weights:
            params.update({f"ModelMixer mbw mode {letter}": "True",
                           f"ModelMixer mbw weights {letter}": ",".join(map(str, weights))})
    return format_infotext("a fox", "", params)


def test_model_mixer_chain_equals_the_steps_applied_in_turn(tmp_path):
    sds = _checkpoints(tmp_path, ["A", "B", "C", "Z"])
    w = [0.2] * 13 + [0.9] * 13          # BASE…M00 ← 0.2 and OUT00…OUT11 ← 0.9 … except IN01:
    w[SD1_BLOCKS.index("IN01")] = 0.6
    png = _png(tmp_path / "img.png", _mixer(b=("B", "Sum", 0.5, w), c=("C", "Add-Diff", 0.4, None)))
    found = read_recipe(png)
    assert found.recipe["merge_method"] == "linear" and not found.recipe["parameters"]["normalize"]
    merged = merge_in_memory(Recipe.from_dict(found.recipe))
    alpha = {KEYS[0]: 0.2, KEYS[1]: 0.6, KEYS[2]: 0.9}
    torch.testing.assert_close(merged[KEYS[3]], sds["A"][KEYS[3]])  # the VAE is never averaged: model A's
    for k in KEYS[:3]:
        a = alpha[k]
        step1 = (1 - a) * sds["A"][k] + a * sds["B"][k]
        expected = step1 + 0.4 * (sds["C"][k] - sds["Z"][k])
        torch.testing.assert_close(merged[k], expected)


def test_model_mixer_single_sum_keeps_the_a1111_method(tmp_path):
    _checkpoints(tmp_path, ["A", "B"])
    found = read_recipe(_png(tmp_path / "one.png", _mixer(b=("B", "Sum", 0.35, None))))
    assert found.recipe["merge_method"] == "weighted_sum"
    assert found.recipe["parameters"] == {"alpha": 0.35}
    assert [m["model"] for m in found.recipe["models"]] == [str(tmp_path / "A.safetensors"),
                                                             str(tmp_path / "B.safetensors")]


def test_model_mixer_block_weights_of_a_wrong_length_are_refused(tmp_path):
    with pytest.raises(StudioError, match="7 block weights fit neither"):
        read_recipe(_png(tmp_path / "bad.png", _mixer(b=("B", "Sum", 0.5, [0.1] * 7))))


def test_cli_merges_the_recipe_an_image_carries(tmp_path, capsys):
    from safetensors.torch import load_file as load
    from studio.cli import main
    sds = _checkpoints(tmp_path, ["A", "B"])
    png = _png(tmp_path / "img.png", _mixer(b=("B", "Sum", 0.25, None)))
    assert main(["merge", str(png), str(tmp_path / "out.safetensors"), "--quiet"]) == 0
    out = load(str(tmp_path / "out.safetensors"))
    torch.testing.assert_close(out[KEYS[1]], 0.75 * sds["A"][KEYS[1]] + 0.25 * sds["B"][KEYS[1]])
    # a model the image names that is nowhere to be found: a note, then the merge's own one-line refusal
    png2 = _png(tmp_path / "other.png", _mixer(b=("Nowhere", "Sum", 0.25, None)))
    assert main(["merge", str(png2), str(tmp_path / "o2.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "note: model 'Nowhere' was not found" in err
