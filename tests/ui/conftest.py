from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from toy import build_toy_family  # noqa: E402


@pytest.fixture(scope="session")
def toy_family(tmp_path_factory):
    return build_toy_family(tmp_path_factory.mktemp("toyzoo"))


@pytest.fixture()
def env(toy_family, tmp_path):
    from studio.ui.catalog import Catalog
    from studio.ui.paths import AllowedRoots
    from studio.ui.env import StudioEnv

    return StudioEnv(Catalog({"toy": toy_family}), AllowedRoots([tmp_path]), device="cpu")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def studio_server(toy_family, tmp_path_factory):
    """The studio on a free localhost port in this process: the real vision zoo when it is built, else the toy."""
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog, zoo_families
    from studio.ui.paths import AllowedRoots
    from studio.ui.env import StudioEnv

    out = tmp_path_factory.mktemp("exports")
    families = zoo_families()
    fam_name = next((n for n, f in families.items() if getattr(f, "kind", "") == "vision"), None)
    if fam_name is None:
        families, fam_name = {"toy": toy_family}, "toy"
    env = StudioEnv(Catalog(families), AllowedRoots([out]), device="cpu", export_dir=str(out))
    ui = build_app(env)
    port = _free_port()
    ui.launch(port=port, prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}", "ui": ui, "env": env, "family": fam_name,
           "evaluator": families[fam_name].evaluator(budget="preview", device="cpu"), "export_dir": out}
    ui.demo.close()


@pytest.fixture(scope="module")
def own_sd_server(toy_family, tmp_path_factory):
    """The studio with two of a user's own SD1 pipeline folders (tiny, runnable) inside its allowed folder and the
    toy demo family on screen at the start."""
    from studio.sd import synth
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog
    from studio.ui.env import StudioEnv
    from studio.ui.paths import AllowedRoots

    root = tmp_path_factory.mktemp("own-sd")
    models = [synth.write_random_pipeline(root / name, "sd1", seed=seed, tiny=True, runnable=True)
              for name, seed in (("my-sd-a", 1), ("my-sd-b", 2))]
    env = StudioEnv(Catalog({"toy": toy_family}), AllowedRoots([root]), device="cpu", export_dir=str(root))
    ui = build_app(env)
    port = _free_port()
    ui.launch(port=port, prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}", "models": models}
    ui.demo.close()
