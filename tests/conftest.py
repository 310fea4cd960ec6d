"""Shared fixtures (helpers live in tinymodels.py: several test folders have a conftest of their own)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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


# A base and three experts (base + noise) with layer-like keys, and a TIES recipe over them (density 0.5): the
# analysis numbers, their figures and the analyze command's report.
@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("an_cli")
    g = torch.Generator().manual_seed(0)
    base = {f"blocks.{i}.mlp.fc1.weight": torch.randn(6, 4, generator=g) for i in range(3)}
    base.update({f"blocks.{i}.attn.qkv.weight": torch.randn(12, 4, generator=g) for i in range(3)})
    base["embed.weight"] = torch.randn(5, 4, generator=g)
    base["head.weight"] = torch.randn(2, 4, generator=g)
    save_file(base, str(root / "base.safetensors"))
    models = []
    for n in range(3):
        gn = torch.Generator().manual_seed(n + 1)
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=gn) for k, v in base.items()},
                  str(root / f"e{n}.safetensors"))
        models.append(f"  - model: {root / f'e{n}.safetensors'}\n    parameters: {{weight: 1.0}}")
    text = (f"merge_method: ties\nbase_model: {root / 'base.safetensors'}\nparameters: {{density: 0.5}}\n"
            "models:\n" + "\n".join(models) + "\n")
    path = root / "recipe.yaml"
    path.write_text(text)
    return path
