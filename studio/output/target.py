"""Atomic targets: everything is written into a temporary sibling and renamed into place, so an interrupted write
leaves no target — and no half-written file — behind. What the file system refuses on the way (no space, no
permission, a read-only disk, a name too long, a file where a folder should be) ends as one StudioError naming the
target and what to do, with the temporary sibling removed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import StudioError
from ..sources.base import TensorSource

NOTHING_WRITTEN = "nothing was written"
# errno → (what went wrong, what to do)
OUTPUT_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write to another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or write to another disk"),
    errno.EFBIG: ("a file is larger than this file system allows",
                  "write to another file system, or into a folder with a smaller --shard-size"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "choose a shorter name"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path whose parents are folders"),
    errno.EEXIST: ("a part of the path is a file, not a folder", "choose a path whose parents are folders"),
    errno.EISDIR: ("a folder is in the way of a file", "choose another path, or remove the folder"),
    errno.EIO: ("the device reported an input/output error", "check the disk, or write to another one"),
}
# errors that only writing raises: when the system names no file, they are still the output's
_WRITE_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def output_error(err: OSError, target: Path) -> StudioError:
    """The StudioError for an OSError met while writing ``target``: what the system said, where, and what to do."""
    what, hint = OUTPUT_ERRORS.get(err.errno, (f"cannot write the output ({err.strerror or err})",
                                               "check the path and the disk"))
    return StudioError(what, where=str(target), hint=f"{hint}; {NOTHING_WRITTEN}")


def _is_output_side(err: BaseException, target: Path, tmp: Path) -> bool:
    """Whether an OSError met inside an AtomicTarget block is the output's (not an input that could not be read)."""
    if not isinstance(err, OSError) or err.errno not in OUTPUT_ERRORS:
        return False
    if err.filename is None:
        return err.errno in _WRITE_ONLY
    named = Path(os.path.abspath(err.filename))
    return any(named == p or _is_within(named, p) for p in (Path(os.path.abspath(tmp)), Path(os.path.abspath(target))))


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def source_paths(sources: Iterable[TensorSource]) -> list[Path]:
    """Every file or folder the sources read: each one's folder (or file), and those of the sources it wraps — a
    LoRA applied to a base, a converted view, a baked VAE. Wrappers live above the output, so they are found by
    their attributes: a source, a list/tuple/dict holding sources, or an object with a ``source`` (a LoRA network)."""
    out: list[Path] = []
    seen: set[int] = set()
    todo = list(sources)
    while todo:
        s = todo.pop()
        if id(s) in seen:
            continue
        seen.add(id(s))
        out.append(Path(s.folder or s.path))
        todo.extend(_wrapped([v for k, v in vars(s).items() if not k.startswith("_")]))
    return out


def _wrapped(values, depth: int = 0) -> Iterator[TensorSource]:
    for v in values:
        if isinstance(v, TensorSource):
            yield v
        elif isinstance(getattr(v, "source", None), TensorSource):
            yield v.source
        elif isinstance(v, (list, tuple, dict)) and depth < 3:
            yield from _wrapped(v.values() if isinstance(v, dict) else v, depth + 1)


def _parent_problem(target: Path) -> StudioError | None:
    """A file where one of the target's parent folders should be (no folder can be made under it)."""
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return StudioError(f"{parent} is a file, not a folder", where=str(target),
                                   hint=f"choose a path whose parents are folders; {NOTHING_WRITTEN}")
            return None
    return None


def check_target(target: Path, overwrite: bool, input_paths: list[Path]) -> None:
    """Refuse targets that would lose data: non-empty without --overwrite, inside an input, or containing one — and
    targets that cannot be written at all (a file where a parent folder should be, a name too long)."""
    try:
        _check_target(Path(target), overwrite, input_paths)
    except OSError as e:   # looking at the target already failed (a name too long, a folder we may not list)
        raise output_error(e, Path(target)) from None


def _check_target(target: Path, overwrite: bool, input_paths: list[Path]) -> None:
    problem = _parent_problem(target)
    if problem is not None:
        raise problem
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
        try:
            problem = _parent_problem(self.target)
            if problem is not None:
                raise problem
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(e, self.target) from None
        self.tmp = self._sibling("partial", self.target.suffix if is_file else "")

    def _sibling(self, kind: str, suffix: str = "") -> Path:
        # a temporary name 18 bytes longer than the target's must not be what passes the file system's name limit
        name = self.target.name
        if len(name.encode()) > 200:
            name = name.encode()[:100].decode(errors="ignore")
        return self.target.parent / f".{name}.{kind}-{uuid.uuid4().hex[:8]}{suffix}"

    def __enter__(self) -> Path:
        if not self.is_file:
            try:
                self.tmp.mkdir()
            except OSError as e:
                raise output_error(e, self.target) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            remove_quietly(self.tmp)
            if _is_output_side(exc, self.target, self.tmp):
                raise output_error(exc, self.target) from exc
            return False
        try:
            self._commit()
        except OSError as e:
            raise output_error(e, self.target) from e
        return False

    def _commit(self):
        old = None
        try:
            if self.target.exists():
                old = self._sibling("old")
                os.replace(self.target, old)
            os.replace(self.tmp, self.target)
        except BaseException:  # the new one could not take its place: the old one goes back
            if old is not None and not self.target.exists():
                os.replace(old, self.target)
            remove_quietly(self.tmp)
            raise
        if old is not None:
            remove_quietly(old)



def remove_quietly(p: Path) -> None:
    """Remove a file or folder tree if it is there; a cleanup must not hide the error that made it necessary."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()
    except OSError:
        pass


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
