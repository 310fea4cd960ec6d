"""Shared fixtures (helpers live in tinymodels.py: several test folders have a conftest of their own)."""

from pathlib import Path

import pytest

from tinymodels import load_state, make_llama


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
