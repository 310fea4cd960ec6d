"""`python -m studio merge --dry-run` says how strongly each LoRA reaches the merge (#17: a LoRA at 0.8 under λ 0.5
became 0.4 without a word)."""

from __future__ import annotations

import json

import pytest

from studio.cli import main
from studio.zoo import get_family


@pytest.fixture
def lora_recipe(tmp_path):
    text = get_family("text")
    path = tmp_path / "r.yml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {text.base}\nparameters: {{lambda: 0.5}}\nmodels:\n"
                    f"  - model: {text.base}+{text.loras['code']}:0.8\n    parameters: {{weight: 1.0}}\n"
                    f"  - model: {text.experts['prose']}\n    parameters: {{weight: 1.0}}\n")
    return path


def test_dry_run_prints_each_loras_effective_scale(lora_recipe, tmp_path, capsys):
    assert main(["merge", str(lora_recipe), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "LoRA code at strength 0.8 × weight 1 × λ 0.5 = 0.4 effective\n" in out
    assert main(["merge", str(lora_recipe), str(tmp_path / "out"), "--dry-run", "--json"]) == 0
    (scale,) = json.loads(capsys.readouterr().out)["lora_scales"]
    assert (scale["strength"], scale["weight"], scale["lambda"], scale["effective"]) == (0.8, 1.0, 0.5, 0.4)
    assert not (tmp_path / "out").exists()
