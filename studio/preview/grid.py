"""XY grids: one preview per pair of values of two recipe settings, laid out with labelled axes.

An axis is a setting path (``alpha@IN04``, ``models.0.weight``, ``parameters.lambda``) or ``merge_method``, with a
list of values (``0.2,0.5,0.8``, a range ``0:1:5`` = 5 values from 0 to 1, or method names). Every cell is the
recipe with both settings replaced, re-merged by the live engine (only what the two settings touch) and rendered by
whatever judges the merge (a preview pipeline's images or text, or an evaluator's numbers). The picture is a PNG whose
metadata holds each cell's recipe, so any cell can be re-made with ``python -m studio merge``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..engine.live import LiveMerger
from ..errors import RecipeError, StudioError
from ..layout import Layout
from ..output import AtomicTarget, check_target
from ..recipe import Recipe
from ..recipe import edit as E

METHOD_AXIS = "merge_method"
CELL = 256          # a cell's longer side in the picture, in pixels
LABEL = 28          # the height of an axis label strip


@dataclass
class Axis:
    """One axis: a setting path (or ``merge_method``) and its values."""

    path: str
    values: list

    @classmethod
    def parse(cls, text: str) -> "Axis":
        """``PATH=v1,v2,…`` or ``PATH=lo:hi:n`` (n values from lo to hi), ``merge_method=ties,dare_ties``."""
        path, sep, raw = str(text).partition("=")
        path = path.strip()
        if not sep or not path or not raw.strip():
            raise RecipeError(f"an axis is PATH=VALUES, got {text!r}",
                              hint="e.g. alpha@IN04=0,0.5,1 or parameters.lambda=0:1:5 or merge_method=ties,della")
        if path != METHOD_AXIS:
            E.SettingPath.parse(path)  # a bad path is refused before anything merges
        parts = raw.split(":") if ":" in raw and "," not in raw else None
        if parts is not None and path != METHOD_AXIS:
            try:
                lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                raise RecipeError(f"a range is lo:hi:n, got {raw!r}", where=path) from None
            if n < 1:
                raise RecipeError(f"a range needs at least one value, got {n}", where=path)
            values = [lo + (hi - lo) * i / (n - 1) if n > 1 else lo for i in range(n)]
        elif path == METHOD_AXIS:
            values = [v.strip() for v in raw.split(",") if v.strip()]
        else:
            try:
                values = [float(v) for v in raw.split(",") if v.strip()]
            except ValueError:
                raise RecipeError(f"axis values are numbers, got {raw!r}", where=path) from None
        if not values:
            raise RecipeError("an axis needs at least one value", where=path)
        return cls(path, values)

    def label(self, value) -> str:
        return f"{self.path}={value:.3g}" if isinstance(value, float) else f"{self.path}={value}"


@dataclass
class Grid:
    """The rendered cells, row by row (``cells[j][i]``: y value j, x value i)."""

    x: Axis
    y: Axis
    cells: list[list[dict]] = field(default_factory=list)   # {"recipe": dict, "result": evaluator result}
    seconds: float = 0.0


def cell_recipe(recipe: dict, axes: list[tuple[Axis, Any]], layout: Layout) -> dict:
    """The recipe with each axis set to its value (a method axis switches the method, keeping what still applies)."""
    for axis, value in axes:
        if axis.path == METHOD_AXIS:
            recipe = E.switch_method(recipe, str(value))
        else:
            recipe = E.set_value(recipe, axis.path, value, layout)
    return recipe


def render_grid(live: LiveMerger, x: Axis, y: Axis, judge: Callable[[LiveMerger, list[str]], dict],
                progress: Callable[[float, str], None] | None = None,
                restored: Callable[[list[str]], None] | None = None) -> Grid:
    """Every cell of ``x`` × ``y`` re-merged by ``live`` and judged by ``judge(live, changed keys)``. ``live`` holds
    its original recipe again afterwards; ``restored(changed keys)`` is told what that re-merged (a preview pipeline
    refreshes what it converts)."""
    t0 = time.perf_counter()
    original = live.plan.recipe
    base = original.to_dict()
    grid = Grid(x, y)
    total = len(x.values) * len(y.values)
    try:
        for j, yv in enumerate(y.values):
            row = []
            for i, xv in enumerate(x.values):
                cell = cell_recipe(base, [(y, yv), (x, xv)], live.plan.layout)
                try:
                    recipe = Recipe.from_dict(cell, where=f"grid cell {x.label(xv)}, {y.label(yv)}")
                except StudioError as e:
                    raise StudioError(str(e), hint="choose axis values the method accepts") from None
                changed = live.update(recipe)
                row.append({"recipe": recipe.to_dict(), "result": judge(live, changed)})
                if progress:
                    progress((j * len(x.values) + i + 1) / total, f"cell {j * len(x.values) + i + 1}/{total}")
            grid.cells.append(row)
    finally:
        changed = live.update(original)
        if restored is not None:
            restored(changed)
    grid.seconds = time.perf_counter() - t0
    return grid


# ------------------------------------------------------------------------------------------------------ picture


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _cell_image(result: dict, size: int) -> Image.Image:
    """A cell's picture: its first sample image, else its text samples, else its numbers."""
    samples = result.get("samples")
    images = [s for s in (samples if isinstance(samples, (list, tuple)) else [samples]) if isinstance(s, Image.Image)]
    if images:
        img = images[0].convert("RGB")
        scale = size / max(img.size)
        return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    if isinstance(samples, dict) and samples and isinstance(next(iter(samples.values())), str):
        text = "\n\n".join(str(v) for v in samples.values())
    else:
        per = result.get("per_task") or {}
        text = "\n".join([f"{result.get('metric', 'score')} {result.get('average', float('nan')):.4g}"]
                         + [f"{t}: {v:.4g}" for t, v in per.items()])
    draw.multiline_text((8, 8), _wrap(text, size // 8), fill="black", font=_font(13))
    return canvas


def _wrap(text: str, width: int) -> str:
    lines = []
    for para in text.splitlines():
        while len(para) > width:
            lines.append(para[:width])
            para = para[width:]
        lines.append(para)
    return "\n".join(lines[:40])


def grid_image(grid: Grid, cell: int = CELL) -> Image.Image:
    """The grid as one picture: x values across the top, y values down the left."""
    tiles = [[_cell_image(c["result"], cell) for c in row] for row in grid.cells]
    w = max(t.width for row in tiles for t in row)
    h = max(t.height for row in tiles for t in row)
    left = max(LABEL * 4, 8 * max(len(grid.y.label(v)) for v in grid.y.values))
    img = Image.new("RGB", (left + w * len(grid.x.values), LABEL + h * len(grid.y.values)), "white")
    draw = ImageDraw.Draw(img)
    font = _font(14)
    for i, xv in enumerate(grid.x.values):
        draw.text((left + i * w + 6, 6), grid.x.label(xv), fill="black", font=font)
    for j, yv in enumerate(grid.y.values):
        draw.text((6, LABEL + j * h + h // 2 - 8), grid.y.label(yv), fill="black", font=font)
        for i, tile in enumerate(tiles[j]):
            img.paste(tile, (left + i * w, LABEL + j * h))
    return img


def save_grid(grid: Grid, path: str | Path, overwrite: bool = False) -> Path:
    """Write the grid as a PNG (atomically) with every cell's recipe in its metadata (``merge_studio_grid``)."""
    path = Path(path)
    check_target(path, overwrite, [])
    meta = PngImagePlugin.PngInfo()
    meta.add_text("merge_studio_grid", json.dumps({
        "x": {"path": grid.x.path, "values": grid.x.values}, "y": {"path": grid.y.path, "values": grid.y.values},
        "cells": [[c["recipe"] for c in row] for row in grid.cells]}, default=str))
    with AtomicTarget(path, is_file=True) as tmp:
        grid_image(grid).save(tmp, format="PNG", pnginfo=meta)
    return path


def read_grid_recipes(path: str | Path) -> dict:
    """The axes and per-cell recipes stored in a grid PNG."""
    with Image.open(path) as img:
        raw = img.text.get("merge_studio_grid") if hasattr(img, "text") else None
    if raw is None:
        raise StudioError("not a Merge Studio grid (no merge_studio_grid metadata)", where=str(path))
    return json.loads(raw)
