"""What the file system refuses while a merge is written — a file where a folder should be, no permission, a read-only
disk, no space, a name too long, a rename that fails — ends as one StudioError naming the target and what to do, and
leaves neither the target nor a ``.partial-*`` / ``.old-*`` sibling. A target inside any input's folder (a LoRA's,
the tokenizer source's) is refused before anything is written."""

import errno
import hashlib
import os
import shutil

import pytest

import studio.output.safetensors_writer as writer_module
from studio.cli import main
from studio.engine import merge_to_disk
from studio.errors import StudioError
from studio.output import AtomicTarget, check_target
from studio.recipe import Recipe
from studio.sources import TensorSource
from studio.zoo import get_family


def recipe_text(family, extra: str = "") -> str:
    return (f"merge_method: task_arithmetic\nbase_model: {family['base']}\nmodels:\n"
            f"  - model: {family['a']}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {family['b']}\n    parameters: {{weight: 0.5}}\n{extra}")


def sha(path):
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def absent(path, root) -> bool:
    """No such entry below ``root`` (``exists()`` itself fails on a name too long for the file system)."""
    return all(os.path.join(d, n) != str(path) for d, dirs, files in os.walk(root) for n in dirs + files)


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name or ".old-" in p.name)


def run_merge(recipe, out, capsys, *extra) -> str:
    """The CLI on ``recipe`` → ``out``: exit 2 and exactly one line on stderr, which is returned."""
    code = main(["merge", str(recipe), str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def setup(llama_family, tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text(llama_family))
    before = {k: sha(v) for k, v in llama_family.items()}
    yield recipe
    assert {k: sha(v) for k, v in llama_family.items()} == before   # inputs untouched, whatever happened


# ---------------------------------------------------------------------------------------------- real conditions
def file_parent(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    return tmp_path / "notes.txt" / "out"


REAL = {
    "parent is a file": (file_parent, "notes.txt is a file, not a folder"),
    "grandparent is a file": (lambda p: file_parent(p) / "deeper" / "out.safetensors", "is a file, not a folder"),
    "single file under a file": (lambda p: file_parent(p).with_suffix(".safetensors"), "is a file, not a folder"),
    "name too long": (lambda p: p / ("m" * 300), "name is too long"),
    "single-file name too long": (lambda p: p / ("m" * 300 + ".safetensors"), "name is too long"),
    "a parent's name too long": (lambda p: p / ("m" * 300) / "out", "name is too long"),
}


@pytest.mark.parametrize("make, message", REAL.values(), ids=REAL.keys())
def test_unwritable_target_is_one_line(setup, tmp_path, capsys, make, message):
    out = make(tmp_path)
    line = run_merge(setup, out, capsys)
    assert message in line and "nothing was written" in line
    assert absent(out, tmp_path) and leftovers(tmp_path) == []
    with pytest.raises(StudioError, match=message):   # the library says the same
        merge_to_disk(Recipe.load(setup), out, device="cpu", progress=False)


def test_a_long_name_that_fits_is_written(setup, tmp_path, capsys):
    out = tmp_path / ("m" * 250)     # fits the file system's 255; the temporary sibling's name must fit too
    assert main(["merge", str(setup), str(out), "--quiet"]) == 0
    assert (out / "model.safetensors").is_file() and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions; the simulated rows cover it")
def test_read_only_folder_is_permission_denied(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = run_merge(setup, locked / "out", capsys)
        assert "permission denied" in line and not (locked / "out").exists() and leftovers(tmp_path) == []
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------------- simulated by the system's errno
def failing_writes(monkeypatch, code: int, after: int = 0, on_open: bool = False):
    """The writer's files fail with ``code``: on open, or once ``after`` bytes are written (a disk filling up)."""
    real_open = open

    def fake_open(path, mode="r", *args, **kw):
        if "w" not in mode:
            return real_open(path, mode, *args, **kw)
        if on_open:
            raise OSError(code, os.strerror(code), str(path))
        f = real_open(path, mode, *args, **kw)
        real_write, written = f.write, [0]

        def write(data):
            if written[0] + len(data) > after:
                raise OSError(code, os.strerror(code))
            written[0] += len(data)
            return real_write(data)

        f.write = write
        return f

    monkeypatch.setattr(writer_module, "open", fake_open, raising=False)


SIMULATED = {
    "disk full at the first byte": (dict(code=errno.ENOSPC), "no space left"),
    "disk full mid-shard": (dict(code=errno.ENOSPC, after=20_000), "no space left"),
    "quota exceeded": (dict(code=errno.EDQUOT, after=5_000), "quota"),
    "file too large": (dict(code=errno.EFBIG, after=10_000), "--shard-size"),
    "read-only file system": (dict(code=errno.EROFS, on_open=True), "read-only"),
    "permission denied": (dict(code=errno.EACCES, on_open=True), "permission denied"),
    "not permitted": (dict(code=errno.EPERM, on_open=True), "not permitted"),
    "input/output error": (dict(code=errno.EIO, on_open=True), "input/output error"),
}


@pytest.mark.parametrize("fail, message", SIMULATED.values(), ids=SIMULATED.keys())
@pytest.mark.parametrize("single", [False, True], ids=["folder", "single file"])
def test_write_errors_are_one_line_and_leave_nothing(setup, tmp_path, capsys, monkeypatch, fail, message, single):
    failing_writes(monkeypatch, **fail)
    out = tmp_path / ("merged.safetensors" if single else "merged")
    line = run_merge(setup, out, capsys)
    assert message in line and str(out) in line and "nothing was written" in line
    assert not out.exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


def test_write_error_with_overwrite_keeps_the_old_target(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "merged"
    assert main(["merge", str(setup), str(out), "--quiet"]) == 0
    old = sha(out)
    failing_writes(monkeypatch, errno.ENOSPC, after=50_000)
    assert "no space left" in run_merge(setup, out, capsys, "--overwrite")
    assert sha(out) == old and leftovers(tmp_path) == []


@pytest.mark.parametrize("code, message", [(errno.EACCES, "permission denied"), (errno.EXDEV, "cannot write the output")])
def test_a_failed_rename_into_place_keeps_the_old_target(tmp_path, monkeypatch, code, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if ".partial-" in str(src):
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StudioError, match=message):
        with AtomicTarget(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").read_text() == "old"


def test_an_input_that_cannot_be_read_is_not_called_an_output_error(tmp_path):
    with pytest.raises(FileNotFoundError):   # the input side's own error, not "cannot write the output"
        with AtomicTarget(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
            open(tmp_path / "missing-input.safetensors", "rb")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- a target inside any input's folder
@pytest.fixture
def zoo_copy(tmp_path):
    """The zoo's text base, one expert and one LoRA folder, copied (the zoo itself is never written to)."""
    text = get_family("text")
    root = tmp_path / "zoo"
    paths = {"base": root / "base", "expert": root / "expert", "other": root / "other", "lora": root / "lora"}
    for (name, dst), src in zip(paths.items(), [text.base, text.experts["prose"], text.experts["tables"],
                                                text.loras["code"]]):
        shutil.copytree(src, dst)
    return paths


INSIDE = {
    "a LoRA's folder": (lambda z: f"  - model: {z['base']}+{z['lora']}:0.8\n    parameters: {{weight: 1}}\n",
                        lambda z: z["lora"] / "out"),
    "a LoRA's folder, single file": (lambda z: f"  - model: {z['base']}+{z['lora']}\n    parameters: {{weight: 1}}\n",
                                     lambda z: z["lora"] / "sub" / "m.safetensors"),
    "the tokenizer source's folder": (lambda z: f"tokenizer_source: {z['expert']}\n",
                                      lambda z: z["expert"] / "merged"),
}


@pytest.mark.parametrize("models, target", INSIDE.values(), ids=INSIDE.keys())
def test_target_inside_any_input_is_refused(zoo_copy, tmp_path, capsys, models, target):
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {zoo_copy['base']}\nmodels:\n"
                      f"  - model: {zoo_copy['other']}\n    parameters: {{weight: 1}}\n" + models(zoo_copy))
    before = sha(tmp_path / "zoo")
    out = target(zoo_copy)
    for extra in ([], ["--dry-run"], ["--overwrite"]):
        assert "inside an input model's folder" in run_merge(recipe, out, capsys, *extra)
    assert sha(tmp_path / "zoo") == before and not out.exists() and leftovers(tmp_path) == []


def test_target_that_is_a_lora_file_is_refused(llama_family, tmp_path):
    from studio.engine import build_plan, check_merge_target
    from studio.output import source_paths
    plan = build_plan(Recipe.from_yaml(recipe_text(llama_family)))
    lora_file = tmp_path / "style.safetensors"
    lora_file.write_bytes(b"lora")

    class Network:   # what a LoRA-applied source holds: (network, strength, block function); the network's source
        source = TensorSource("style", lora_file)

    plan.sources[1].loras = [(Network(), 1.0, None)]
    assert lora_file in source_paths(plan.sources)
    with pytest.raises(StudioError, match="one of the inputs"):
        check_merge_target(plan, lora_file, overwrite=True)


def test_check_target_names_a_file_parent_before_anything_runs(tmp_path):
    target = file_parent(tmp_path) / "x"
    with pytest.raises(StudioError, match="notes.txt is a file, not a folder"):
        check_target(target, False, [])
    with pytest.raises(StudioError, match="notes.txt is a file, not a folder"):
        AtomicTarget(target)
