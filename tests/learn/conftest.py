"""The vision adapter and its unlabeled data on the reduced vision zoo (``vision_zoo`` in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def vision_adapter(vision_zoo):
    from studio.learn.adapters import make_adapter

    return make_adapter(vision_zoo["base"], vision_zoo["experts"], device=torch.device("cpu"))


@pytest.fixture(scope="session")
def vision_data(vision_adapter):
    from studio.learn.data import resolve_data

    return resolve_data("zoo:vision", vision_adapter, max_items=96)
