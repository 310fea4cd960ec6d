"""studio.describe: header-only facts, including the diffusion family (None for anything that is not one)."""

import torch

from studio.describe import describe
from studio.layout.sd import diffusion_family
from studio.sources import DictSource, open_source


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
