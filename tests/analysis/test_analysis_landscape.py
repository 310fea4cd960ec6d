"""Landscapes: every grid point equals scoring that merge directly; markers, projections and directions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from studio.analysis import (filter_normalized_direction, landscape_1d, landscape_2d, landscape_random_plane,
                             landscape_task_plane)
from studio.engine import merge_in_memory
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.layout import detect_layout
from studio.recipe import Recipe
from studio.recipe import edit as E
from studio.recipe.edit import SettingPath
from studio.sources import open_source


def set_param(recipe: Recipe, path, value) -> Recipe:
    return Recipe.from_dict(E.set_value(recipe.to_dict(), path, value, detect_layout(open_source(recipe.base_model))))


def get_param(recipe: Recipe, path):
    layout = detect_layout(open_source(recipe.base_model))
    return E.plain_value(recipe.to_dict(), SettingPath.parse(path), layout)

D = 8


def forward(sd, x):
    h = torch.tanh(x @ sd["blocks.0.fc.weight"].T + sd["blocks.0.fc.bias"])
    h = h + torch.tanh(h @ sd["blocks.1.fc.weight"].T + sd["blocks.1.fc.bias"])
    h = torch.nn.functional.layer_norm(h, (D,), sd["norm.weight"], None)
    return h @ sd["head.weight"].T


class Loss:
    """Mean squared error against the first expert's outputs; the evaluator protocol (evaluate → dict)."""

    metric = "mse"

    def __init__(self, target_sd):
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(64, D, generator=g)
        self.y = forward(target_sd, self.x)
        self.calls = 0

    def evaluate(self, sd):
        self.calls += 1
        return {"average": float(((forward(sd, self.x) - self.y) ** 2).mean()), "metric": "mse"}


def score(scorer, sd):
    return scorer.evaluate(sd)["average"]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    g = torch.Generator().manual_seed(0)
    base = {"blocks.0.fc.weight": torch.randn(D, D, generator=g) / 3, "blocks.0.fc.bias": torch.zeros(D),
            "blocks.1.fc.weight": torch.randn(D, D, generator=g) / 3, "blocks.1.fc.bias": torch.zeros(D),
            "norm.weight": torch.ones(D), "head.weight": torch.randn(3, D, generator=g),
            "steps": torch.tensor([5], dtype=torch.int64)}
    save_file(base, str(root / "base.safetensors"))
    out = {"base": root / "base.safetensors", "states": {"base": base}}
    for i, name in enumerate(["a", "b", "c"], 1):
        gi = torch.Generator().manual_seed(i)
        sd = {k: (v + 0.3 * torch.randn(v.shape, generator=gi)) if v.is_floating_point() else v.clone()
              for k, v in base.items()}
        save_file(sd, str(root / f"{name}.safetensors"))
        out[name] = root / f"{name}.safetensors"
        out["states"][name] = sd
    return out


def ta_recipe(fam, weights, lam=1.0, names="ab"):
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(fam["base"]),
                             "parameters": {"lambda": lam},
                             "models": [{"model": str(fam[n]), "parameters": {"weight": w}}
                                        for n, w in zip(names, weights)]})


def test_param_paths(fam):
    """Landscapes address settings with the recipe's one setting path (studio.recipe.edit)."""
    r = ta_recipe(fam, [0.3, 0.7], lam=0.9)
    assert SettingPath.parse("models.0.weight").parts == ["models", 0, "weight"]
    assert get_param(r, "parameters.lambda") == 0.9
    assert get_param(r, "models.1.weight") == 0.7
    r2 = set_param(r, "models.*.weight", 0.5)
    assert [m.parameters["weight"] for m in r2.models] == [0.5, 0.5]
    assert r.models[0].parameters["weight"] == 0.3  # the original is untouched
    r3 = set_param(r, "models.0.weight@L01", 2.0)
    assert r3.models[0].parameters["weight"] == {"*": 0.3, "L01": 2.0}
    assert get_param(r3, "models.0.weight@L01") == 2.0
    assert get_param(r3, "models.0.weight@L00") == 0.3
    with pytest.raises(StudioError):
        SettingPath.parse("weights.0")
    with pytest.raises(StudioError):
        set_param(r, "models.5.weight", 1.0)


