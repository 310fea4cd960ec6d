"""The zoo families' evaluators return the documented shape and values (on the committed zoo)."""

import pytest
import torch

from studio.errors import StudioError
from studio.zoo import assets_root, get_family
from studio.zoo.build import load_state

built = pytest.mark.skipif(not (assets_root() / "metrics.json").exists(), reason="zoo assets not built")


@built
def test_vision_evaluator_shape_data_and_module():
    fam = get_family("vision")
    ev = fam.evaluator("preview")
    r = ev.evaluate(load_state("vision", fam.base))
    assert r["metric"] == "accuracy" and r["samples"] is None
    assert list(r["per_task"]) == fam.tasks
    assert all(0.0 <= v <= 100.0 for v in r["per_task"].values())
    assert r["average"] == pytest.approx(sum(r["per_task"].values()) / 8)
    x, y = ev.data("arrows", "unlabeled")
    assert x.shape == (300, 1, 8, 8) and x.dtype == torch.float32 and set(y.tolist()) == set(range(8))
    xt, _ = ev.data("arrows", "test")
    assert xt.shape[0] == 400
    module = ev.build_module(load_state("vision", fam.experts["arrows"]), "arrows")
    assert module(x[:5]).shape == (5, 8)
    with pytest.raises(StudioError):
        ev.evaluate({"embed.weight": torch.zeros(1)})


@built
def test_text_evaluator_shape():
    fam = get_family("text")
    ev = fam.evaluator("preview")
    r = ev.evaluate(load_state("text", fam.base))
    assert r["metric"] == "perplexity" and set(r["per_task"]) == set(fam.tasks)
    assert all(1.0 < v < 512 for v in r["per_task"].values())
    assert set(r["samples"]) == set(fam.tasks) and all(isinstance(s, str) for s in r["samples"].values())
    ids, labels = ev.data("code", "unlabeled")
    assert ids.shape[1] == 64 and torch.equal(ids, labels)


@built
def test_diffusion_evaluator_is_seeded():
    fam = get_family("diffusion")
    ev = fam.evaluator("preview")
    state = load_state("diffusion", fam.base)
    a, b = ev.evaluate(state), ev.evaluate(state)
    assert a["metric"] == "style" and set(a["per_task"]) == set(fam.tasks)
    assert a["samples"].ndim == 3 and a["samples"].shape[2] == 3
    assert (a["samples"] == b["samples"]).all() and a["per_task"] == b["per_task"]
