"""Atomic targets: everything is written into a temporary sibling and renamed into place, so an interrupted write
leaves no target — and no half-written file — behind."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StudioError


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_target(target: Path, overwrite: bool, input_paths: list[Path]) -> None:
    """Refuse targets that would lose data: non-empty without --overwrite, inside an input, or containing one."""
    target = Path(target)
    for p in input_paths:
        p = Path(p)
        folder = p if p.is_dir() else p.parent
        if p.is_dir() and _is_within(target, folder):
            raise StudioError("refusing to write inside an input model's folder", where=str(target),
                              hint=f"{folder} is an input; choose another output path")
        if target.exists() and target.resolve() == p.resolve():
            raise StudioError("the output path is one of the inputs", where=str(target), hint="choose another path")
        if overwrite and target.exists() and _is_within(p, target):
            raise StudioError("refusing to overwrite a folder that holds an input model", where=str(target),
                              hint=f"{p} is inside it")
    if target.exists():
        non_empty = target.is_file() or any(target.iterdir())
        if non_empty and not overwrite:
            raise StudioError("output already exists and is not empty", where=str(target),
                              hint="choose another path, or replace it: --overwrite on the command line, the "
                                   "*overwrite* box in the studio")


class AtomicTarget:
    """``with AtomicTarget(out) as tmp:`` — write into ``tmp`` (a folder, or a file path when ``is_file``);
    on success it replaces ``out`` in one rename, on failure it is removed."""

    def __init__(self, target: Path, is_file: bool = False):
        self.target = Path(target)
        self.is_file = is_file
        self.target.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.target.suffix if is_file else ""
        self.tmp = self.target.parent / f".{self.target.name}.partial-{uuid.uuid4().hex[:8]}{suffix}"

    def __enter__(self) -> Path:
        if not self.is_file:
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._remove(self.tmp)
            return False
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        try:
            os.replace(self.tmp, self.target)
        except BaseException:  # the new one could not take its place: the old one goes back
            if old is not None:
                os.replace(old, self.target)
            self._remove(self.tmp)
            raise
        if old is not None:
            self._remove(old)
        return False

    @staticmethod
    def _remove(p: Path):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


@contextmanager
def atomic_files(*targets: Path) -> Iterator[list[Path]]:
    """``with atomic_files(a, b) as (tmp_a, tmp_b):`` — files that belong together (weights and the file describing
    them): all are renamed into place when the block succeeds, none when it raises. They are renamed in the order
    given, so list the weights first: if a rename fails, the files after it are not put in place."""
    with ExitStack() as stack:  # contexts exit last-in first-out: enter in reverse so the first target goes first
        tmps = [stack.enter_context(AtomicTarget(t, is_file=True)) for t in reversed(targets)]
        yield tmps[::-1]


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling; returns ``path``."""
    path = Path(path)
    with AtomicTarget(path, is_file=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    """``data`` as indented JSON (non-ASCII kept as is), written atomically; returns ``path``."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
