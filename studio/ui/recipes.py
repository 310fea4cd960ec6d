"""Saved recipes: the session's recipe written by name into the workspace's ``recipes/`` folder (mergekit YAML, as
``python -m studio merge`` reads it) and opened again — plain Python."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import StudioError
from ..output import write_text

NAME = re.compile(r"^[\w][\w.\- ]{0,80}$")  # a file name without a folder: letters, digits, _ . - and spaces


class SavedRecipes:
    def __init__(self, session):
        self.s = session

    def folder(self) -> Path:
        return Path(self.s.env.default_dir("recipes"))

    def names(self) -> list[str]:
        """The saved recipes, newest first (none when the studio has no folder to write into)."""
        try:
            folder = self.folder()
        except StudioError:
            return []
        if not folder.is_dir():
            return []
        files = sorted(folder.glob("*.yml"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.stem for p in files]

    def _path(self, name: str) -> Path:
        name = str(name or "").strip().removesuffix(".yml").removesuffix(".yaml")
        if not NAME.match(name):
            raise StudioError(f"{name!r} is not a recipe name", hint="letters, digits, spaces, _ . and -; no folders")
        return self.s.env.roots.check_write(str(self.folder() / f"{name}.yml"))

    def save(self, name: str) -> Path:
        """Write the recipe (its YAML view) as ``NAME.yml``, replacing a saved recipe of that name."""
        s = self.s
        if not s.included():
            raise StudioError("the recipe merges no models yet", hint="add models before saving it")
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(path, s.yaml())

    def open(self, name: str) -> None:
        """Make a saved recipe the session's (its models must lie inside the allowed folders, as typed YAML)."""
        path = self._path(name)
        if not path.is_file():
            raise StudioError(f"no saved recipe {path.stem!r}", where=str(path.parent))
        self.s.set_yaml(path.read_text(encoding="utf-8"))
