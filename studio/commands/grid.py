"""``python -m studio grid RECIPE.yaml --x PATH=VALUES --y PATH=VALUES --out grid.png``: one preview per pair of
values of two settings, as a labelled PNG with each cell's recipe in its metadata."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..engine.live import LiveMerger
from . import STRICT_HELP, load_recipe
from ..errors import StudioError
from ..preview import previewer_for
from ..preview.grid import Axis, render_grid, save_grid
from ..recipe import Recipe
from ..recipe.edit import reference_model, with_assignments
from ..sources import open_source
from ..sources.resolve import split_reference
from ..zoo import family_holding


def add_arguments(p):
    p.add_argument("recipe", help="mergekit-style YAML recipe")
    p.add_argument("--x", required=True, metavar="PATH=VALUES",
                   help="the columns: a setting path and its values, e.g. alpha@IN04=0,0.5,1 or lambda=0:1:5 or "
                        "merge_method=ties,della")
    p.add_argument("--y", required=True, metavar="PATH=VALUES", help="the rows, as --x")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="change a setting first")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to render (repeatable)")
    p.add_argument("--request", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other field of the preview's request (values read as YAML), e.g. steps=8 seeds=[1,2]")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)


def _zoo_judge(recipe: Recipe, device: str):
    """A demo family's evaluator when every model of the recipe is the family's, else None."""
    fam = family_holding([part for ref in recipe.input_references() for part in split_reference(ref)], every=True)
    if fam is None:
        return None
    ev = fam.evaluator(budget="preview", device=device)
    return (lambda live, changed: ev.evaluate(live.state)), None


def _request(cls, prompts: list[str], fields: list[str]):
    request = cls.Request()
    known = {f.name for f in dataclasses.fields(request)}
    changes = {"prompts": list(prompts)} if prompts else {}
    for item in fields:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise StudioError(f"--request {item!r}: the {cls.__name__} request has no field {key!r}",
                              hint=f"its fields: {', '.join(sorted(known))}")
        changes[key] = yaml.safe_load(raw)
    return dataclasses.replace(request, **changes)


def run(args) -> int:
    recipe = with_assignments(load_recipe(args.recipe, strict=args.strict), args.set)
    x, y = Axis.parse(args.x), Axis.parse(args.y)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise StudioError("output already exists", where=str(out), hint="pass --overwrite or choose another path")
    zoo = _zoo_judge(recipe, args.device)
    if zoo is not None:
        judge, restored = zoo
        live = LiveMerger(recipe, device=args.device)
    else:
        source = open_source(reference_model(recipe.to_dict()))
        cls = previewer_for(source)
        previewer = cls(source, device=args.device)
        request = _request(cls, args.prompt, args.request)
        live = LiveMerger(recipe, device=args.device, out_dtype=previewer.dtype)
        previewer.attach(live)

        def judge(live, changed):
            previewer.refresh(changed)
            return previewer.render(request)

        restored = previewer.refresh
    bar = None if args.quiet else tqdm(total=len(x.values) * len(y.values), desc="grid", file=sys.stderr,
                                       leave=False)
    grid = render_grid(live, x, y, judge, progress=(lambda f, m: bar.update(1)) if bar else None,
                       restored=restored)
    if bar is not None:
        bar.close()
    save_grid(grid, out, args.overwrite)
    print(f"wrote {out}: {len(y.values)} × {len(x.values)} cells in {grid.seconds:.1f} s")
    return 0
