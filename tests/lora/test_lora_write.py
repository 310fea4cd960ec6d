"""The LoRA writers go through studio.output's one safetensors writer: for a fixed input they write the same bytes as
the LoRA package's own writer did before it was removed (digests recorded from that code), and the same tensors and
metadata as safetensors.torch.save_file."""

import hashlib
import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from studio.lora.io import save_like
from studio.lora.write import LoraOut, write_lora
from studio.sd.synth import write_random
from studio.sources import open_source

# sha256 of the files the removed studio/lora/io.py writer produced for the inputs below
OLD_DIGESTS = {
    "k.safetensors": "0b66d5ffefa4e5c8ad07805a0a4137772f35ccd991ace92f8036403b64971a04",
    "k16.safetensors": "a6a1960b8b06ff896addd9d1abee0b908b2c2095e9e848ad84cd519876195747",
    "d.safetensors": "224468a47f13bc5d7482ebfcb29bece8c4154c0235d3ab0c5e0e6d5f8b5bd388",
    "peft/adapter_model.safetensors": "1ba6cb4b4c6a79f05ae3fe7c74159f6b5ca460ca67bfe35cc898b407ccfdcc7b",
    # synth's random weights are scaled to their fan-in since the own-SD previews (new values, same writer)
    "r.safetensors": "6ecf6cc92cbb920b6134f2e97c9ad8a654cae0b8acc779d2502f1ea093ad207f",
    "like.safetensors": "c785dbdd666787e8ba8a58dca91e4c46731cfa0c192c723703eee317190b926d",
}


def ramp(*shape, k=1):
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.float32).reshape(shape) * 0.01 * k - 0.3


def fixed_mods():
    return {"lora_unet_down_blocks_0_attentions_0_proj_in": LoraOut(up=ramp(8, 4), down=ramp(4, 6, k=2), alpha=2.0),
            "lora_unet_conv_in": LoraOut(up=ramp(8, 2, 1, 1, k=3), down=ramp(2, 4, 3, 3, k=4), alpha=None,
                                         bias=ramp(8, k=5)),
            "lora_te_text_model_encoder_layers_0_mlp_fc1": LoraOut(up=ramp(6, 4, k=6), down=ramp(4, 5, k=7),
                                                                   alpha=1.0)}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_files_are_byte_identical_to_the_previous_writer(tmp_path):
    write_lora(tmp_path / "k.safetensors", fixed_mods(), "kohya", metadata={"studio_recipe": '{"type": "test"}'})
    write_lora(tmp_path / "k16.safetensors", fixed_mods(), "kohya", dtype=torch.float16)
    no_bias = {k: v for k, v in fixed_mods().items() if v.bias is None}
    write_lora(tmp_path / "d.safetensors", no_bias, "diffusers", dtype=torch.bfloat16)
    write_lora(tmp_path / "peft", no_bias, "peft", base_model="base/model")
    table = {"a.weight": ((4, 3), torch.float32), "a.bias": ((4,), torch.float16), "pos": ((1, 5), torch.int64)}
    write_random(tmp_path / "r.safetensors", table, seed=7)
    save_like(open_source(str(tmp_path / "r.safetensors")), tmp_path / "like.safetensors", dtype=torch.bfloat16,
              metadata={"note": "x"}, progress=False)
    assert {name: digest(tmp_path / name) for name in OLD_DIGESTS} == OLD_DIGESTS
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["rank_pattern"], cfg["base_model_name_or_path"]) == (4, 4, {}, "base/model")
    assert cfg["target_modules"] == ["lora_te_text_model_encoder_layers_0_mlp_fc1",
                                     "lora_unet_down_blocks_0_attentions_0_proj_in"]


def test_kohya_file_holds_the_factors_alpha_and_metadata(tmp_path):
    mods = fixed_mods()
    path = write_lora(tmp_path / "k.safetensors", mods, "kohya", metadata={"studio_recipe": "{}"})
    got = load_file(path)
    name = "lora_unet_conv_in"
    assert torch.equal(got[f"{name}.lora_up.weight"], mods[name].up)
    assert torch.equal(got[f"{name}.lora_down.weight"], mods[name].down)
    assert torch.equal(got[f"{name}.diff_b"], mods[name].bias)
    assert got[f"{name}.alpha"].shape == () and got[f"{name}.alpha"].item() == 2.0   # no alpha given: the rank
    assert got["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].item() == 2.0
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["studio_recipe"] == "{}" and meta["ss_network_dim"] == "Dynamic"
    assert len(got) == 3 * 3 + 1 and sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]
