"""studio.describe: header-only facts, including the diffusion family (None for anything that is not one) and an
architecture read from the safetensors metadata (SAI ModelSpec) when no config names one."""

import torch
from safetensors.torch import load_file, save_file

from studio.describe import describe
from studio.layout.sd import diffusion_family
from studio.sources import DictSource, open_source
from studio.zoo import get_family


def test_describe_names_the_diffusion_family_or_none(ldm_files, llama_family):
    sd1 = describe(open_source(str(ldm_files["sd1"])))
    assert (sd1["family"], sd1["architecture"], sd1["layout"], sd1["groups"]) == ("sd1", "sd1", "sd1-blocks", 27)
    llm = describe(open_source(str(llama_family["base"])))
    assert (llm["family"], llm["architecture"], llm["layout"]) == (None, "LlamaForCausalLM", "layers")


def test_diffusion_family_is_none_for_unknown_denoisers():
    # denoiser keys (model.diffusion_model.*) without any family's marker keys: detect_family raises, this says None
    odd = DictSource({"model.diffusion_model.foo.weight": torch.zeros(2, 2)})
    assert diffusion_family(odd) is None
    assert diffusion_family(DictSource({"model.layers.0.mlp.weight": torch.zeros(2, 2)})) is None


def test_an_sdxl_file_names_its_modelspec_architecture(ldm_files, tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file(load_file(ldm_files["sdxl"]), path, metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    info = describe(open_source(str(path)))
    assert (info["family"], info["architecture"]) == ("sdxl", "stable-diffusion-xl-v1-base")


def test_zoo_vision_files_name_their_architecture_and_a_layer_layout(vision_zoo):
    shipped = get_family("vision")
    for ref in (shipped.base, shipped.experts["digits"], vision_zoo["base"], vision_zoo["experts"][0]):
        info = describe(open_source(ref))
        assert (info["architecture"], info["layout"], info["groups"]) == ("merge-studio/residual-mlp", "layers", 6)
    assert open_source(shipped.heads["digits"]).metadata["modelspec.title"] == "Merge Studio zoo vision head: digits"
