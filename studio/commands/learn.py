"""``python -m studio learn METHOD --base REF --experts REF [REF ...] --data SPEC --out DIR``.

Writes into DIR: ``recipe.yml`` (AdaMerging / SAMerging: learned per-tensor coefficients as a task_arithmetic
recipe — run it on full-size checkpoints with ``python -m studio merge DIR/recipe.yml OUT``), ``merged.safetensors``
(the merged weights, every method; for CLIP ``config.json`` + ``model.safetensors``, a loadable vision tower) and
``trajectory.json`` (loss per step and coefficient snapshots). Files are written under temporary names and renamed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import StudioError
from ..learn import RUN_OPTIONS, LearnerSpec, get_learner, list_learners, run_learned
from ..methods.registry import Param
from ..output import check_target
from ..zoo import expand_zoo_refs, zoo_models


def add_arguments(p) -> None:
    learners = list_learners()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = hyperparameters_help(learners)
    p.add_argument("method", choices=[s.name for s in learners],
                   help="; ".join(f"{s.name}: {s.summary}" for s in learners))
    p.add_argument("--base", required=True, help="the pretrained model θ0: a CLIP or causal-LM model folder or hub "
                   "id, a zoo-style backbone file, or zoo:FAMILY (its base)")
    p.add_argument("--experts", nargs="+", required=True,
                   help="fine-tuned experts, one per task (zoo:FAMILY = all of a zoo family's, zoo:FAMILY/TASK = one)")
    p.add_argument("--data", nargs="+", default=["zoo"],
                   help="unlabeled data: 'zoo' or 'zoo:FAMILY' (the zoo's unlabeled splits); one folder with a "
                        "subfolder per task; or one entry per expert (image folder, .txt file, .pt tensor)")
    p.add_argument("--out", required=True, help="output folder (recipe.yml, merged.safetensors, trajectory.json)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (AdaMerging 500, SAMerging 1000; FDA: anchor steps per layer and "
                        "expert, 1200 on CUDA / 300 on CPU)")
    p.add_argument("--task-wise", action="store_true", help="AdaMerging/SAMerging: one λ per model, not per tensor")
    p.add_argument("--lr", type=float, default=None, help="learning rate (method default if omitted)")
    p.add_argument("--init", default=None,
                   help="AdaMerging/SAMerging: initial λ; FDA: base | task_arithmetic | tsv_m | wudi")
    p.add_argument("--heads", nargs="*", default=None, metavar="TASK=PATH",
                   help="classifiers: each task's head — CLIP: a .txt of class names (zero-shot head) or a "
                        ".safetensors with head.weight; zoo vision: default <family>/heads/<task>.safetensors")
    p.add_argument("--tasks", nargs="*", default=None, help="task names, one per expert (default: file stems)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="the method's other hyperparameters and the run options listed below, e.g. rho=0.05 "
                        "temperature=2 examples=128 epochs=50 max_items=1600")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _param_line(p: Param) -> str:
    default = "|".join(map(str, p.choices)) + f" (default {p.default})" if p.choices else f"{p.default}"
    return f"      {p.name}={default}  {p.doc}"


def hyperparameters_help(learners: list[LearnerSpec]) -> str:
    """Every learner's declared hyperparameters and the run options, for ``--help``."""
    lines = ["hyperparameters (--set KEY=VALUE; --task-wise, --lr and --init are short for granularity=task, lr and "
             "init):"]
    for s in learners:
        lines.append(f"  {s.name} ({s.label}; {s.produces}; {s.ref})")
        lines += [_param_line(p) for p in s.params]
    lines.append("  run options, every method:")
    lines += [_param_line(p) for p in RUN_OPTIONS]
    return "\n".join(lines)


def settings(args, spec: LearnerSpec) -> tuple[dict, dict]:
    """(run options, the learner's hyperparameters) from ``--set`` and the shortcut flags, checked against the
    declarations before any model is loaded."""
    run_params = {p.name: p for p in RUN_OPTIONS}
    options, hp = {}, {}
    for item in args.set or []:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise StudioError(f"--set takes KEY=VALUE, got {item!r}")
        key = k.replace("-", "_")
        if key in run_params:
            options[key] = run_params[key].coerce(_value(v), where="--set")
        else:
            hp[key] = _value(v)
    if args.task_wise:
        hp["granularity"] = "task"
    if args.lr is not None:
        hp["lr"] = args.lr
    if args.init is not None:
        hp["init"] = args.init  # λ₀ (AdaMerging, SAMerging) or a pre-merge's name (FDA): coerced as declared
    spec.check(hp)
    return options, hp


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args) -> int:
    spec = get_learner(args.method)
    options, hp = settings(args, spec)
    heads = None
    if args.heads:
        heads = {}
        for item in args.heads:
            t, eq, path = item.partition("=")
            if not eq:
                raise StudioError(f"--heads takes TASK=PATH, got {item!r}")
            heads[t] = path
    base, experts = zoo_models(args.base, "base")[0], expand_zoo_refs(args.experts, "experts")
    # before minutes of learning: the output folder may hold other files, but never be (inside) an input
    check_target(Path(args.out), True, [Path(str(r)) for r in [base, *experts] if Path(str(r)).exists()])
    bar = None
    progress = None
    if not args.quiet:
        bar = tqdm(total=1000, desc=args.method, leave=False, file=sys.stderr,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

        def progress(frac: float, msg: str) -> None:
            bar.n = int(1000 * min(1.0, max(0.0, frac)))
            bar.set_postfix_str(msg, refresh=False)
            bar.refresh()
    try:
        res = run_learned(spec.name, base, experts, args.data, device=args.device, steps=args.steps,
                          progress=progress, tasks=args.tasks, heads=heads, seed=args.seed, **options, **hp)
    finally:
        if bar is not None:
            bar.close()
    written = res.save(args.out)
    m = {k: v for k, v in res.metrics.items() if k != "anchor_loss_per_unit"}
    if args.json:
        print(json.dumps({"method": res.method, "tasks": res.tasks, "out": str(args.out), "files": written,
                          "metrics": m}, indent=2, default=float))
    else:
        start, end = m.get("objective_start"), m.get("objective_end")
        obj = f"; objective {start:.4g} → {end:.4g}" if start is not None and end is not None else ""
        print(f"{res.method}: {len(res.tasks)} tasks in {m['seconds_total']:.1f}s on {m['device']}{obj}")
        print(f"wrote {', '.join(written)} to {args.out}")
        if res.recipe is not None:
            print(f"apply to full-size checkpoints: python -m studio merge {args.out}/recipe.yml OUTPUT")
    return 0
