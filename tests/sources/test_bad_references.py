"""References the system cannot look up (names over 255 bytes, paths over 4096) and pickles that are not tensor
checkpoints end in one SourceError: no OSError from pathlib, no torch warning before it, nothing of a pickle run."""

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from badinputs import PICKLE_IDS, long_paths, pickle_rows, sha256
from studio.errors import SourceError
from studio.recipe.files import read_recipe
from studio.sources import ModelRef, open_source
from studio.sources.resolve import is_hub_id, resolve_path, split_reference

PATH_IDS = sorted(long_paths(Path("/tmp")))


@pytest.mark.parametrize("row", PATH_IDS)
def test_a_path_too_long_to_look_up_is_one_source_error(tmp_path, row):
    save_file({"net.fc.weight": torch.ones(2, 2)}, tmp_path / "base.safetensors")
    ref = long_paths(tmp_path)[row].format(base=tmp_path / "base.safetensors")
    with pytest.raises(SourceError, match="path too long") as err:
        open_source(ref)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_each_reference_parser_says_path_too_long():
    long = "p" * 5000
    for probe in (lambda: ModelRef.parse(long + "+l"), lambda: split_reference(long + "+l"),
                  lambda: is_hub_id("org/" + long), lambda: resolve_path(long), lambda: read_recipe(long)):
        with pytest.raises(SourceError, match="path too long"):
            probe()


def test_pickle_rows_cover_every_pickle_suffix(tmp_path):
    rows = pickle_rows(tmp_path)
    assert list(rows) == PICKLE_IDS and {p.suffix for p, _ in rows.values()} == {".pt", ".bin", ".ckpt"}


@pytest.mark.parametrize("row", PICKLE_IDS)
def test_a_pickle_that_is_not_a_checkpoint_is_one_quiet_source_error(tmp_path, monkeypatch, row):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path, says = pickle_rows(tmp_path)[row]
    before = sha256(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SourceError, match=says) as err:
            open_source(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert [str(w.message) for w in caught] == []  # torch's warnings would print before the error line
    assert not marker.exists() and sha256(path) == before
