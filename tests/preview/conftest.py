"""Tiny Llama families with a word-level tokenizer (no network), shared by the preview tests."""

from pathlib import Path

import pytest

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
