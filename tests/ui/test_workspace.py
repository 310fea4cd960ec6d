"""The workspace: what the studio makes goes there; the demo zoo and the studio's own install folder are read, never
written."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.errors import StudioError
from studio.ui.catalog import Catalog
from studio.ui.env import WORKSPACE_FOLDERS, StudioEnv
from studio.ui.exporting import export_recipe
from studio.ui.paths import INSTALL_DIR, AllowedRoots, PathNotAllowed

ROOT = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "test-artifacts" not in p.parts}


def test_exports_go_to_the_workspace_and_the_zoo_is_read_only(toy_family, tmp_path):
    ws = tmp_path / "ws"
    env = StudioEnv(Catalog({"toy": toy_family}), AllowedRoots([]), device="cpu", workspace=ws)
    assert all((ws / sub).is_dir() for sub in WORKSPACE_FOLDERS)
    assert env.default_export_dir() == str(ws.resolve() / "exports")
    assert env.default_dir("grids") == str(ws.resolve() / "grids")
    s = env.new_session()
    res = export_recipe(s, str(Path(env.default_export_dir()) / "mine.safetensors"))
    assert Path(res["path"]).is_file() and Path(res["path"]).parent == ws.resolve() / "exports"
    # the family's own files may be opened, never replaced — with or without "overwrite"
    zoo = Path(str(toy_family.base))
    s.add_model(str(zoo))
    with pytest.raises(PathNotAllowed, match="only reads"):
        export_recipe(s, str(zoo), overwrite=True)
    with pytest.raises(PathNotAllowed, match="only reads"):
        env.roots.check_write(str(zoo.parent / "new.safetensors"))


def test_the_install_folder_is_never_written_even_when_allowed(tmp_path):
    roots = AllowedRoots([ROOT.parent, tmp_path], include_hub_cache=False)
    assert INSTALL_DIR == ROOT
    for target in (ROOT / "assets" / "zoo" / "x.safetensors", ROOT / "out.safetensors"):
        with pytest.raises(PathNotAllowed, match="install folder"):
            roots.check_write(str(target))
    assert roots.check_path(str(ROOT / "README.md")) == ROOT / "README.md"  # reading is fine
    assert roots.check_write(str(tmp_path / "x")) == (tmp_path / "x").resolve()
    with pytest.raises(PathNotAllowed, match="install folder"):
        StudioEnv(Catalog({}), AllowedRoots([]), device="cpu", workspace=ROOT / "workspace")


def test_the_studio_with_the_shipped_zoo_writes_nothing_into_its_install_folder(tmp_path):
    """The app's own start (the shipped demo zoo, no --allow) exports a merge into the workspace while every file of
    the install folder keeps its size and time."""
    import app

    if not Catalog().names():
        pytest.skip("the demo zoo is not built")
    before = _tree(ROOT)
    args = app.parse_args(["--workspace", str(tmp_path / "ws"), "--device", "cpu"])
    assert args.workspace == str(tmp_path / "ws")
    env = StudioEnv(Catalog(), AllowedRoots(args.allow), device="cpu", workspace=args.workspace)
    s = env.new_session()
    res = export_recipe(s, str(Path(env.default_export_dir()) / "demo-merge.safetensors"))
    assert Path(res["path"]).is_file()
    assert _tree(ROOT) == before


def test_default_workspace(monkeypatch, tmp_path):
    import app

    monkeypatch.setenv("MERGE_STUDIO_WORKSPACE", str(tmp_path / "mine"))
    assert app.default_workspace() == str(tmp_path / "mine")
    monkeypatch.delenv("MERGE_STUDIO_WORKSPACE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert app.default_workspace() == str(tmp_path / "merge-studio")


def test_a_named_recipe_is_saved_into_the_workspace_and_opened_again(toy_family, tmp_path):
    from studio.recipe import Recipe

    env = StudioEnv(Catalog({"toy": toy_family}), AllowedRoots([]), device="cpu", workspace=tmp_path / "ws")
    s = env.new_session()
    s.set_value("parameters.lambda", 0.8)
    s.set_group_value("L01", 0.2)
    path = s.saved.save("my merge")
    assert path == (tmp_path / "ws" / "recipes" / "my merge.yml").resolve()
    assert Recipe.from_yaml(path.read_text()).to_dict() == Recipe.from_dict(s.recipe).to_dict()  # merge-ready YAML
    saved = dict(s.recipe)
    s.set_value("parameters.lambda", 0.1)
    assert s.saved.names() == ["my merge"]
    s.saved.open("my merge")
    assert s.recipe == saved and s.preview().result["per_task"]
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(StudioError):
            s.saved.save(bad)
    with pytest.raises(StudioError, match="no saved recipe"):
        s.saved.open("never-saved")
    other = env.new_session()  # a new tab (or a reload) sees the saved recipes
    assert other.saved.names() == ["my merge"]


def test_a_read_only_copy_of_the_project_starts_and_exports_into_the_workspace(tmp_path):
    """``python app.py`` started from a copy of the project whose every file is read-only (as a system install or
    a container image would be) serves the demo zoo and exports into its workspace; not a byte of the copy
    changes (root ignores permission bits, so the copy's files are compared too)."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    from gradio_client import Client

    from studio.ui.panels.export import FORMATS

    if not Catalog().names():
        pytest.skip("the demo zoo is not built")
    copy = tmp_path / "install"
    shutil.copytree(ROOT / "studio", copy / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "assets", copy / "assets")
    shutil.copy(ROOT / "app.py", copy / "app.py")
    for p in [copy, *copy.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    before = _tree(copy)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ws = tmp_path / "ws"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               HOME=str(tmp_path / "home"), PYTHONPATH="")
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(ws), "--port", str(port), "--device", "cpu"],
                            cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the studio did not start in 120 s"
                time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        msg, _ = client.predict(FORMATS[0], "float32", str(ws / "exports"), "from-read-only", False,
                                api_name="/export")
        assert "Exported" in msg, msg
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (ws / "exports" / "from-read-only.safetensors").is_file()
    assert _tree(copy) == before
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)  # let pytest clean it up


def test_the_studio_binds_this_machine_only_unless_told(capsys):
    import app

    assert app.parse_args([]).host == "127.0.0.1"
    import inspect

    from studio.ui.app import StudioUI
    assert inspect.signature(StudioUI.launch).parameters["host"].default == "127.0.0.1"
