"""Which files the studio may touch: it reads under folders the user chose (``--allow DIR``), its workspace, the demo
zoo's assets and the Hugging Face cache, and writes only under the workspace and the ``--allow`` folders — never into
the zoo or anywhere in its own install folder. Every path typed into the UI goes through :class:`AllowedRoots`
before it is opened or written, so a browser tab cannot read ``/etc/passwd`` or write into someone's home folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StudioError
from ..sources.resolve import is_hub_id, split_reference


class PathNotAllowed(StudioError):
    """A path outside every allowed folder."""


# the folder holding this program (app.py, studio/, assets/): readable, never written
INSTALL_DIR = Path(__file__).resolve().parents[2]


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


class AllowedRoots:
    """A set of folders; :meth:`check_read` / :meth:`check_write` return a resolved path or raise PathNotAllowed."""

    def __init__(self, roots=(), include_hub_cache: bool = True):
        self.roots: list[Path] = []
        self.read_only: set[Path] = set()
        for r in roots:
            self.add(r)
        self.hub_cache = hub_cache_dir().resolve() if include_hub_cache else None

    def add(self, root, writable: bool = True) -> None:
        """Allow ``root``; ``writable=False`` for folders the studio only reads (the demo zoo)."""
        p = Path(os.path.expanduser(str(root))).resolve()
        if p not in self.roots:
            self.roots.append(p)
            if not writable:
                self.read_only.add(p)
        elif writable:
            self.read_only.discard(p)

    def writable(self) -> list[Path]:
        return [r for r in self.roots if r not in self.read_only and not self._inside(r, [INSTALL_DIR])]

    def _inside(self, p: Path, roots) -> bool:
        return any(p == r or p.is_relative_to(r) for r in roots)

    def top(self, writable: bool = False) -> list[Path]:
        """The allowed (or writable) folders without those inside another one."""
        roots = self.writable() if writable else self.roots
        return [r for r in roots if not any(o != r and r.is_relative_to(o) for o in roots)]

    def describe(self, writable: bool = False) -> str:
        """The allowed folders for a message: a folder inside another one is not listed again."""
        return ", ".join(str(r) for r in self.top(writable)) or "(none)"

    def check_path(self, text: str, write: bool = False) -> Path:
        if not str(text).strip():
            raise PathNotAllowed("empty path")
        p = Path(os.path.expanduser(str(text).strip()))
        # resolve() follows symlinks and '..', so a link inside an allowed folder cannot point outside it
        try:
            p = p.resolve()
        except (OSError, RuntimeError) as e:  # a name too long for the filesystem, a loop of links
            raise PathNotAllowed(f"cannot resolve this path ({getattr(e, 'strerror', None) or e})",
                                 where=str(text)[:200]) from None
        if write and self._inside(p, [INSTALL_DIR]):
            raise PathNotAllowed(f"{p} is inside the studio's own install folder, which it never writes",
                                 hint="export into the workspace (--workspace DIR) or an --allow folder")
        roots = self.writable() if write else list(self.roots)
        if not write and self.hub_cache is not None:
            roots.append(self.hub_cache)
        if not self._inside(p, roots):
            if write and self._inside(p, self.roots):
                raise PathNotAllowed(f"{p} is in a folder this studio only reads (the demo zoo)",
                                     hint=f"write into {self.describe(writable=True)}")
            raise PathNotAllowed(f"{p} is outside the folders this studio may {'write' if write else 'read'}",
                                 hint=f"allowed: {self.describe(writable=write)}; start the app with --allow DIR to "
                                      "add one")
        return p

    def check_reference(self, ref: str) -> str:
        """A model reference (path, hub id, ``base+lora[:s]``) whose every local part is inside the roots."""
        for part in split_reference(ref):
            if is_hub_id(part):
                continue  # resolved through the Hugging Face cache, never an arbitrary path
            self.check_path(part)
        return str(ref).strip()

    def check_write(self, target: str) -> Path:
        return self.check_path(target, write=True)
