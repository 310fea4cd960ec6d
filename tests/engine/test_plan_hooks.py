"""studio.engine.plan.PLAN_HOOKS: families above the engine append their plan edits when imported."""

import subprocess
import sys

import torch

from tinymodels import load_state
from studio.engine import build_plan, merge_in_memory
from studio.engine import plan as plan_module
from studio.recipe import Recipe


def test_importing_the_engine_alone_registers_the_vae_hook():
    code = "import studio.engine.plan as p; print(' '.join(f'{h.__module__}.{h.__name__}' for h in p.PLAN_HOOKS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["studio.sd.vae.vae_plan_hook"]


def test_a_registered_hook_edits_every_plan(llama_family, monkeypatch):
    def copy_the_base(p):
        for t in p.tasks:
            t.op, t.inputs, t.base, t.params = "copy", [(0, t.out_key)], None, {}

    monkeypatch.setattr(plan_module, "PLAN_HOOKS", [*plan_module.PLAN_HOOKS, copy_the_base])
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(llama_family["base"]),
                               "models": [{"model": str(llama_family["a"]), "parameters": {"weight": 1.0}}]})
    assert {t.op for t in build_plan(recipe).tasks} == {"copy"}
    merged, base = merge_in_memory(recipe), load_state(llama_family["base"])
    assert set(merged) == set(base)
    for k in base:
        torch.testing.assert_close(merged[k].float(), base[k])
