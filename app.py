"""Merge Studio: ``python app.py [--workspace DIR] [--host 127.0.0.1] [--port 7860] [--share] [--allow DIR ...]
[--threads N]``."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Merge Studio: merge models with live previews.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--allow", action="append", default=[], metavar="DIR",
                   help="a folder the studio may read models from and export into (repeatable)")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="where the studio keeps what it makes: exports/, grids/, reports/, recipes/ (default "
                        "$MERGE_STUDIO_WORKSPACE, else ~/merge-studio; created on first start)")
    p.add_argument("--export-dir", default=None,
                   help="default export folder (default: the workspace's exports/; must be writable to the studio)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--max-parallel", type=int, default=1, help="heavy jobs (merges, exports) run at once")
    p.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="inputs a preview keeps resident on the device, e.g. 8G (default: half the GPU's free memory "
                        "on CUDA; none on the CPU, where inputs stay in their memory-mapped files)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads torch may use for merges and previews (default: torch's own choice, usually "
                        "one per core). On a busy or shared machine a small number (1-2) keeps slider previews "
                        "fast, because torch's threads otherwise wait on each other")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads (and inter-op threads, which can only be set before any parallel work)."""
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already fixed once parallel work has run in this process
        pass


def default_workspace() -> str:
    """$MERGE_STUDIO_WORKSPACE, else ~/merge-studio — unless that is where this program was cloned (the studio never
    writes into its own install folder): then ~/merge-studio-workspace."""
    import os
    from pathlib import Path

    if os.environ.get("MERGE_STUDIO_WORKSPACE"):
        return os.environ["MERGE_STUDIO_WORKSPACE"]
    home = Path.home() / "merge-studio"
    here = Path(__file__).resolve().parent
    return str(home.parent / "merge-studio-workspace" if here == home.resolve() or here.is_relative_to(
        home.resolve()) else home)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    from studio.devices import parse_size
    from studio.errors import StudioError
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog
    from studio.ui.paths import AllowedRoots
    from studio.ui.env import StudioEnv

    try:
        env = StudioEnv(Catalog(), AllowedRoots(args.allow), device=args.device, max_parallel=args.max_parallel,
                        export_dir=args.export_dir,
                        workspace=default_workspace() if args.workspace is None else args.workspace,
                        memory_budget=None if args.memory_budget is None else parse_size(args.memory_budget))
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the studio",
              file=sys.stderr)
    print(f"workspace: {env.workspace} (exports, grids, reports and recipes go here)", file=sys.stderr)
    ui = build_app(env)
    ui.launch(host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
