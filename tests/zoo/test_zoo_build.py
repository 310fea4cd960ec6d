"""A reduced zoo trains: each expert clearly beats the base on its own task."""

import json

import pytest
import torch

from studio.errors import StudioError
from studio.zoo import get_family, list_families
from studio.zoo.build import build


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    metrics = build(["vision", "text"], root=root, quick=True, log=lambda m: None)
    return root, metrics


def test_quick_vision_experts_beat_base(quick_zoo):
    root, metrics = quick_zoo
    m = metrics["vision"]
    assert m["metric"] == "accuracy"
    assert set(m["experts"]) == {"digits", "letters", "arrows"}
    for task, acc in m["experts"].items():
        assert acc >= m["base"][task] + 8.0, (task, acc, m["base"][task])
    assert json.loads((root / "metrics.json").read_text())["vision"]["quick"] is True


def test_quick_text_experts_beat_base(quick_zoo):
    _, metrics = quick_zoo
    m = metrics["text"]
    assert m["metric"] == "perplexity"
    for corpus, ppl in m["experts"].items():
        assert ppl < 0.9 * m["base"][corpus], (corpus, ppl, m["base"][corpus])


def test_quick_build_is_deterministic(quick_zoo, tmp_path):
    from safetensors.torch import load_file

    from studio.zoo.build import build_vision

    root, _ = quick_zoo
    build_vision(tmp_path, quick=True, tasks=["digits"])
    a = load_file(str(root / "vision" / "experts" / "digits.safetensors"))
    b = load_file(str(tmp_path / "experts" / "digits.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_quick_families_are_not_listed_as_full(quick_zoo):
    root, _ = quick_zoo
    # a quick build holds only some experts, so the catalogue does not list it as a complete family
    assert "vision" not in list_families(root)
    with pytest.raises(StudioError, match="not built"):
        get_family("vision", root)
