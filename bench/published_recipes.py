"""The published mergekit recipes (tests/recipe/published/) through both engines on the same tiny models:
`python -m studio merge` and mergekit 0.1.5 (`mergekit-yaml`, or `mergekit-multi` for multi-document files).

    python bench/published_recipes.py [--timeout 120] [--only 07,33] [--json rows.json] [--keep DIR]

The tiny model zoo and the placeholder filling are the test's own (tests/recipe/test_published_recipes.py). Each
merge runs in its own child process with a per-recipe timeout, so a recipe one engine grinds on (mergekit's karcher
with a large max_iter in bfloat16) costs at most the timeout. The children fork from a server that has already
imported both engines, so the times are the merges' own (reading, computing, writing), not interpreter start-up.
Both engines get seed 0; for the methods that draw random masks (dare_*, della*) the two draw different masks, so
their difference is not a disagreement. Tensors are compared in float32: the max over tensors of
max|ours − mergekit| / max|mergekit|; bfloat16 recipes differ by rounding, since mergekit computes in the recipe's
dtype.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests", ROOT / "tests" / "recipe"):
    sys.path.insert(0, str(p))
# read by transformers / huggingface_hub when first imported: the zoo build and the merges print no progress bars
for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                   ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
    os.environ.setdefault(var, value)

import torch  # noqa: E402
import yaml  # noqa: E402

import test_published_recipes as published  # noqa: E402  (the zoo and placeholders are the test's)
from studio.cli import COMMANDS, main as studio_main  # noqa: E402
from tinymodels import load_state  # noqa: E402

SHORT_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
RANDOM_METHODS = {"dare_ties", "dare_linear", "della", "della_linear"}
# what the forkserver imports once, so that no child pays for it (a module that is absent is skipped)
PRELOAD = ["__main__", COMMANDS["merge"][0], "mergekit.scripts.run_yaml", "mergekit.scripts.multimerge",
           "mergekit.merge", "transformers.models.llama.modeling_llama", "transformers.models.auto.tokenization_auto",
           "peft"]


def build_zoo(root: Path) -> dict[str, Path]:
    """The test's zoo of tiny models."""
    return published.build_zoo(root)


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if "validation error" in lines[0]:  # pydantic: the count alone says nothing; the field and message follow
        return " ".join(lines[:3])
    return lines[0]


# ---- the children -------------------------------------------------------------------------------------------------

def _mergekit(recipe: Path, out: Path, multi: bool) -> None:
    # mergekit is what is being compared against, not a dependency of the project: imported in the child that runs it
    if multi:
        from mergekit.scripts.multimerge import main as cli
        args = [str(recipe), "--out-path", str(out), "--intermediate-dir", "./intermediates"]
    else:
        from mergekit.scripts.run_yaml import main as cli
        args = [str(recipe), str(out)]
    # mergekit refuses a model+LoRA reference without a folder to bake the adapter into
    args += ["--lora-merge-cache", "./lora_cache"]
    cli(args + ["--random-seed", "0", "--quiet", "--device", "cpu"], standalone_mode=False)


