"""Learned merges on the zoo: rows per declared variant, read from the learners' registry."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from studio.errors import StudioError
from studio.learn import learner, list_variants, registry
from studio.methods.registry import Param
from studio.zoo import vision as V
from studio.zoo.learned_report import zoo_rows
from studio.zoo.vision_evaluator import VisionEvaluator


def test_zoo_rows_shape(vision_zoo):
    rows = zoo_rows("vision", budget=64, root=vision_zoo["root"], methods=["regmean", "adamerging_task"],
                    steps={"adamerging_task": 3})
    assert [r["method"] for r in rows] == ["regmean", "adamerging_task"]
    for r in rows:
        assert set(r["per_task"]) == set(vision_zoo["tasks"]) and 0 <= r["average"] <= 100
        assert r["normalized"] is not None


def test_rows_are_the_registered_variants(vision_zoo, monkeypatch):
    """A learner registered here, with two variants, gives one row per variant through run_learned."""
    monkeypatch.setattr(registry, "LEARNERS", dict(registry.LEARNERS))

    @learner("expert_pick", [Param("task", default=0, kind=int, range=(0, 2), doc="index of the expert returned")],
             produces="weights", variants={"pick_first": ("first expert", {"task": 0}),
                                           "pick_last": ("last expert", {"task": 2})})
    def expert_pick(adapter, data, *, task=0, progress=None, seed=0):
        """One expert's weights unchanged (a test learner)."""
        return {"state_dict": dict(adapter.experts[adapter.tasks[task]]), "history": [], "trajectory": [],
                "metrics": {}}

    rows = zoo_rows("vision", budget=64, root=vision_zoo["root"], methods=["pick_first", "pick_last"])
    assert [r["method"] for r in rows] == ["pick_first", "pick_last"]
    ev = VisionEvaluator(vision_zoo["root"], vision_zoo["tasks"], 64)
    for row, path in zip(rows, [vision_zoo["experts"][0], vision_zoo["experts"][2]]):
        assert row["per_task"] == pytest.approx(ev.evaluate(load_file(path))["per_task"])
    # an expert scores 100 % normalized on its own task
    assert rows[0]["normalized_per_task"]["digits"] == pytest.approx(100.0)
    assert rows[1]["normalized_per_task"]["arrows"] == pytest.approx(100.0)
    assert [v.name for v in list_variants()][-2:] == ["pick_first", "pick_last"]
    with pytest.raises(StudioError, match="unknown learned variant 'pick_middle'"):
        zoo_rows("vision", budget=8, root=vision_zoo["root"], methods=["pick_middle"])


def test_a_number_budget_scores_the_first_test_examples(vision_zoo):
    ev = VisionEvaluator(vision_zoo["root"], vision_zoo["tasks"], 40)
    state = load_file(vision_zoo["experts"][1])
    got = ev.evaluate(state)["per_task"]
    module = ev.build_module(state, "letters")
    x, y = V.task_data("letters", "test")
    with torch.no_grad():
        expected = 100.0 * (module(x[:40]).argmax(-1) == y[:40]).float().mean().item()
    assert got["letters"] == pytest.approx(expected)
    assert set(got) == set(vision_zoo["tasks"])
