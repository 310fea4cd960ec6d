"""The one atomic target: check_target's refusals, AtomicTarget / atomic_files (all or nothing), atomic text writes."""

import json

import pytest

from studio.errors import StudioError
from studio.output import AtomicTarget, atomic_files, check_target, write_json, write_text


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_check_target_refusals(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x")
    single = tmp_path / "single.safetensors"
    single.write_bytes(b"y")
    inputs = [model, single]
    check_target(tmp_path / "new", False, inputs)              # absent: fine
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", False, inputs)            # empty folder: fine
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("k")
    with pytest.raises(StudioError, match="not empty") as e:
        check_target(busy, False, inputs)
    assert "--overwrite" in str(e.value)
    check_target(busy, True, inputs)
    with pytest.raises(StudioError, match="not empty"):
        check_target(busy / "keep.txt", False, [])   # an existing file counts too
    with pytest.raises(StudioError, match="inside an input"):
        check_target(model / "out", True, inputs)
    with pytest.raises(StudioError, match="one of the inputs"):
        check_target(single, True, inputs)
    with pytest.raises(StudioError, match="holds an input"):
        check_target(tmp_path, True, inputs)


def test_atomic_folder_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    out = tmp_path / "out"
    with AtomicTarget(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.partial-") and tmp.is_dir()
        (tmp / "a.txt").write_text("first")
    assert names(tmp_path) == ["out"] and names(out) == ["a.txt"]
    with pytest.raises(KeyboardInterrupt):
        with AtomicTarget(out) as tmp:
            (tmp / "b.txt").write_text("second")
            raise KeyboardInterrupt
    assert names(tmp_path) == ["out"] and (out / "a.txt").read_text() == "first"
    with AtomicTarget(out) as tmp:
        (tmp / "c.txt").write_text("third")
    assert names(tmp_path) == ["out"] and names(out) == ["c.txt"]


def test_atomic_files_all_or_none(tmp_path):
    a, b = tmp_path / "x.safetensors", tmp_path / "x.recipe.yml"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_files(a, b) as (ta, tb):
            assert ta.suffix == ".safetensors" and tb.suffix == ".yml"
            ta.write_bytes(b"weights")
            tb.write_text("recipe")
            raise RuntimeError("boom")
    assert names(tmp_path) == []
    with atomic_files(a, b) as (ta, tb):
        ta.write_bytes(b"weights")
        tb.write_text("recipe")
        assert names(tmp_path) == sorted([ta.name, tb.name])   # nothing at the final names yet
    assert names(tmp_path) == ["x.recipe.yml", "x.safetensors"]
    assert a.read_bytes() == b"weights" and b.read_text() == "recipe"


def test_write_text_and_json_are_atomic(tmp_path):
    p = write_text(tmp_path / "sub" / "report.html", "<p>π</p>")
    assert p == tmp_path / "sub" / "report.html" and p.read_text(encoding="utf-8") == "<p>π</p>"
    q = write_json(tmp_path / "sub" / "c.json", {"name": "Größe", "n": [1, 2]})
    assert q.read_text(encoding="utf-8") == '{\n  "name": "Größe",\n  "n": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(q.read_text(encoding="utf-8")) == {"name": "Größe", "n": [1, 2]}

    with pytest.raises(UnicodeEncodeError):   # fails half-way through writing the file
        write_text(tmp_path / "sub" / "c.json", "{\"a\": \"\ud800\"}")
    assert names(tmp_path / "sub") == ["c.json", "report.html"]          # no temporary left, old file kept
    assert json.loads(q.read_text(encoding="utf-8"))["name"] == "Größe"


def test_a_failed_rename_puts_the_old_target_back_and_files_go_in_the_order_given(tmp_path, monkeypatch):
    import os

    target = tmp_path / "m.safetensors"
    target.write_text("old")
    real = os.replace
    order = []

    def replace(src, dst):
        if str(src).find(".partial-") >= 0 and str(dst).endswith(".safetensors"):
            raise OSError("disk full")
        order.append(str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StudioError, match="disk full"):  # what the system said, as one StudioError
        with AtomicTarget(target, is_file=True) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    order.clear()
    monkeypatch.setattr(os, "replace", lambda s, d: (order.append(str(d)), real(s, d))[1])
    with atomic_files(tmp_path / "w.safetensors", tmp_path / "w.recipe.yml") as (a, b):
        a.write_text("weights")
        b.write_text("recipe")
    assert [os.path.basename(p) for p in order if not os.path.basename(p).startswith(".")] == [
        "w.safetensors", "w.recipe.yml"]