def test_param_grid_points_equal_direct_merges(fam):
    scorer = Loss(fam["states"]["a"])
    r = ta_recipe(fam, [0.3, 0.7], lam=0.9)
    xs, ys = [0.0, 0.5, 1.0], [0.5, 1.0]
    out = landscape_2d(r, scorer, plane="params", path_x="models.0.weight", values_x=xs,
                       path_y="parameters.lambda", values_y=ys, trajectories=[{"name": "t", "points": [[0.1, 0.6]]}])
    assert out["kind"] == "params" and len(out["z"]) == 2 and len(out["z"][0]) == 3
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            direct = merge_in_memory(set_param(set_param(r, "models.0.weight", x), "parameters.lambda", y))
            assert out["z"][j][i] == pytest.approx(score(scorer, direct), rel=1e-5, abs=1e-7)
    (cur,) = out["markers"]
    assert (cur["x"], cur["y"]) == (0.3, 0.9)
    assert cur["score"] == pytest.approx(score(scorer, merge_in_memory(r)), rel=1e-5)
    assert out["trajectories"][0]["x"] == [0.1] and out["trajectories"][0]["y"] == [0.6]
    assert out["x"]["label"] == "weight (model 0)" and out["score_name"] == "mse"


def test_1d_sweep_restores_live(fam):
    scorer = Loss(fam["states"]["a"])
    r = ta_recipe(fam, [0.3, 0.7])
    live = LiveMerger(r, device="cpu")
    out = landscape_1d(live, "parameters.lambda", [0.0, 0.5, 2.0], scorer)
    assert out["z"][0] == pytest.approx(score(scorer, fam["states"]["base"]), rel=1e-5)
    direct = merge_in_memory(set_param(r, "parameters.lambda", 2.0))
    assert out["z"][2] == pytest.approx(score(scorer, direct), rel=1e-5)
    assert out["markers"][0]["x"] == 1.0  # lambda unset → the method default
    ref = merge_in_memory(r)
    for k, v in ref.items():
        assert torch.allclose(live.state[k].to(v.dtype), v, atol=1e-6)


def test_task_plane_points_markers_and_trajectories(fam):
    scorer = Loss(fam["states"]["a"])
    r3 = ta_recipe(fam, [0.3, 0.7, 0.0], names="abc")  # three experts; the plane of a and b
    alphas, betas = [-0.5, 0.0, 0.25, 1.0], [0.0, 0.5, 1.5]
    traj = {"name": "learned", "points": [{"coords": [0.2, 0.4, 0.0], "loss": 1.5}, [0.6, 0.6, 0.0],
                                          {"coords": [0.0, 0.0, 1.0]}]}
    out = landscape_task_plane(r3, scorer, 0, 1, alphas=alphas, betas=betas, trajectories=[traj])
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            direct = merge_in_memory(ta_recipe(fam, [a, b]))
            assert out["z"][j][i] == pytest.approx(score(scorer, direct), rel=1e-4, abs=1e-6)
    m = {x["name"]: x for x in out["markers"]}
    assert (m["base"]["x"], m["base"]["y"]) == (0.0, 0.0)
    a_name, b_name = str(fam["a"]), str(fam["b"])
    assert (m[a_name]["x"], m[a_name]["y"]) == (1.0, 0.0) and (m["average"]["x"], m["average"]["y"]) == (0.5, 0.5)
    assert m[a_name]["score"] == pytest.approx(0.0, abs=1e-9)  # the loss's target is expert a itself
    assert m[b_name]["score"] == pytest.approx(score(scorer, fam["states"]["b"]), rel=1e-5)
    assert m["current"]["x"] == pytest.approx(0.3, abs=1e-5) and m["current"]["y"] == pytest.approx(0.7, abs=1e-5)
    assert m["current"]["residual"] < 1e-3
    t = out["trajectories"][0]
    assert t["name"] == "learned" and t["score"][0] == 1.5
    assert t["x"][:2] == pytest.approx([0.2, 0.6], abs=1e-5) and t["y"][:2] == pytest.approx([0.4, 0.6], abs=1e-5)
    assert t["residual"][0] < 1e-3 and t["residual"][2] > 0.5  # τ_c is mostly off the (a, b) plane


