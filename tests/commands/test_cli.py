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
