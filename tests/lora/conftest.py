"""Tiny diffusion checkpoints with the real key layouts (shapes from diffusers classes on the meta device)."""

from __future__ import annotations

import pytest

from studio.sd import synth


@pytest.fixture(scope="session")
def ldm_tables():
    return {fam: synth.ldm_table(fam, tiny=True, extras=True) for fam in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def ldm_files(tmp_path_factory, ldm_tables):
    d = tmp_path_factory.mktemp("ldm")
    return {fam: synth.write_random(d / f"{fam}.safetensors", t, seed=1) for fam, t in ldm_tables.items()}


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    return {fam: synth.write_random_pipeline(d / fam, fam, seed=3) for fam in ("sd1", "sdxl")}
