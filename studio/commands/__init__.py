"""The subcommands of ``python -m studio`` (one module each, loaded on demand by :mod:`studio.cli`), and what several
of them share."""

from __future__ import annotations

import sys

from ..recipe import Recipe
from ..recipe.files import read_recipe


def load_recipe(path: str, strict: bool = False):
    """The recipe a command was given: a mergekit YAML, or any file that carries one (a merged .safetensors, an
    output folder, a PNG with merge settings; see :func:`studio.recipe.files.read_recipe`). What could not be carried
    over goes to stderr as notes, keys that have no effect as warnings, one line each; ``strict`` refuses such keys."""
    found = read_recipe(path, strict=strict)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return Recipe.from_dict(found.recipe, where=str(path))


STRICT_HELP = ("refuse keys that have no effect (unknown or misplaced keys, parameters the method does not take) "
               "instead of warning about each and merging as mergekit does")
