"""Whatever a page sends, a handler ends in one clear line: a user's mistake as a StudioError, a bug logged with its
traceback under an id and shown as one line with that id — never gradio's generic "upstream app raised an exception"
(the Blocks built in-process, the session driven directly)."""

from __future__ import annotations

import logging

import pytest

from studio.errors import StudioError
from studio.ui.app import build_app


@pytest.fixture()
def ui(env):
    return build_app(env)


def test_a_bug_in_a_handler_is_logged_with_an_id_and_shown_as_one_line(ui, caplog):
    def handler(state, points):
        return {"x": int(points) / 0}

    guarded = ui.guard(handler, "sweep")
    with caplog.at_level(logging.ERROR, logger="studio.ui"):
        assert guarded(None, "3") == {}          # outputs stay as they are
    record = caplog.records[-1].getMessage()
    assert record.startswith("bug #") and "ZeroDivisionError" in record and "Traceback" in record
    ident = record.split()[1].lstrip("#").rstrip(":").split()[0]
    _, msg = ui.attempt(lambda: handler(None, "3"), "sweep")
    assert "\n" not in msg and msg.startswith("internal error in sweep (ZeroDivisionError) — logged as #")
    assert len(ident) == 8


def test_a_users_mistake_in_a_raw_handler_is_a_warning_not_a_traceback(ui):
    def handler(state, points):
        raise StudioError("points: a whole number from 2 to 101, got None")

    assert ui.guard(handler, "sweep")(None, None) == {}


JUNK = ["", "x", "models.9.weight", "parameters.lambda@ZZ", "a=b", "=", "0:1:0", "1e999", "nan", "-1", "L00..L99",
        None, 3.5, "../../etc/passwd", "/etc/passwd", "a" * 5000]
CALLS = {
    "per-layer target": lambda s, v: s.set_target(v),
    "setting path": lambda s, v: s.set_value(v, 0.5),
    "setting value": lambda s, v: s.set_value("parameters.lambda", v),
    "sweep target": lambda s, v: s.landscapes.sweep(v, 3),
    "sweep points": lambda s, v: s.landscapes.sweep(None, v),
    "plane grid": lambda s, v: s.landscapes.plane(None, None, v),
    "grid axis": lambda s, v: s.grids.render(v, "lambda=0,1"),
    "method": lambda s, v: s.set_method(v),
    "models": lambda s, v: s.set_included([v]),
    "base": lambda s, v: s.set_base(v),
    "add model": lambda s, v: s.add_model(v),
    "add LoRA": lambda s, v: s.add_lora(v, v, 1.0),
    "preset": lambda s, v: s.apply_preset(v),
    "curve": lambda s, v: s.apply_curve(v, 0, 1),
    "rules": lambda s, v: s.set_rules_text(v),
    "restore": lambda s, v: s.restore(v),
    "YAML": lambda s, v: s.set_yaml(v),
    "open saved": lambda s, v: s.saved.open(v),
    "save as": lambda s, v: s.saved.save(v),
    "folder": lambda s, v: s.files.go(v),
    "drop": lambda s, v: s.files.drop(v),
    "preview setting": lambda s, v: s.previewing.set_request(v, v),
    "group value": lambda s, v: s.set_group_value(v, 0.1),
    "learn": lambda s, v: s.learning.learn(v, 1),
    "search setting": lambda s, v: s.searching.start([v], own=v),
    "search bounds": lambda s, v: s.searching.start(["parameters.lambda"], ranges=v, own=v),
    "search numbers": lambda s, v: s.searching.start(["parameters.lambda"], own=v, trials=v, seed=v, sampler=v),
    "search trial": lambda s, v: s.searching.load(v),
    "two-settings axis": lambda s, v: s.landscapes.params_plane(v, "parameters.lambda", 2),
}


@pytest.mark.parametrize("call", CALLS)
def test_junk_from_the_page_ends_as_a_studio_error_or_is_taken(env, call):
    """Every control's value as a page could send it: taken, or refused with a StudioError — no other exception."""
    s = env.new_session()
    unexpected = []
    for value in JUNK:
        try:
            CALLS[call](s, value)
        except StudioError as e:
            assert "\n" not in str(e)
        except Exception as e:  # noqa: BLE001 - what the test is looking for
            unexpected.append(f"{value!r:.30}: {type(e).__name__}: {e}")
    assert not unexpected, unexpected


def test_an_export_into_a_read_only_folder_is_one_clear_line(ui, env, tmp_path, monkeypatch):
    """The studio's Export on a read-only disk (simulated: tests run as root, which ignores permission bits) says
    so in one line and leaves nothing behind — not gradio's "upstream app raised an exception"."""
    import errno
    import os

    from studio.ui.exporting import export_recipe

    real_mkdir = os.mkdir

    def read_only(path, *a, **kw):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", read_only)
    s = env.new_session()
    target = tmp_path / "exports" / "mine"
    out, err = ui.attempt(lambda: export_recipe(s, str(target)), "export")
    assert out is None and "read-only" in err and "\n" not in err and not err.startswith("internal error")
    assert not target.exists() and not list(tmp_path.glob("**/.mine.partial-*"))
