"""The model card's metadata: the library that loads the merge, and only Hub ids as base models."""

from __future__ import annotations

import yaml

from studio.output import library_name, model_card
from studio.sd import synth
from studio.sources import open_source


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_the_card_names_the_library_of_the_models_and_links_only_hub_ids(tmp_path):
    from tinymodels import make_llama

    pipe = synth.write_random_pipeline(tmp_path / "sd", "sd1", tiny=True)
    llama = make_llama(tmp_path / "llama", 0)
    single = synth.write_random(tmp_path / "sd.safetensors", synth.ldm_table("sd1"))
    assert library_name(open_source(str(pipe))) == "diffusers"
    assert library_name(open_source(str(llama))) == "transformers"
    assert library_name(open_source(str(single))) is None  # an SD single file is not a transformers model
    card = model_card("merge_method: linear\n", "Linear", [str(pipe), "org/other@v2"], str(pipe), library="diffusers")
    meta = _front_matter(card)
    assert meta["library_name"] == "diffusers" and meta["base_model"] == ["org/other"]
    assert f"* {pipe} (base)" in card  # local models are listed in the text, not linked
    assert "library_name" not in _front_matter(model_card("x: 1\n", "Linear", [str(single)], None))
