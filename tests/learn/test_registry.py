"""The learned methods' declarations: every learner declares its hyperparameters as its function takes them, unknown
hyperparameters are refused with the known names, and run_learned dispatches through the registry (a learner
registered here runs end to end)."""

from __future__ import annotations

import inspect

import pytest
import torch

from studio.errors import StudioError
from studio.learn import (LearnerSpec, get_learner, get_variant, learner, list_learners, list_variants, registry,
                          run_learned)
from studio.methods.registry import Param

BUILT_IN = ["adamerging", "samerging", "fda", "fisher", "regmean"]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Learners registered in a test go into a copy of the registry, dropped afterwards."""
    monkeypatch.setattr(registry, "LEARNERS", dict(registry.LEARNERS))


def test_every_learner_is_declared_as_its_function_takes_it():
    specs = list_learners()
    assert [s.name for s in specs] == BUILT_IN
    assert {s.name: s.produces for s in specs} == {"adamerging": "coefficients", "samerging": "coefficients",
                                                   "fda": "weights", "fisher": "weights", "regmean": "weights"}
    for s in specs:
        assert isinstance(s, LearnerSpec) and s.label and s.ref and s.summary
        signature = inspect.signature(s.fn).parameters
        assert s.takes_steps == (s.name in ("adamerging", "samerging", "fda"))
        for p in s.params:
            assert p.doc.strip() and p.title, (s.name, p.name)
            assert signature[p.py_name].default == p.default, (s.name, p.name)
            if p.choices:
                assert p.default in p.choices
            if p.range and p.default is not None:
                assert p.range[0] <= p.default <= p.range[1], (s.name, p.name)
        described = s.describe()
        assert set(described) == {"name", "label", "produces", "ref", "doc", "params", "variants"}
        assert [d["name"] for d in described["params"]] == [p.name for p in s.params]


def test_run_options_are_run_learned_arguments():
    from studio.learn import RUN_OPTIONS
    from studio.learn.adapters import CausalLMAdapter

    taken = inspect.signature(run_learned).parameters
    assert [p.name for p in RUN_OPTIONS] == ["max_items", "seq_len"]
    assert all(p.name in taken and p.doc for p in RUN_OPTIONS)
    assert inspect.signature(CausalLMAdapter).parameters["seq_len"].default == RUN_OPTIONS[1].default


def test_variants_are_declared_settings_of_registered_learners():
    variants = list_variants()
    assert [v.name for v in variants] == ["adamerging_task", "adamerging_layer", "samerging", "fda", "fisher",
                                          "regmean"]
    assert get_variant("adamerging_task").hparams == {"granularity": "task"}
    assert get_variant("fda").hparams == {"init": "task_arithmetic"}
    for v in variants:
        spec = get_learner(v.learner)
        assert spec.check(v.hparams) == v.hparams and v.label
    with pytest.raises(StudioError, match="adamerging_task"):
        get_variant("adamerging_diagonal")


def test_hyperparameters_are_coerced_and_unknown_ones_refused_with_the_known_names():
    reg = get_learner("RegMean")
    assert reg.check({"examples": "64", "alpha": 1}) == {"examples": 64, "alpha": 1.0}
    with pytest.raises(StudioError) as e:
        reg.check({"rho": 0.1})
    assert "'rho'" in str(e.value) and "examples, alpha" in str(e.value)
    sam = get_learner("samerging")
    assert sam.check({"temperature": None, "adaptive": "false"}) == {"temperature": None, "adaptive": False}
    with pytest.raises(StudioError, match="must be one of"):
        sam.check({"granularity": "diagonal"})
    with pytest.raises(StudioError, match="must be float"):
        get_learner("adamerging").check({"init": "task_arithmetic"})
    assert get_learner("fda").check({"init": "tsv_m"}) == {"init": "tsv_m"}
    with pytest.raises(StudioError, match="adamerging, samerging, fda, fisher, regmean"):
        get_learner("ties")
    # run_learned refuses before it opens any model
    with pytest.raises(StudioError, match="no hyperparameter 'lr'.*examples, alpha"):
        run_learned("regmean", "no/such/base.safetensors", ["no/such/expert.safetensors"], lr=0.1)


def test_registration_checks_the_declaration(scratch_registry):
    with pytest.raises(TypeError, match="lacks"):
        learner("t_missing", [Param("scale", default=1.0, doc="d")], produces="weights")(
            lambda adapter, data, *, progress=None, seed=0: {})
    with pytest.raises(ValueError, match="produces"):
        learner("t_bad", produces="recipes")(lambda adapter, data, *, progress=None, seed=0: {})
    with pytest.raises(StudioError, match="no hyperparameter 'speed'"):
        learner("t_variant", produces="weights", variants={"t_fast": ("fast", {"speed": 2})})(
            lambda adapter, data, *, progress=None, seed=0: {})
    with pytest.raises(ValueError, match="registered twice"):
        learner("regmean", produces="weights")(lambda adapter, data, *, progress=None, seed=0: {})


def test_run_learned_dispatches_to_a_registered_learner(scratch_registry, vision_zoo, vision_adapter, vision_data):
    calls = []

    @learner("scaled_mean", [Param("scale", default=1.0, range=(0, 2), doc="factor on the mean task vector")],
             produces="weights", label="Scaled mean", variants={"scaled_half": ("Scaled mean · ½", {"scale": 0.5})})
    def scaled_mean(adapter, data, *, scale=1.0, progress=None, seed=0):
        """θ0 plus ``scale`` times the experts' mean task vector (a test learner)."""
        calls.append((sorted(data), scale, seed))
        tv = adapter.task_vectors()
        state = {k: adapter.base[k] + scale * sum(tv[t][k] for t in adapter.tasks) / len(adapter.tasks)
                 for k in adapter.keys}
        return {"state_dict": state, "history": [], "trajectory": [], "metrics": {"steps": 0}}

    assert get_learner("scaled_mean").fn is scaled_mean and not scaled_mean.spec.takes_steps
    assert get_variant("scaled_half").learner == "scaled_mean"
    res = run_learned("scaled_mean", vision_zoo["base"], vision_zoo["experts"], data=vision_data,
                      adapter=vision_adapter, scale="0.5", seed=3)
    assert calls == [(sorted(vision_adapter.tasks), 0.5, 3)]
    assert res.method == "scaled_mean" and res.recipe is None and res.coefficients is None
    k = vision_adapter.keys[0]
    expected = vision_adapter.base[k] + 0.5 * sum(vision_adapter.experts[t][k] - vision_adapter.base[k]
                                                  for t in vision_adapter.tasks) / 3
    torch.testing.assert_close(res.state_dict[k], expected)
    # tensors the adapter does not merge come from the base, and the trajectory ends at the result's coordinates
    assert set(res.state_dict) == set(vision_adapter.base)
    assert res.trajectory[-1]["coords"] == pytest.approx([0.5 / 3] * 3, abs=1e-4)
