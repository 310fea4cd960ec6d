"""python -m studio moe CONFIG.yaml OUT_DIR [--seed N] [--device cpu|cuda] [--overwrite] [--json] [--quiet]

Builds a mixture-of-experts model from dense Llama/Mistral experts, reading mergekit-moe's YAML (base_model,
gate_mode, experts with positive/negative prompts, shared_experts, experts_per_token, architecture, dtype)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli import print_json
from ..describe import human_bytes
from ..devices import parse_size
from ..moe import build_moe, load_moe_spec


def add_arguments(p):
    p.add_argument("config", help="mergekit-moe YAML config")
    p.add_argument("out", help="output model folder")
    p.add_argument("--seed", type=int, default=0, help="seed for random gates and expert noise (default 0)")
    p.add_argument("--device", default="cpu", help="where the base model runs for hidden-state gates (cpu, cuda)")
    p.add_argument("--shard-size", default="5G", help="maximum shard size, e.g. 2G or 500M (default 5G)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    spec, text = load_moe_spec(args.config)
    summary = build_moe(spec, Path(args.out), seed=args.seed, overwrite=args.overwrite, device=args.device,
                        shard_bytes=parse_size(args.shard_size), config_text=text, quiet=args.quiet)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['architecture']} · {summary['experts']} experts ({summary['experts_per_token']} per token"
              f"{', 1 shared' if summary['shared_experts'] else ''}) · gate {summary['gate_mode']} · "
              f"{summary['layers']} layers · {summary['tensors']} tensors · {human_bytes(summary['output_bytes'])} "
              f"→ {args.out}", file=sys.stdout)
    return 0