def _run_child(engine: str, recipe: str, out: str, multi: bool, result: str) -> None:
    """Merge in this (forked) process with stdout/stderr in a log next to ``result``; the outcome to ``result``."""
    log = os.open(result + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(Path(recipe).parent)  # mergekit-multi's ./intermediates (and recipe 33's reads of it) live here
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    error = ""
    try:
        if engine == "ours":
            code = studio_main(["merge", recipe, out, "--quiet", "--seed", "0"])
            sys.stderr.flush()
            if code != 0:
                # the CLI's one line is the last thing it wrote
                lines = Path(result + ".log").read_text(errors="replace").strip().splitlines()
                error = lines[-1].strip() if lines else f"exit {code}"
        else:
            _mergekit(Path(recipe), Path(out), multi)
    except BaseException as e:  # noqa: BLE001 - whatever stops the merge is the row's outcome
        traceback.print_exc()
        error = f"{type(e).__name__}: {first_line(str(e))}"
    seconds = time.perf_counter() - start
    Path(result).write_text(json.dumps({"ok": not error, "error": error, "seconds": seconds}))


def run_engine(ctx, engine: str, recipe: Path, out: Path, multi: bool, timeout: float) -> dict:
    result = out.parent / f"{engine}.result.json"
    start = time.perf_counter()
    child = ctx.Process(target=_run_child, args=(engine, str(recipe), str(out), multi, str(result)))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return {"ok": False, "timeout": True, "error": f"timeout ({timeout:g} s)", "seconds": timeout}
    if not result.exists():
        return {"ok": False, "timeout": False, "error": f"child died (exit {child.exitcode})",
                "seconds": time.perf_counter() - start}
    return {"timeout": False, **json.loads(result.read_text())}


# ---- the comparison -----------------------------------------------------------------------------------------------

def compare(ours: Path, theirs: Path) -> dict:
    """Max over the common tensors of max|a − b| / max|b| (b: mergekit's); ‖a − b‖ / ‖b‖ over all of them (a few
    elements that land on the other side of a rounding-sensitive threshold move the first, not the second); and
    what the two do not share."""
    a, b = load_state(ours), load_state(theirs)
    common = sorted(set(a) & set(b))
    shapes = [k for k in common if a[k].shape != b[k].shape]
    worst, worst_key, exact, sq_diff, sq_ref = 0.0, "", True, 0.0, 0.0
    for k in common:
        if k in shapes:
            continue
        sq_diff += (a[k] - b[k]).pow(2).sum().item()
        sq_ref += b[k].pow(2).sum().item()
        diff = (a[k] - b[k]).abs().max().item() if a[k].numel() else 0.0
        exact = exact and diff == 0.0
        scale = max(b[k].abs().max().item() if b[k].numel() else 0.0, 1e-12)
        if diff / scale > worst:
            worst, worst_key = diff / scale, k
    return {"rel": worst, "worst": worst_key, "l2": (sq_diff / max(sq_ref, 1e-30)) ** 0.5,
            "exact": exact and not shapes, "only_ours": sorted(set(a) - set(b)),
            "only_mergekit": sorted(set(b) - set(a)), "shape_differs": shapes}


def diff_cell(cmp: dict | None) -> str:
    if cmp is None:
        return "-"
    if "error" in cmp:
        return "compare failed: " + cmp["error"]
    cell = "exact" if cmp["exact"] else f"{cmp['rel']:.2e}  L2 {cmp['l2']:.1e}"
    extra = []
    if cmp["shape_differs"]:
        extra.append(f"{len(cmp['shape_differs'])} shapes differ")
    if cmp["only_ours"] or cmp["only_mergekit"]:
        extra.append(f"keys +{len(cmp['only_ours'])}/-{len(cmp['only_mergekit'])}")
    return cell + (f" ({', '.join(extra)})" if extra else "")


def notes(docs: list[dict]) -> str:
    out = []
    if any(d.get("merge_method") in RANDOM_METHODS for d in docs):
        out.append("random masks")
    dtype = str(docs[-1].get("dtype") or "") if docs else ""
    if dtype:
        out.append(SHORT_DTYPE.get(dtype.lower(), dtype))
    if len(docs) > 1:
        out.append(f"{len(docs)} docs")
    return ", ".join(out)


def outcome(r: dict) -> str:
    return f"ok {r['seconds']:.1f}s" if r["ok"] else r["error"]


def with_dtype(text: str, dtype: str) -> str:
    """The recipe with every document computing in ``dtype`` (comments dropped, values kept)."""
    docs = [dict(d, dtype=dtype) for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return yaml.safe_dump_all(docs, sort_keys=False)


def bench_recipe(ctx, path: Path, zoo: dict, work: Path, timeout: float, dtype: str | None = None) -> dict:
    text = published._fill(path.read_text(), zoo)
    if dtype:
        text = with_dtype(text, dtype)
    docs = documents(text)
    multi = len(docs) > 1
    res = {}
    for engine in ("ours", "mergekit"):
        folder = work / path.stem / engine
        folder.mkdir(parents=True)
        recipe = folder / path.name
        recipe.write_text(text)
        res[engine] = run_engine(ctx, engine, recipe, folder / "out", multi, timeout)
    cmp = None
    if res["ours"]["ok"] and res["mergekit"]["ok"]:
        try:
            cmp = compare(work / path.stem / "ours" / "out", work / path.stem / "mergekit" / "out")
        except Exception as e:  # noqa: BLE001 - an unreadable output is this row's finding, not the run's end
            cmp = {"error": f"{type(e).__name__}: {first_line(str(e))}"}
    return {"recipe": path.stem, "multi": multi, "notes": notes(docs), "ours": res["ours"],
            "mergekit": res["mergekit"], "compare": cmp}


def print_row(row: dict, width: int = 60) -> None:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[:width - 1] + "…"
    print(f"{row['recipe'][:44]:44} | {cut(outcome(row['ours'])):{min(width, 30)}} | "
          f"{cut(outcome(row['mergekit'])):{min(width, 30)}} | {diff_cell(row['compare']):22} | {row['notes']}",
          flush=True)


def summary(rows: list[dict], timeout: float, wall: float) -> list[str]:
    n = len(rows)
    ours_ok = sum(r["ours"]["ok"] for r in rows)
    mk_ok = sum(r["mergekit"]["ok"] for r in rows)
    mk_timeouts = sum(r["mergekit"]["timeout"] for r in rows)
    mk_errors = n - mk_ok - mk_timeouts
    both = [r for r in rows if r["compare"] and "error" not in r["compare"]]
    exact = sum(r["compare"]["exact"] for r in both)
    ours_t = sum(r["ours"]["seconds"] for r in rows)
    mk_t = sum(r["mergekit"]["seconds"] for r in rows)
    within = sum(r["compare"]["rel"] <= 1e-2 for r in both) - exact
    random = sum("random" in r["notes"] for r in both if not r["compare"]["exact"] and r["compare"]["rel"] > 1e-2)
    lines = [f"ours merged {ours_ok}/{n}, mergekit merged {mk_ok}/{n} ({mk_timeouts} timeouts, {mk_errors} errors)"
             + (f"; ours: {sum(r['ours']['timeout'] for r in rows)} timeouts" if any(r["ours"]["timeout"] for r in rows)
                else ""),
             f"both merged {len(both)}: {exact} exact, {within} within 1e-2 relative, {len(both) - exact - within} "
             f"further apart ({random} of them draw random masks)",
             f"total merge time: ours {ours_t:.1f} s, mergekit {mk_t:.1f} s (timeouts counted at {timeout:g} s; "
             f"times exclude interpreter start-up and imports); whole run {wall:.1f} s"]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per recipe and engine (default 120)")
    ap.add_argument("--only", default="", help="comma-separated recipe numbers or name prefixes, e.g. 07,33")
    ap.add_argument("--json", type=Path, help="save the rows here")
    ap.add_argument("--dtype", help="override every document's dtype (e.g. float32: separates rounding from "
                    "disagreement); default: as published")
    ap.add_argument("--keep", type=Path, help="build the zoo and write the outputs here (kept) instead of a temp dir")
    args = ap.parse_args()
    recipes = published.RECIPES
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        recipes = [p for p in recipes if any(p.stem.startswith(w.zfill(2) if w.isdigit() else w) for w in wanted)]
        if not recipes:
            ap.error(f"--only {args.only}: no recipe in {published.PUBLISHED} starts with that")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="published_recipes_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"building the tiny zoo in {work} …", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' deprecation notices while saving the tiny models
            zoo = build_zoo(work / "zoo")
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        print(f"{len(recipes)} recipes, timeout {args.timeout:g} s per recipe and engine"
              + (f", every document's dtype set to {args.dtype}" if args.dtype else "") + "\n", flush=True)
        print(f"{'recipe':44} | {'ours':30} | {'mergekit':30} | {'max rel diff  (L2 rel)':22} | notes")
        print("-" * 150)
        rows = []
        for path in recipes:
            rows.append(bench_recipe(ctx, path, zoo, work / "runs", args.timeout, args.dtype))
            print_row(rows[-1])
        wall = time.perf_counter() - start
        lines = summary(rows, args.timeout, wall)
        print("\n" + "\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps({"timeout": args.timeout, "summary": lines, "rows": rows}, indent=1))
            print(f"rows saved to {args.json}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