def test_task_plane_orthonormal(fam):
    scorer = Loss(fam["states"]["a"])
    srcs = [str(fam["base"]), str(fam["a"]), str(fam["b"])]
    out = landscape_task_plane(srcs, scorer, 0, 1, orthonormal=True, steps=3, trajectories=[[[1.0, 0.0], [0.0, 1.0]]])
    st = fam["states"]
    keys = [k for k in st["base"] if st["base"][k].is_floating_point()]
    ta = torch.cat([(st["a"][k] - st["base"][k]).flatten() for k in keys])
    tb = torch.cat([(st["b"][k] - st["base"][k]).flatten() for k in keys])
    u = ta / ta.norm()
    c = float(tb @ u)
    w = float((tb - c * u).norm())
    m = {x["name"]: x for x in out["markers"]}
    assert m[str(fam["a"])]["x"] == pytest.approx(float(ta.norm()), rel=1e-5)
    assert m[str(fam["b"])]["x"] == pytest.approx(c, rel=1e-4) and m[str(fam["b"])]["y"] == pytest.approx(w, rel=1e-5)
    t = out["trajectories"][0]
    assert t["x"][0] == pytest.approx(float(ta.norm()), rel=1e-5) and abs(t["y"][0]) < 1e-4
    assert t["x"][1] == pytest.approx(c, rel=1e-4) and t["y"][1] == pytest.approx(w, rel=1e-4)
    assert "current" not in m  # plain sources: no recipe merge to mark
    assert len(out["x"]["values"]) == 3 and out["x"]["values"][0] < 0 < out["x"]["values"][-1]


def test_random_plane(fam):
    scorer = Loss(fam["states"]["a"])
    r = ta_recipe(fam, [0.5, 0.5])
    out = landscape_random_plane(r, scorer, steps=3, span=0.5, seed=3, trajectories=[[{"coords": [0.5, 0.5]}]])
    again = landscape_random_plane(r, scorer, steps=3, span=0.5, seed=3)
    assert out["z"] == again["z"]
    merged = merge_in_memory(r)
    assert out["z"][1][1] == pytest.approx(score(scorer, merged), rel=1e-5)
    assert out["markers"][0]["score"] == pytest.approx(out["z"][1][1])
    t = out["trajectories"][0]
    assert abs(t["x"][0]) < 1e-4 and abs(t["y"][0]) < 1e-4  # the current merge itself is the origin
    center = {k: v for k, v in merged.items() if v.is_floating_point()}
    d = filter_normalized_direction(center, list(center), torch.Generator().manual_seed(0))
    assert torch.count_nonzero(d["blocks.0.fc.bias"]) == 0 and torch.count_nonzero(d["norm.weight"]) == 0
    assert torch.allclose(d["head.weight"].norm(dim=1), center["head.weight"].norm(dim=1), rtol=1e-5)
    with pytest.raises(StudioError):
        landscape_2d(r, scorer, plane="nope")


def test_progress_counts_every_evaluation_with_an_estimate(fam):
    """#17: a plane took 71 s with no estimate. progress(fraction, message) follows every grid point and marker: 9
    points + base, a, b, average + the current merge = 14 calls, fraction k/14, each message with the time left."""
    calls = []
    scorer = Loss(fam["states"]["a"])
    landscape_task_plane(ta_recipe(fam, [0.3, 0.7]), scorer, 0, 1, steps=3, progress=lambda f, m: calls.append((f, m)))
    assert scorer.calls == 14
    assert [f for f, _ in calls] == pytest.approx([k / 14 for k in range(1, 15)])
    assert all(m.startswith(f"landscape point {k}/14 · about ") and m.endswith(" left")
               for k, (_, m) in enumerate(calls[:-1], 1))
    assert calls[-1][1].startswith("landscape point 14/14 · done in ")
    sweep = []
    landscape_1d(ta_recipe(fam, [0.3, 0.7]), "parameters.lambda", [0.0, 1.0], scorer,
                 progress=lambda f, m: sweep.append(f))
    assert sweep == pytest.approx([1 / 3, 2 / 3, 1.0])  # two points and the current recipe


def test_durations_read_as_a_person_says_them():
    from studio.analysis.landscape import _duration

    assert [_duration(s) for s in (0.4, 59.4, 71, 3600 + 125)] == ["0 s", "59 s", "1 min 11 s", "1 h 02 min"]


def test_axis_values_are_evenly_spaced_and_whole_for_whole_settings():
    from studio.analysis import axis_values

    assert axis_values(0.0, 1.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert axis_values(-1.0, 1.0, 3) == [-1.0, 0.0, 1.0]
    assert axis_values(0, 3, 7, integer=True) == [0, 1, 2, 3]   # 0, .5, 1, … rounded, each whole number once
    assert axis_values(2.0, 4.0, 1) == [2.0]
