"""The XY-grid controller: two settings' values, one preview per pair, saved as a PNG with each cell's recipe —
plain Python over :mod:`studio.preview.grid`."""

from __future__ import annotations

from typing import Callable

from ..errors import StudioError
from ..preview.grid import METHOD_AXIS, Axis, Grid, grid_image, render_grid, save_grid
from ..recipe import edit as E

MAX_CELLS = 64  # a grid is a preview per cell: beyond this the studio says so rather than working for minutes


class GridController:
    def __init__(self, session):
        self.s = session
        self.last: Grid | None = None

    def axis_choices(self) -> list[str]:
        """Settings a grid axis can run over: every numeric setting, the per-layer target's groups, the method."""
        s = self.s
        paths = [str(p) for p in E.numeric_paths(s.recipe)]
        if s.target is not None:
            paths += [f"{s.target}@{g}" for g in s.layout().groups]
        return paths + [METHOD_AXIS]

    def render(self, x: str, y: str, progress: Callable[[float, str], None] | None = None) -> Grid:
        """Every pair of the two axes' values re-merged and judged like the preview (``PATH=v1,v2,…`` or
        ``PATH=lo:hi:n``)."""
        xa, ya = Axis.parse(x), Axis.parse(y)
        cells = len(xa.values) * len(ya.values)
        if cells > MAX_CELLS:
            raise StudioError(f"a {len(xa.values)} × {len(ya.values)} grid is {cells} previews",
                              hint=f"at most {MAX_CELLS}: fewer values per axis")
        s = self.s
        pv = s.previewing
        with s.env.heavy, pv.lock:
            live = pv.sync_live()
            judge = pv.judge
            if judge is None:
                raise StudioError("nothing previews these models, so a grid would be empty",
                                  hint="grids show a preview pipeline's images or text, or an evaluator's numbers")
            self.last = render_grid(live, xa, ya, judge.evaluate, progress=progress, restored=judge.refresh)
        return self.last

    def picture(self):
        if self.last is None:
            raise StudioError("no grid yet", hint="render one first")
        return grid_image(self.last)

    def save(self, target: str, overwrite: bool = False) -> str:
        """The last grid as a PNG (each cell's recipe in its metadata), only inside the allowed folders."""
        if self.last is None:
            raise StudioError("no grid yet", hint="render one first")
        out = self.s.env.roots.check_write(target)
        return str(save_grid(self.last, out if out.suffix.lower() == ".png" else out.with_suffix(".png"), overwrite))
