"""FDA: anchors reduce the gradient–task-vector cosine distance; adaptation lowers its own objective."""

from __future__ import annotations

import torch

from studio.learn.fda import anchor_loss, construct_anchors, fda


def test_anchor_loss_is_sum_of_cosine_distances(vision_adapter):
    a = vision_adapter
    unit, task = "blocks.1", a.tasks[0]
    keys = [k for k in a.keys if k.startswith(unit + ".")]
    p0 = {k: a.base[k].clone().requires_grad_(True) for k in keys}
    pi = {k: a.experts[task][k] for k in keys}
    tau = {k: pi[k] - a.base[k] for k in keys}
    X = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    loss = anchor_loss(a.module.get_submodule(unit), unit, p0, pi, tau, X, create_graph=False)
    # by hand: the gradient of the mean output cosine at θ0, compared with τ tensor by tensor
    blk = a.module.get_submodule(unit)
    local = {k[len(unit) + 1:]: v for k, v in p0.items()}
    out0 = torch.func.functional_call(blk, local, (X,))
    outi = torch.func.functional_call(blk, {k[len(unit) + 1:]: v for k, v in pi.items()}, (X,))
    s = torch.nn.functional.cosine_similarity(out0, outi, dim=1).mean()
    grads = torch.autograd.grad(s, list(local.values()))
    expected = sum(1 - torch.nn.functional.cosine_similarity(g.flatten(), tau[k].flatten(), dim=0)
                   for g, k in zip(grads, keys))
    torch.testing.assert_close(loss, expected)
    assert 0 <= float(loss) <= 2 * len(keys)


def test_anchors_reduce_cosine_distance(vision_adapter):
    a = vision_adapter
    for unit, shape in [("embed", (64,)), ("blocks.0", (128,))]:
        _, start, best = construct_anchors(a, unit, shape, a.tasks[1], n=32, steps=40)
        assert best < start - 0.05, (unit, start, best)


def test_fda_adaptation_improves_objective_and_keys(vision_adapter, vision_data):
    out = fda(vision_adapter, vision_data, steps=10, anchors=16, epochs=15, init="task_arithmetic")
    m = out["metrics"]
    assert m["anchor_loss_end"] < m["anchor_loss_start"]
    assert m["objective_end"] < m["objective_start"]
    assert set(out["state_dict"]) == set(vision_adapter.keys)
    out2 = fda(vision_adapter, vision_data, steps=5, anchors=8, epochs=5, init="base")
    assert out2["metrics"]["objective_end"] < out2["metrics"]["objective_start"]
