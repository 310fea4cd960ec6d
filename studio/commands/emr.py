"""python -m studio emr MERGED_DIR TASK OUT — rebuild one task's model from an EMR merge (masks + rescaler)."""

from __future__ import annotations

from ..engine.emr import materialize_task


def add_arguments(p):
    p.add_argument("merged", help="output folder of a merge_method: emr recipe")
    p.add_argument("task", help="task index (0-based, recipe order) or the task model's reference")
    p.add_argument("out", help="output folder for the task's model")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    out = materialize_task(args.merged, args.task, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
