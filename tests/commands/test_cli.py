"""The dispatcher: each command's module is imported on demand, and one that cannot be imported fails loudly."""

import json

import pytest
import torch
from safetensors.torch import save_file

from studio import cli


def test_a_command_that_cannot_be_imported_raises(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "broken", ("studio.commands.no_such_module", "a command whose module is gone"))
    with pytest.raises(ModuleNotFoundError, match="studio.commands.no_such_module"):
        cli.main(["broken"])
    # other commands are not imported when one is named, so a broken one does not take them down
    assert cli.main(["methods", "--json"]) == 0


def test_lora_inspect_dispatches_to_commands_lora(tmp_path, capsys):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.ones(4, 32), f"{name}.lora_up.weight": torch.ones(32, 4),
               f"{name}.alpha": torch.tensor(2.0)}, tmp_path / "l.safetensors")
    assert cli.main(["lora", "inspect", str(tmp_path / "l.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["style"], info["flavour"], info["modules"]) == ("kohya", "kohya lora×1", 1)
    assert info["rank_scale_counts"] == {"rank 4 scale 0.5": 1}
    assert info["per_module"][name]["shape"] == [32, 32]


def test_methods_names_one_method_and_refuses_an_unknown_one(capsys):
    assert cli.main(["methods", "ties"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ties — TIES") and "density" in out and "arXiv 2306.01708" in out
    assert cli.main(["methods", "dare_ties", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)["params"]][:2] == ["weight", "density"]
    assert cli.main(["methods", "tie"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_exits_1_when_the_models_do_not_line_up(tmp_path, capsys):
    save_file({"a.weight": torch.zeros(4, 4), "b.weight": torch.zeros(4)}, tmp_path / "x.safetensors")
    save_file({"a.weight": torch.ones(4, 4), "b.weight": torch.ones(4)}, tmp_path / "y.safetensors")
    save_file({"a.weight": torch.ones(4, 2)}, tmp_path / "z.safetensors")
    assert cli.main(["inspect", str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")]) == 0
    assert cli.main(["inspect", str(tmp_path / "x.safetensors"), str(tmp_path / "z.safetensors")]) == 1
    out = capsys.readouterr().out
    assert "NOT compatible" in out and "1 missing key(s), e.g. b.weight" in out and "shape a.weight" in out
