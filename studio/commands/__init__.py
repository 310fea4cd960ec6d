"""The subcommands of ``python -m studio`` (one module each, loaded on demand by :mod:`studio.cli`), and what several
of them share."""

from __future__ import annotations

import sys

from ..recipe import Recipe
from ..recipe.files import read_recipe


def load_recipe(path: str):
    """The recipe a command was given: a mergekit YAML, or any file that carries one (a merged .safetensors, an
    output folder, a PNG with merge settings; see :func:`studio.recipe.files.read_recipe`). What could not be carried
    over goes to stderr as notes."""
    found = read_recipe(path)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    return Recipe.from_dict(found.recipe, where=str(path))
