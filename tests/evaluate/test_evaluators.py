"""Evaluators return the documented shape and values (built on the committed zoo or tiny temp models)."""

import math

import pytest

from studio.errors import StudioError
from studio.evaluate import LLMEvaluator, normalized, result
from studio.zoo import assets_root, get_family

built = pytest.mark.skipif(not (assets_root() / "metrics.json").exists(), reason="zoo assets not built")


def test_result_shape_and_normalized():
    r = result("accuracy", {"a": 50.0, "b": 100.0}, None)
    assert r == {"metric": "accuracy", "per_task": {"a": 50.0, "b": 100.0}, "average": 75.0, "samples": None}
    assert normalized({"a": 45.0, "b": 90.0}, {"a": 90.0, "b": 90.0}, "accuracy") == pytest.approx(0.75)
    # perplexity: lower is better, so the ratio is expert / value
    assert normalized({"a": 20.0}, {"a": 10.0}, "perplexity") == pytest.approx(0.5)


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
