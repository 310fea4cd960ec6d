"""Output forms: entries made of the plan's outputs come out whole, in write order, holding parts only while needed."""

from __future__ import annotations

import torch

from studio.output.forms import Assembler, OutputEntry, Reshape, Rows, concat, in_write_order, transposed
from studio.sources import TensorInfo


def test_entries_come_out_as_soon_as_their_parts_are_in_and_parts_are_dropped_after_their_last_use():
    plan = ["q", "w", "k", "v", "fused"]
    t = {k: torch.full((2, 3), float(i)) for i, k in enumerate(plan)}
    t["fused"] = torch.arange(12.0).reshape(6, 2)
    f32 = torch.float32
    entries = [OutputEntry("qkv", TensorInfo((6, 3), f32), ("q", "k", "v"), concat),
               OutputEntry("w_t", TensorInfo((3, 2), f32), ("w",), transposed),
               OutputEntry("w_conv", TensorInfo((2, 3, 1, 1), f32), ("w",), Reshape((2, 3, 1, 1))),
               OutputEntry("f1", TensorInfo((2, 2), f32), ("fused",), Rows(2, 4))]
    ordered = in_write_order(entries, plan)
    assert [e.name for e in ordered] == ["w_t", "w_conv", "qkv", "f1"]
    asm = Assembler(ordered)
    out, held = {}, []
    for k in plan:
        for e, tensor in asm.feed(k, t[k]):
            out[e.name] = tensor
        held.append(sorted(asm.held))
    assert asm.done()
    assert held == [["q"], ["q"], ["k", "q"], [], []]   # w went out with its two entries; q, k waited for v
    assert torch.equal(out["qkv"], torch.cat([t["q"], t["k"], t["v"]]))
    assert torch.equal(out["w_t"], t["w"].t()) and out["w_conv"].shape == (2, 3, 1, 1)
    assert torch.equal(out["f1"], t["fused"][2:4])
