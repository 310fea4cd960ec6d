"""Shared by the preview tests: tiny Llama families with a word-level tokenizer, tiny runnable diffusion checkpoints
(real key names, shrunk widths) and config folders that fit them (no network)."""

from pathlib import Path

import pytest
import torch


from tinymodels import add_word_tokenizer, load_state, make_llama


def _family(root: Path, tie: bool) -> dict[str, Path]:
    base = add_word_tokenizer(make_llama(root / "base", 0, tie=tie))
    state = load_state(base)
    out = {"base": base}
    for i, name in enumerate(["a", "b"], start=1):
        out[name] = add_word_tokenizer(make_llama(root / name, i, base_state=state, noise=0.05 * i, tie=tie))
    return out


@pytest.fixture(scope="session")
def lm_family(tmp_path_factory) -> dict[str, Path]:
    """A base and two fine-tunes (base + noise), fp32, 3 layers, separate head, each folder with a tokenizer."""
    return _family(tmp_path_factory.mktemp("lm"), tie=False)


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory) -> dict[str, Path]:
    """The same with tied embeddings (``tie_word_embeddings``: no ``lm_head.weight`` in the files)."""
    return _family(tmp_path_factory.mktemp("lm_tied"), tie=True)


def tiny_overrides(fam: str) -> dict:
    """Component config overrides that turn the shipped ``fam`` configs into the tiny runnable architecture."""
    from studio.sd import synth

    jsonable = lambda cfg: {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}  # noqa: E731
    te, te2 = synth.text_encoder_specs(fam, tiny=True, runnable=True)
    out = {"unet": jsonable(synth.unet_config(fam, tiny=True, runnable=True)), "vae": jsonable(synth.TINY_VAE),
           "text_encoder": synth.clip_text_config(te, fam)}
    if te2 is not None:
        out["text_encoder_2"] = synth.clip_text_config(te2, fam, second=True)
    return out


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """fam → {"a", "b": ldm single files (fp32), "cfg": a config folder for from_single_file / config=}."""
    from studio.preview.sd_configs import write_config_folder
    from studio.sd import synth

    made: dict[str, dict[str, Path]] = {}

    def make(fam: str) -> dict[str, Path]:
        if fam not in made:
            d = tmp_path_factory.mktemp(f"tiny_{fam}")
            table = synth.ldm_table(fam, tiny=True, runnable=True)
            made[fam] = {"a": synth.write_random(d / "a.safetensors", table, seed=1),
                         "b": synth.write_random(d / "b.safetensors", table, seed=2),
                         "cfg": write_config_folder(d / "cfg", fam, tiny_overrides(fam)), "dir": d}
        return made[fam]

    torch.set_num_threads(1)
    return make


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """Two tiny diffusers Flux dev folders, and one holding only the VAE and CLIP-L (no T5)."""
    from studio.sd import synth

    d = tmp_path_factory.mktemp("tiny_flux")
    return {"a": synth.write_random_flux_pipeline(d / "a", "flux-dev", seed=1),
            "b": synth.write_random_flux_pipeline(d / "b", "flux-dev", seed=2),
            "no_t5": synth.write_random_flux_pipeline(d / "no_t5", "flux-dev", seed=3,
                                                      components=("vae", "text_encoder")),
            "dir": d}
