"""Learned merges on the demo zoo: per-task and normalized accuracy next to task arithmetic and TIES.

    python bench/learned_zoo.py                       # the built zoo (assets/zoo/vision)
    python bench/learned_zoo.py --root /tmp/vzoo      # a zoo folder (base.safetensors, experts/, heads/)
    python bench/learned_zoo.py --family text         # AdaMerging + SAMerging on the text zoo
    python bench/learned_zoo.py --steps samerging=2000 --json out.json

Prints a markdown table (the README's) and the time of each method, all measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from studio.zoo.learned_report import zoo_rows  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="vision")
    p.add_argument("--root", default=None, help="a vision zoo folder instead of the catalogue")
    p.add_argument("--methods", nargs="*", default=None, help="learned variants (default: every declared one)")
    p.add_argument("--steps", nargs="*", default=[], metavar="VARIANT=N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", default=None)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    steps = {k: int(v) for k, _, v in (s.partition("=") for s in args.steps)}
    t0 = time.perf_counter()
    rows = zoo_rows(args.family, args.budget, methods=args.methods, device=args.device, root=args.root,
                    baselines=True, steps=steps,
                    progress=lambda f, m: print(f"\r{100 * f:5.1f}% {m[:90]:<90}", end="", file=sys.stderr))
    print(file=sys.stderr)
    tasks = list(rows[0]["per_task"])
    print(f"| method | {' | '.join(tasks)} | avg | normalized | s |")
    print("|---" * (len(tasks) + 4) + "|")
    for r in rows:
        cells = " | ".join(f"{r['per_task'][t]:.1f}" for t in tasks)
        sec = f"{r['seconds']:.1f}" if r.get("seconds") is not None else ""
        print(f"| {r['method']} | {cells} | {r['average']:.2f} | {r['normalized']:.1f} | {sec} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
