"""Where a recipe lives, and finding it again in whatever a user drops or opens: a mergekit YAML, an output folder
(``mergekit_config.yml``), a merged ``.safetensors`` (its own metadata, or the ``<stem>.recipe.yml`` beside it), a PNG
the studio made (its text chunks) — and, through :data:`READERS`, other tools' formats (A1111 / SuperMerger
``sd_merge_recipe``, Model Mixer infotext: ``studio/sd/infotext.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import StudioError
from ..sources import paths
from ..sources.safetensors_file import read_header
from .limits import parse_json, parse_yaml_documents, read_text
from .model import Recipe

RECIPE_FILE = "mergekit_config.yml"   # mergekit's name, so its tools find the recipe in our folders too
RECIPE_KEY = "merge_studio_recipe"    # the recipe inside a merged .safetensors' metadata and a PNG's text chunks
YAML_SUFFIXES = (".yml", ".yaml")


def is_single_file(target: Path) -> bool:
    """A target ending in ``.safetensors`` is one weights file with its side files beside it; any other is a folder."""
    return Path(target).suffix == ".safetensors"


def recipe_path(target: Path) -> Path:
    """Where the recipe of a merge written to ``target`` goes: ``mergekit_config.yml`` inside an output folder,
    ``<stem>.recipe.yml`` beside a single ``.safetensors`` file."""
    target = Path(target)
    return target.with_name(target.stem + ".recipe.yml") if is_single_file(target) else target / RECIPE_FILE


@dataclass
class FoundRecipe:
    """A recipe read out of a file: the recipe (a dict, as ``Recipe.to_dict``), what it came from, and notes on what
    could not be carried over (shown to the user beside the recipe)."""
    recipe: dict
    origin: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # keys that had no effect (``Recipe.warnings``)


# Readers of other tools' formats: ``reader(path, text_chunks, metadata, folders) -> FoundRecipe | None`` —
# ``text_chunks`` are a PNG's text entries ({} for other files), ``metadata`` a .safetensors header's (or {}),
# ``folders`` where models the format names by file name may lie. None: not theirs.
READERS: list[Callable[[Path, dict, dict, Sequence[Path]], "FoundRecipe | None"]] = []


def png_text(path: Path) -> dict[str, str]:
    """A PNG's text chunks (tEXt / iTXt), as Pillow reads them; StudioError when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError  # Pillow: only images need it
    try:
        with Image.open(path) as img:
            img.load()
            return {str(k): v for k, v in (getattr(img, "text", None) or {}).items() if isinstance(v, str)}
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise StudioError(f"cannot read the image ({e})", where=str(path)) from None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's ``__metadata__`` (header only: never the tensors)."""
    meta = read_header(path)[1]
    return {str(k): v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}


def _found(recipe: Recipe, origin: str) -> FoundRecipe:
    """What was read, with a warning for each key that had no effect (see ``Recipe.warnings``)."""
    return FoundRecipe(recipe.to_dict(), origin, warnings=list(recipe.warnings))


def read_recipe(path: str | Path, folders: Sequence[Path] = (), strict: bool = False) -> FoundRecipe:
    """The recipe a file or folder carries (see the module's doc); StudioError saying what was looked for. Models
    that other tools name by file name are looked for beside ``path`` and in ``folders``. Keys without effect are
    warnings, or refused when ``strict``."""

    def _ours(raw: str, origin: str) -> FoundRecipe:
        return _found(Recipe.from_dict(parse_json(raw, origin), where=origin, strict=strict), origin)

    def _yaml(path: Path) -> FoundRecipe:
        docs = [d for d in parse_yaml_documents(read_text(path), str(path)) if d is not None]  # parsed once
        if len(docs) > 1:  # mergekit-multi's steps: merged in turn by the merge command, not one recipe to open
            raise StudioError(f"this file holds {len(docs)} recipes, the steps of a multi-step merge",
                              where=str(path), hint=f"merge them with `python -m studio merge {paths.shown(path)} "
                                                    "OUT`; the studio opens one recipe at a time")
        return _found(Recipe.from_dict(docs[0] if docs else None, where=str(path), strict=strict), str(path))

    path = Path(str(path))
    if paths.is_dir(path):
        if paths.is_file(path / RECIPE_FILE):
            return _yaml(path / RECIPE_FILE)
        raise StudioError(f"no {RECIPE_FILE} in this folder", where=str(path),
                          hint="open a recipe YAML, a merged .safetensors or a PNG made by the studio")
    if not paths.is_file(path):
        raise StudioError("no such file", where=paths.shown(path))
    suffix = path.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return _yaml(path)
    chunks, meta = {}, {}
    if suffix == ".png":
        chunks = png_text(path)
        if RECIPE_KEY in chunks:
            return _ours(chunks[RECIPE_KEY], str(path))
    elif suffix == ".safetensors":
        meta = safetensors_metadata(path)
        if RECIPE_KEY in meta:
            return _ours(meta[RECIPE_KEY], str(path))
        if paths.is_file(recipe_path(path)):
            return _yaml(recipe_path(path))
    else:
        raise StudioError(f"cannot read a recipe from a {suffix or 'file without suffix'!r} file", where=str(path),
                          hint="a recipe YAML, a merged .safetensors or a PNG with merge settings")
    for reader in READERS:
        found = reader(path, chunks, meta, folders)
        if found is not None:
            return found
    what = "image" if suffix == ".png" else "file"
    raise StudioError(f"this {what} carries no merge recipe", where=str(path),
                      hint="the studio reads its own recipes, A1111/SuperMerger sd_merge_recipe and Model Mixer "
                           "settings")
