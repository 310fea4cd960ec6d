"""Looking at a path a person wrote. ``Path.exists()`` raises OSError for a path the system cannot even look up (a
name over 255 bytes, a path over 4096, a folder without search permission); here that is a one-line SourceError,
and a path that is merely absent is None/False, as pathlib says."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import SourceError

NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits, in bytes (the message says them; the system enforces its own)


def shown(path) -> str:
    """A path as a one-line message shows it: cut in the middle when long."""
    text = repr(str(path))[1:-1]  # newlines and control characters escaped
    return text if len(text) <= 120 else f"{text[:80]}…{text[-30:]}"


def look(path) -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing is there; SourceError when the path cannot be looked up."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte (pathlib: not there)
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink loop: nothing usable there, as pathlib answers
            return None
        if e.errno == errno.ENAMETOOLONG:
            longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
            raise SourceError(f"path too long ({len(os.fsencode(str(path)))} bytes, its longest name {longest})",
                              where=shown(path), hint=f"the system allows {PATH_MAX} bytes a path and {NAME_MAX} a "
                                                      "name; rename or move the file") from None
        raise SourceError(f"cannot look at this path ({e.strerror or e})", where=shown(path)) from None


def exists(path) -> bool:
    return look(path) is not None


def is_dir(path) -> bool:
    st = look(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def is_file(path) -> bool:
    st = look(path)
    return st is not None and stat.S_ISREG(st.st_mode)
