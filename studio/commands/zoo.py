"""``python -m studio zoo build|list|report``: the built-in demo zoo."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import StudioError
from ..zoo import FAMILIES, assets_root, describe_family, list_families
from ..zoo.build import build
from ..zoo.report import markdown, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="zoo_command", metavar="build|list|report")
    b = sub.add_parser("build", help="train the demo zoo into assets/zoo (deterministic, offline)")
    b.add_argument("--family", choices=["vision", "text", "diffusion"], action="append",
                   help="build only this family (repeatable; default: all)")
    b.add_argument("--quick", action="store_true", help="a reduced zoo in seconds (for tests), not for committing")
    b.add_argument("--root", help="output folder (default: assets/zoo or $STUDIO_ZOO_DIR)")
    ls = sub.add_parser("list", help="list the zoo's families, models and tasks")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    r = sub.add_parser("report", help="evaluate experts, base and every merge method on the zoo")
    r.add_argument("--family", choices=["vision", "text", "diffusion"], action="append",
                   help="report only this family (repeatable; default: all built)")
    r.add_argument("--json", action="store_true", help='print {"<family>": [{"method", "per_task", "average", '
                                                       '"normalized"}]}')
    r.add_argument("--budget", choices=["report", "preview"], default="report")
    r.add_argument("--method", action="append", help="only this merge method (repeatable)")
    r.add_argument("--learned", action="store_true", help="also run the learned merges (studio.learn)")
    r.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "zoo_command", None)
    if cmd == "build":
        build(args.family, root=args.root, quick=args.quick, log=lambda m: print(m, file=sys.stderr))
        return 0
    if cmd == "list":
        built = set(list_families())
        entries = {n: {**describe_family(n, assets_root()).to_dict(), "built": n in built} for n in FAMILIES}
        if args.json:
            print(json.dumps(entries, indent=2))
        else:
            for n, e in entries.items():
                state = "" if e["built"] else "  (not built: python -m studio zoo build --family " + n + ")"
                print(f"{n} [{e['kind']}]{state}\n  {e['description']}\n  base: {e['base']}")
                for t in e["tasks"]:
                    lora = "  + LoRA" if t in e["loras"] else ""
                    print(f"  - {t}: {e['task_docs'].get(t, '')}{lora}")
        return 0
    if cmd == "report":
        log = None if args.json else (lambda m: print(m, file=sys.stderr))
        reps = report(args.family, args.budget, args.device, args.method, args.learned, log)
        if args.json:
            print(json.dumps({f: r["rows"] for f, r in reps.items()}))
        else:
            print(f"python -m studio zoo report --budget {args.budget}\n")
            for f, r in reps.items():
                print(markdown(f, r) + "\n")
        return 0
    raise StudioError("missing zoo command", hint="use build, list or report")

