"""``python -m studio <command>``. Exit 0 on success, 2 on bad input with one line on stderr, no traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager

from .errors import StudioError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as after Ctrl-C: every atomic target removes its
    temporary sibling and nothing is left behind (SIGKILL gives no such chance: only the sibling stays)."""


def _terminate(signum, frame):
    raise Terminated()


@contextmanager
def _signals_unwind():
    """While a command runs: SIGTERM raises Terminated, SIGINT KeyboardInterrupt (Python's own handler, set again in
    case the shell started us with it ignored and the user wants it). A signal the caller ignores stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signal.SIGTERM: _terminate, signal.SIGINT: signal.default_int_handler}
    before = {sig: signal.getsignal(sig) for sig in wanted}
    for sig, handler in wanted.items():
        if before[sig] is not signal.SIG_IGN:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)

# command → (module exposing add_arguments(parser) and run(args) -> int, help line)
COMMANDS = {
    "merge": ("studio.commands.merge", "run a mergekit-style YAML recipe into an output folder or .safetensors file"),
    "inspect": ("studio.commands.inspect", "describe models from their headers; compare several"),
    "lora": ("studio.commands.lora", "bake, combine, extract and inspect LoRAs"),
    "analyze": ("studio.commands.analyze", "sign conflicts, similarity and norms per layer/block; HTML report"),
    "learn": ("studio.commands.learn", "learn merge coefficients or weights from unlabeled data"),
    "zoo": ("studio.commands.zoo", "build, list and report on the built-in demo zoo"),
    "search": ("studio.commands.search", "search recipe settings for the best score (Optuna; stored, resumable); "
               "best recipe, trials and an HTML report"),
    "grid": ("studio.commands.grid", "an XY grid of previews over two settings, saved as a PNG"),
    "methods": ("studio.commands.methods", "list merge methods and their parameters"),
    "emr": ("studio.commands.emr", "rebuild one task's model from an EMR merge's masks and rescalers"),
    "moe": ("studio.commands.moe", "build a mixture-of-experts model from dense experts (mergekit-moe's YAML)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="Merge Studio: model merging for LLMs, "
                                     "diffusion checkpoints and LoRAs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_line, add_help=False)
            continue
        p = sub.add_parser(name, help=help_line, description=help_line)
        # Import only the command being run: one command should not pay for (or depend on) the others' imports. A
        # command module that fails to import is a bug, so its ImportError propagates instead of being reported as
        # "not available".
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug anywhere (or STUDIO_DEBUG=1): library warnings and a bug's traceback are shown
    debug = "--debug" in argv or os.environ.get("STUDIO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not debug:  # transformers and diffusers log notices to stderr; they read these when first imported
        for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(var, "error")
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        if not debug:  # stderr holds our own lines (progress, notes, the error), not libraries' deprecation notices
            warnings.simplefilter("ignore")
        try:
            with _signals_unwind():
                return int(args._run(args) or 0)
        except StudioError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            print("interrupted: nothing written", file=sys.stderr)
            return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
        except Exception as e:  # noqa: BLE001 - a bug: one line (the traceback with --debug), exit 1
            if debug:
                traceback.print_exc()
            print(f"internal error ({type(e).__name__}: {one_line(str(e))[:200]}) — a bug: please report it with the "
                  "command" + (" and the traceback above" if debug else " and the traceback --debug shows"),
                  file=sys.stderr)
            return 1


def one_line(text: str) -> str:
    """A message on one line (a parser's or a library's text may hold newlines)."""
    return " ".join(text.split())


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))

