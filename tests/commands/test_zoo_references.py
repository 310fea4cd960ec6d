"""``zoo:FAMILY`` / ``zoo:FAMILY/base`` / ``zoo:FAMILY/TASK``: one meaning (studio.zoo.zoo_models) for `inspect` and
`learn`; an unknown family or task is a one-line error that lists the names."""

from __future__ import annotations

import json

import pytest

from studio.cli import main
from studio.errors import StudioError
from studio.zoo import expand_zoo_refs, get_family, zoo_models


def test_zoo_references_name_the_catalogue_paths():
    text = get_family("text")
    assert zoo_models("zoo:text") == [text.base, *text.experts.values()]
    assert zoo_models("zoo:text", "base") == [text.base]
    assert zoo_models("zoo:text", "experts") == list(text.experts.values())
    assert zoo_models("zoo:text/base", "experts") == [text.base]
    assert zoo_models("zoo:text/code") == [text.experts["code"]]
    assert zoo_models("some/hub-id") == ["some/hub-id"]
    vision = get_family("vision")
    assert expand_zoo_refs(["a.safetensors", "zoo:vision/digits", "zoo:text/base"]) == [
        "a.safetensors", vision.experts["digits"], text.base]


@pytest.mark.parametrize("ref,names", [("zoo:txt", "vision, text, diffusion"),
                                       ("zoo:text/nope", "prose, code, tables")])
def test_unknown_family_or_task_lists_the_names(ref, names):
    with pytest.raises(StudioError, match=names):
        zoo_models(ref)


def test_inspect_takes_a_zoo_family(capsys):
    text = get_family("text")
    assert main(["inspect", "zoo:text", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["ref"] for m in out["models"]] == [text.base, *text.experts.values()]
    assert all(e["compatible"] for e in out["comparison"]["against"])
    assert main(["inspect", "zoo:vision/letters", "--json"]) == 0
    letters = get_family("vision").experts["letters"]
    assert [m["ref"] for m in json.loads(capsys.readouterr().out)["models"]] == [letters]


def test_inspect_unknown_zoo_task_is_one_line(capsys):
    assert main(["inspect", "zoo:vision/cats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model 'cats'" in err and "digits" in err
