"""LearnResult.save to a ``.safetensors`` path: the weights and ``<stem>.learned.json`` beside them, both or neither."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from studio.errors import StudioError
from studio.learn.api import LearnResult


def result(**changes):
    sd = {"w": torch.tensor([[1.0, -2.5], [0.125, 3.0]]), "b": torch.tensor([0.5, 1.5]), "ids": torch.arange(3)}
    fields = {"method": "regmean", "tasks": ["a", "b"], "state_dict": sd, "metrics": {"seconds": 1.5},
              "history": [0.75, 0.5]}
    return LearnResult(**{**fields, **changes})


def test_save_to_a_safetensors_path_writes_weights_and_learned_json(tmp_path):
    res = result()
    written = res.save(tmp_path / "m.safetensors", "float16", label="RegMean", base="base.safetensors",
                       experts=["e1.safetensors", "e2.safetensors"])
    assert written == ["m.safetensors", "m.learned.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.learned.json", "m.safetensors"]
    got = load_file(tmp_path / "m.safetensors")
    assert got["w"].dtype == torch.float16 and torch.equal(got["w"], res.state_dict["w"].half())
    assert got["ids"].dtype == torch.int64 and got["ids"].tolist() == [0, 1, 2]
    inputs = {"method": "RegMean", "base": "base.safetensors", "experts": ["e1.safetensors", "e2.safetensors"]}
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", "learned_method": "regmean", "merge_studio_learned": json.dumps(inputs)}
    summary = json.loads((tmp_path / "m.learned.json").read_text())
    assert summary == {**inputs, "metrics": {"seconds": 1.5}, "history": [0.75, 0.5]}


def test_save_to_a_safetensors_path_defaults_to_float32_and_the_method_name(tmp_path):
    res = result()
    res.state_dict["w"] = res.state_dict["w"].to(torch.bfloat16)
    res.save(tmp_path / "m.safetensors")
    got = load_file(tmp_path / "m.safetensors")
    assert got["w"].dtype == torch.float32 and torch.equal(got["w"], res.state_dict["w"].float())
    assert json.loads((tmp_path / "m.learned.json").read_text())["method"] == "regmean"


def test_failed_save_to_a_safetensors_path_leaves_neither_file(tmp_path):
    class Boom:
        def __float__(self):
            raise RuntimeError("not serialisable")

    with pytest.raises(RuntimeError, match="not serialisable"):
        result(metrics={"x": Boom()}).save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StudioError, match="no merged weights"):
        LearnResult(method="adamerging", tasks=["a"]).save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
