"""The CLI's one error path: a user's mistake is exit 2 with one stderr line; a bug is exit 1 with one "please report"
line and the traceback only with --debug; library warnings stay off stderr unless --debug."""

from __future__ import annotations

import warnings

import pytest

from studio import cli
from studio.errors import StudioError


@pytest.fixture()
def command(monkeypatch):
    """``methods`` made to run ``behaviour`` instead (the parser and the error path are the real ones)."""
    import studio.commands.methods as methods

    def install(behaviour):
        monkeypatch.setattr(methods, "run", lambda args: behaviour())
    return install


def test_a_users_mistake_is_one_line_and_exit_2(command, capsys):
    command(lambda: (_ for _ in ()).throw(StudioError("bad thing\nwith a second line", where="x.yml", hint="fix it")))
    assert cli.main(["methods"]) == 2
    err = capsys.readouterr().err
    assert err == "error: x.yml: bad thing with a second line — fix it\n"


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_exit_1_with_a_report_line_and_the_traceback_only_with_debug(command, capsys, debug):
    def bug():
        return {}["missing"]
    command(bug)
    assert cli.main(["methods"] + (["--debug"] if debug else [])) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("internal error (KeyError: 'missing') — a bug: please report it")
    assert ("Traceback" in err) is debug
    assert len(err.strip().splitlines()) == 1 or debug


def test_library_warnings_stay_off_stderr_unless_debug(command, capsys):
    def noisy():
        warnings.warn("torch.load is deprecated", FutureWarning)
        raise StudioError("the real problem")
    command(noisy)
    assert cli.main(["methods"]) == 2
    assert capsys.readouterr().err == "error: the real problem\n"
    with pytest.warns(FutureWarning):  # with --debug the warning goes through (pytest records what Python would print)
        assert cli.main(["methods", "--debug"]) == 2
