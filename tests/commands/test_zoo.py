"""`python -m studio zoo`: the catalogue as JSON, and a missing subcommand as a one-line error."""

from __future__ import annotations

import json

from studio.cli import main
from studio.zoo import FAMILIES, assets_root, list_families


def test_list_json_describes_every_family(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert list(entries) == list(FAMILIES)
    built = set(list_families())
    for name, e in entries.items():
        assert e["built"] == (name in built) and e["name"] == name
        assert e["base"].startswith(str(assets_root() / name))
    assert entries["vision"]["tasks"][0] == "digits" and entries["vision"]["loras"] == {}
    assert set(entries["text"]["loras"]) == set(entries["text"]["tasks"])


def test_missing_subcommand_is_one_line(capsys):
    assert main(["zoo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: missing zoo command — use build, list or report"
