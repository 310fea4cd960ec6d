"""Issue #18, the input side: every bad input file through the CLI (``inspect`` and ``merge``) exits 2 with exactly
one line on stderr (torch's warnings included: they are shown as the real CLI shows them), leaves its input's bytes
as they were and no output behind: no target, no ``.partial-*`` sibling."""

import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from badinputs import (GOOD, LORA_ROWS, NONFINITE_ROWS, PICKLE_IDS, SAFETENSORS_ROWS, finite_model, long_paths,
                       lora_base, pickle_rows, sha256)
from studio.cli import main


def _run(argv, capsys) -> tuple[int, list[str]]:
    """``main(argv)`` with warnings printed to stderr as in a fresh ``python -m studio`` (pytest would record them
    out of sight): the exit status and stderr's lines."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # (not once per place: an earlier test may have shown it)
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)  # as Python's default filters do
        warnings.showwarning = show
        status = main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def _recipe(tmp_path, model_ref: str, base: str, extra: str = "") -> str:
    path = tmp_path / "r.yml"
    path.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                    f"  - model: {model_ref}\n    parameters: {{weight: 0.5}}\n{extra}")
    return str(path)


def _assert_refused(tmp_path, capsys, argv, inputs, outs=()):
    before = {p: sha256(p) for p in inputs}
    status, err = _run(argv, capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert {p: sha256(p) for p in inputs} == before
    for out in outs:
        assert not out.exists()
        assert not list(out.parent.glob(f"{out.name}.partial*")) and not list(out.parent.glob(".*partial*"))
    return err[0]


@pytest.fixture
def good_base(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file(GOOD, path)
    return path


@pytest.mark.parametrize("row", sorted(SAFETENSORS_ROWS))
def test_malformed_safetensors(tmp_path, capsys, good_base, row):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(SAFETENSORS_ROWS[row][0])
    line = _assert_refused(tmp_path, capsys, ["inspect", str(bad)], [bad])
    assert str(bad) in line
    recipe = _recipe(tmp_path, str(bad), str(good_base))
    for out in (tmp_path / "out", tmp_path / "out.safetensors"):
        assert str(bad) in _assert_refused(tmp_path, capsys, ["merge", recipe, str(out)], [bad, good_base], [out])


@pytest.mark.parametrize("row", sorted(long_paths(__import__("pathlib").Path("/tmp"))))
def test_paths_too_long(tmp_path, capsys, good_base, row):
    ref = long_paths(tmp_path)[row].format(base=good_base)
    assert "path too long" in _assert_refused(tmp_path, capsys, ["inspect", ref], [good_base])
    out = tmp_path / "out"
    line = _assert_refused(tmp_path, capsys, ["merge", _recipe(tmp_path, ref, str(good_base)), str(out)],
                           [good_base], [out])
    assert "path too long" in line
    assert "path too long" in _assert_refused(tmp_path, capsys, ["merge", "r" * 5000 + ".yml", str(out)], [], [out])


@pytest.mark.parametrize("row", PICKLE_IDS)
def test_pickles_that_are_not_checkpoints(tmp_path, capsys, monkeypatch, good_base, row):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    bad, says = pickle_rows(tmp_path)[row]
    assert says in _assert_refused(tmp_path, capsys, ["inspect", str(bad)], [bad])
    out = tmp_path / "out"
    assert says in _assert_refused(tmp_path, capsys, ["merge", _recipe(tmp_path, str(bad), str(good_base)), str(out)],
                                   [bad, good_base], [out])
    assert not marker.exists()


def test_a_pickle_checkpoint_merges_with_nothing_on_stderr(tmp_path, capsys):
    """The normal run on .bin/.pt/.ckpt (zip and legacy formats): torch says nothing on stderr."""
    torch.save(finite_model(0), tmp_path / "base.bin")
    torch.save({"state_dict": finite_model(1), "epoch": 2}, tmp_path / "a.ckpt", _use_new_zipfile_serialization=False)
    torch.save(finite_model(2), tmp_path / "b.pt")
    recipe = _recipe(tmp_path, str(tmp_path / "a.ckpt"), str(tmp_path / "base.bin"),
                     f"  - model: {tmp_path / 'b.pt'}\n    parameters: {{weight: 0.5}}\n")
    assert _run(["merge", recipe, str(tmp_path / "out"), "--quiet"], capsys) == (0, [])
    assert _run(["inspect", str(tmp_path / "a.ckpt"), str(tmp_path / "b.pt")], capsys) == (0, [])


@pytest.mark.parametrize("row", sorted(LORA_ROWS))
def test_loras_that_do_not_fit(tmp_path, capsys, row):
    tensors, module = LORA_ROWS[row]
    base, lora = tmp_path / "base.safetensors", tmp_path / "lora.safetensors"
    save_file(lora_base(), base)
    save_file(tensors, lora)
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, f"{base}+{lora}:0.8", str(base))
    assert module in _assert_refused(tmp_path, capsys, ["merge", recipe, str(out)], [base, lora], [out])
    assert module in _assert_refused(tmp_path, capsys, ["inspect", f"{base}+{lora}"], [base, lora])


@pytest.mark.parametrize("row", sorted(NONFINITE_ROWS))
def test_nonfinite_weights(tmp_path, capsys, row):
    dtype, which, spoil, counts = NONFINITE_ROWS[row]
    base, model = tmp_path / "base.safetensors", tmp_path / "model.safetensors"
    save_file(spoil(finite_model(0, dtype)) if which == "base" else finite_model(0, dtype), base)
    save_file(spoil(finite_model(1, dtype)) if which == "model" else finite_model(1, dtype), model)
    recipe = _recipe(tmp_path, str(model), str(base))
    for out in (tmp_path / "out", tmp_path / "out.safetensors"):
        line = _assert_refused(tmp_path, capsys, ["merge", recipe, str(out)], [base, model], [out])
        assert f"has {counts} values" in line and "--allow-nonfinite" in line
    status, err = _run(["merge", recipe, str(tmp_path / "out"), "--allow-nonfinite", "--quiet"], capsys)
    assert (status, err) == (0, []) and (tmp_path / "out" / "model.safetensors").is_file()
