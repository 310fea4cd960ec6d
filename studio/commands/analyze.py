"""``python -m studio analyze RECIPE.yaml [--out report.html] [--json]``: task-vector diagnostics and landscapes."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..analysis import landscape_1d, landscape_random_plane, landscape_task_plane, task_vector_stats
from ..analysis.report import build_report
from ..cli import print_json
from . import STRICT_HELP, load_recipe
from ..errors import StudioError
from ..output import write_text
from ..zoo import family_holding, get_family


def add_arguments(p):
    p.add_argument("recipe", help="a mergekit-style YAML recipe with a base_model")
    p.add_argument("--out", help="write a self-contained HTML report with every figure here")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.add_argument("--density", default="auto",
                   help="also report sign statistics after top-k trimming at this density; 'auto' (default): the "
                        "recipe's top-level density if it is a number, else 0.2; 'none' to skip")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--landscape", choices=["none", "task", "random", "lambda"], action="append",
                   help="add a landscape (needs an evaluator: --zoo); repeatable. Default with an evaluator: task")
    p.add_argument("--zoo", default="auto",
                   help="score landscapes with this zoo family's evaluator; 'auto' (default): the family whose base "
                        "is the recipe's base_model, if any; 'none' to skip landscapes")
    p.add_argument("--grid", type=int, default=11, help="grid points per axis for landscapes (default 11)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is much faster on a busy, shared CPU)")
    p.add_argument("--experts", default="0,1", help="the two experts spanning the task-vector plane (indices)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)


def _density(arg: str, recipe) -> float | None:
    if arg in (None, "none", "off"):
        return None
    if arg == "auto":
        v = recipe.parameters.get("density")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.2
    try:
        d = float(arg)
    except ValueError:
        raise StudioError(f"--density must be a number in [0, 1], 'auto' or 'none'; got {arg!r}") from None
    if not 0 <= d <= 1:
        raise StudioError(f"--density must be in [0, 1], got {d}")
    return d


def _zoo_evaluator(arg: str, recipe, device: str):
    if arg in (None, "none"):
        return None, None
    if arg != "auto":
        fam = get_family(arg)
        return fam, fam.evaluator("preview", device)
    fam = family_holding([recipe.base_model] if recipe.base_model else [])
    return (fam, fam.evaluator("preview", device)) if fam is not None else (None, None)


@contextlib.contextmanager
def _bar(desc: str, quiet: bool):
    """A tqdm bar on stderr fed by the analysis functions' ``progress(fraction, message)`` (elapsed time and an
    estimate of the rest); nothing with ``--json``."""
    if quiet:
        yield None
        return
    with tqdm(total=1000, desc=desc, file=sys.stderr, unit="‰", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
              "{elapsed}<{remaining} {postfix}") as bar:
        def progress(fraction, message=""):
            bar.n = min(1000, max(0, int(float(fraction) * 1000)))
            bar.set_postfix_str(str(message)[:50], refresh=False)
            bar.refresh()
        yield progress


def run(args) -> int:
    recipe = load_recipe(args.recipe, strict=args.strict)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    density = _density(args.density, recipe)
    quiet = args.json
    with _bar("task vectors", quiet) as progress:
        stats = task_vector_stats(recipe, density=density, progress=progress, device=args.device)
    landscapes = []
    kinds = [k for k in (args.landscape or []) if k != "none"]
    if args.out and (kinds or args.landscape is None):
        fam, evaluator = _zoo_evaluator(args.zoo, recipe, args.device)
        if evaluator is None and kinds:
            raise StudioError("landscapes need an evaluator and none was found for this recipe",
                              hint="pass --zoo FAMILY for a recipe on the demo zoo, or drop --landscape")
        if evaluator is not None:
            kinds = kinds or ["task"]
            steps = max(2, args.grid)
            if "task" in kinds and len(stats["models"]) >= 2:
                try:
                    i, j = (int(x) for x in args.experts.split(","))
                except ValueError:
                    raise StudioError(f"--experts takes two indices like 0,1; got {args.experts!r}") from None
                with _bar("task-vector plane", quiet) as progress:
                    landscapes.append(landscape_task_plane(recipe, evaluator, i, j, steps=steps, device=args.device,
                                                           progress=progress))
            if "lambda" in kinds:
                vals = [round(0.1 * k, 3) for k in range(0, 16)]
                with _bar("λ sweep", quiet) as progress:
                    landscapes.append(landscape_1d(recipe, "parameters.lambda", vals, evaluator, device=args.device,
                                                   progress=progress))
            if "random" in kinds:
                with _bar("random plane", quiet) as progress:
                    landscapes.append(landscape_random_plane(recipe, evaluator, steps=steps, device=args.device,
                                                             progress=progress))
    if args.out:
        text = build_report(stats, landscapes, title=f"Merge Studio analysis — {Path(args.recipe).name}",
                            recipe_text=recipe.to_yaml())
        path = write_text(args.out, text)
        if not quiet:
            print(f"wrote {path} ({len(text) / 1e6:.1f} MB, {len(landscapes)} landscape(s))")
    if args.json:
        out = dict(stats)
        if landscapes:
            out["landscapes"] = landscapes
        print_json(out)
        return 0
    if not args.out:
        _print_table(stats)
    return 0


def _print_table(stats: dict) -> None:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    trimmed = stats.get("density") is not None
    head = f"{'group':<8} {'conflict':>8} {'mass agr':>8} {'keep':>8}" + (f" {'trim cf':>8}" if trimmed else "")
    head += "  norms"
    print(f"task vectors of {len(stats['models'])} model(s) against {stats['base']} ({stats['layout']} layout)")
    print(head)
    for g in stats["groups"] + [stats["overall"]]:
        line = f"{g['group']:<8} {pct(g['sign_conflict']):>8} {pct(g['mass_agreement']):>8} {pct(g['elected_keep']):>8}"
        if trimmed:
            line += f" {pct(g['trimmed']['sign_conflict']):>8}"
        line += "  " + " ".join(f"{v:.3g}" for v in g["norms"])
        print(line)
    print("(--json for every number, --out report.html for the figures)")
