"""A reduced vision zoo (3 tasks, short pretraining and fine-tuning) built once per session with the zoo's own
training functions, plus a tiny Llama family with per-task text for the causal-LM adapter."""

from __future__ import annotations

import pytest
import torch

TASKS = ["digits", "letters", "arrows"]


@pytest.fixture(scope="session")
def vision_zoo(tmp_path_factory):
    from studio.learn.zoo import build_vision_zoo

    torch.set_num_threads(1)
    root = build_vision_zoo(tmp_path_factory.mktemp("zoo") / "vision", TASKS, pretrain_steps=150,
                            finetune_steps=80, shots=5)
    return {"root": root, "base": str(root / "base.safetensors"),
            "experts": [str(root / "experts" / f"{t}.safetensors") for t in TASKS], "tasks": TASKS}


@pytest.fixture(scope="session")
def vision_adapter(vision_zoo):
    from studio.learn.adapters import make_adapter

    return make_adapter(vision_zoo["base"], vision_zoo["experts"], device=torch.device("cpu"))


@pytest.fixture(scope="session")
def vision_data(vision_adapter):
    from studio.learn.data import resolve_data

    return resolve_data("zoo:vision", vision_adapter, max_items=96)
