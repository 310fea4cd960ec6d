"""Evaluators return the documented shape and values (built on the committed zoo or tiny temp models)."""

import math

import pytest
import torch

from studio.errors import StudioError
from studio.evaluate import LLMEvaluator, normalized, result
from studio.zoo import assets_root, get_family
from studio.zoo.build import _load_state

built = pytest.mark.skipif(not (assets_root() / "metrics.json").exists(), reason="zoo assets not built")


def test_result_shape_and_normalized():
    r = result("accuracy", {"a": 50.0, "b": 100.0}, None)
    assert r == {"metric": "accuracy", "per_task": {"a": 50.0, "b": 100.0}, "average": 75.0, "samples": None}
    assert normalized({"a": 45.0, "b": 90.0}, {"a": 90.0, "b": 90.0}, "accuracy") == pytest.approx(0.75)
    # perplexity: lower is better, so the ratio is expert / value
    assert normalized({"a": 20.0}, {"a": 10.0}, "perplexity") == pytest.approx(0.5)


@built
def test_vision_evaluator_shape_data_and_module():
    fam = get_family("vision")
    ev = fam.evaluator("preview")
    r = ev.evaluate(_load_state("vision", fam.base))
    assert r["metric"] == "accuracy" and r["samples"] is None
    assert list(r["per_task"]) == fam.tasks
    assert all(0.0 <= v <= 100.0 for v in r["per_task"].values())
    assert r["average"] == pytest.approx(sum(r["per_task"].values()) / 8)
    x, y = ev.data("arrows", "unlabeled")
    assert x.shape == (300, 1, 8, 8) and x.dtype == torch.float32 and set(y.tolist()) == set(range(8))
    xt, _ = ev.data("arrows", "test")
    assert xt.shape[0] == 400
    module = ev.build_module(_load_state("vision", fam.experts["arrows"]), "arrows")
    assert module(x[:5]).shape == (5, 8)
    with pytest.raises(StudioError):
        ev.evaluate({"embed.weight": torch.zeros(1)})


@built
def test_text_evaluator_shape():
    fam = get_family("text")
    ev = fam.evaluator("preview")
    r = ev.evaluate(_load_state("text", fam.base))
    assert r["metric"] == "perplexity" and set(r["per_task"]) == set(fam.tasks)
    assert all(1.0 < v < 512 for v in r["per_task"].values())
    assert set(r["samples"]) == set(fam.tasks) and all(isinstance(s, str) for s in r["samples"].values())
    ids, labels = ev.data("code", "unlabeled")
    assert ids.shape[1] == 64 and torch.equal(ids, labels)


@built
def test_diffusion_evaluator_is_seeded():
    fam = get_family("diffusion")
    ev = fam.evaluator("preview")
    state = _load_state("diffusion", fam.base)
    a, b = ev.evaluate(state), ev.evaluate(state)
    assert a["metric"] == "style" and set(a["per_task"]) == set(fam.tasks)
    assert a["samples"].ndim == 3 and a["samples"].shape[2] == 3
    assert (a["samples"] == b["samples"]).all() and a["per_task"] == b["per_task"]


@built
def test_llm_evaluator_on_a_text_file(tmp_path):
    fam = get_family("text")
    text = tmp_path / "t.txt"
    text.write_text("import os\n\ndef main():\n    return os.getcwd()\n" * 20)
    ev = LLMEvaluator(fam.experts["code"], text, prompts=["import "], budget="preview", seq_len=64)
    r = ev.evaluate_module(ev.model)
    assert r["metric"] == "perplexity" and 1.0 < r["per_task"]["text"] < 100
    assert r["samples"]["import "].startswith("import ")
    with pytest.raises(StudioError):
        LLMEvaluator(fam.experts["code"], tmp_path / "missing.txt")


def test_budget_is_checked():
    from studio.evaluate.common import check_budget

    with pytest.raises(StudioError):
        check_budget("huge")
    assert not math.isnan(result("style", {"a": 0.5}, None)["average"])
