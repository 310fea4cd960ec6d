"""Shared fixtures (helpers live in tinymodels.py: several test folders have a conftest of their own)."""

from pathlib import Path

import pytest
import torch

from tinymodels import load_state, make_llama

VISION_TASKS = ["digits", "letters", "arrows"]


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> dict[str, Path]:
    """A base and three fine-tunes (base + noise), fp32, 3 layers."""
    root = tmp_path_factory.mktemp("llama")
    base = make_llama(root / "base", 0)
    state = load_state(base)
    out = {"base": base}
    for i, name in enumerate(["a", "b", "c"], start=1):
        out[name] = make_llama(root / name, i, base_state=state, noise=0.02 * i)
    return out


# Tiny diffusion checkpoints with the real key layouts (shapes from diffusers classes on the meta device);
# used by tests/sd and tests/lora.
@pytest.fixture(scope="session")
def ldm_tables():
    return {fam: _synth().ldm_table(fam, tiny=True, extras=True) for fam in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def ldm_files(tmp_path_factory, ldm_tables):
    d = tmp_path_factory.mktemp("ldm")
    return {fam: _synth().write_random(d / f"{fam}.safetensors", t, seed=1) for fam, t in ldm_tables.items()}


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    return {fam: _synth().write_random_pipeline(d / fam, fam, seed=3) for fam in ("sd1", "sdxl")}


def _synth():
    from studio.sd import synth

    return synth


@pytest.fixture(scope="session")
def vision_zoo(tmp_path_factory):
    """A reduced vision zoo (3 tasks, short pretraining and fine-tuning) built once per session with the zoo's own
    training functions; used by tests/learn, tests/zoo and tests/commands."""
    from studio.zoo.learned_report import build_vision_zoo

    torch.set_num_threads(1)
    root = build_vision_zoo(tmp_path_factory.mktemp("zoo") / "vision", VISION_TASKS, pretrain_steps=150,
                            finetune_steps=80, shots=5)
    return {"root": root, "base": str(root / "base.safetensors"),
            "experts": [str(root / "experts" / f"{t}.safetensors") for t in VISION_TASKS], "tasks": VISION_TASKS}
