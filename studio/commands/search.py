"""``python -m studio search RECIPE --set-range PATH[=LO:HI] … --eval SPEC … --trials N --out DIR``.

Black-box search over a recipe's settings (:mod:`studio.search`). Every trial is stored in the Optuna storage
(``sqlite:///DIR/search.db`` by default) as it ends, so the same command resumes a stopped search and runs on to
``--trials``. At the end (or after Ctrl-C) DIR receives, each file written under a temporary name and renamed:
``best.yml`` (the best trial's recipe; with several objectives the first of the Pareto front, the whole front in
``pareto/NN.yml``), ``trials.csv`` and ``trials.json`` (every trial's values, settings, time, error) and
``report.html`` (convergence, setting importances, the Pareto front)."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import shlex
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..cli import print_json
from . import STRICT_HELP, load_recipe
from ..devices import resolve_device
from ..errors import StudioError
from ..output import AtomicTarget, check_target, write_json, write_text
from ..search import (SAMPLERS, LocalBackend, Objective, Scorer, Search, best_trials, finished, open_study, prepare,
                      run_search, search_space, trial_rows)
from ..search.report import build_search_report
from ..search.study import search_layout

BACKENDS = ("local", "ray")
RAY_BACKEND = "studio.search.ray_backend"


def add_arguments(p):
    p.add_argument("recipe", help="the recipe whose settings are searched (mergekit YAML, or what carries one)")
    p.add_argument("--set-range", action="append", default=[], metavar="PATH[=LO:HI]",
                   help="a setting to vary (repeatable): models.*.weight=0:1, parameters.lambda@L00..L31=0:1.5, "
                        "models.1.density; without bounds, the method's slider range")
    p.add_argument("--eval", action="append", default=[], metavar="SPEC",
                   help="what to optimise (repeatable; several make a Pareto front): python:MODULE:FUNCTION, "
                        "text:FILE (perplexity), eval:FILE.jsonl (accuracy), zoo, zoo:validation; #KEY picks one "
                        "number, ,max / ,min the direction")
    p.add_argument("--trials", type=int, default=50, help="trials in all, those of a resumed search included "
                                                          "(default 50)")
    p.add_argument("--sampler", default=None,
                   help=f"{' | '.join(SAMPLERS)} (default: cmaes for one objective, nsga2 for several)")
    p.add_argument("--grid-points", type=int, default=5, help="grid sampler: values per setting (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4, help="trials asked at once (the Ray backend scores them in "
                                                        "parallel; default 4)")
    p.add_argument("--backend", default="local", help="local (this process) or ray (workers holding the models)")
    p.add_argument("--address", default=None, help="ray: the cluster to join (default: a local one)")
    p.add_argument("--workers", type=int, default=2, help="ray: worker actors (default 2)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per worker (default 0)")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default sqlite:///OUT/search.db)")
    p.add_argument("--study", default="search", help="the search's name in the storage (default 'search')")
    p.add_argument("--out", default=None, help="folder for best.yml, pareto/, trials.csv, trials.json, report.html "
                                               "and (by default) the storage")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def make_search(args, recipe) -> Search:
    """The search the arguments describe, checked before any model is loaded beyond headers."""
    if not args.eval:
        raise StudioError("a search needs something to optimise", where="--eval",
                          hint="e.g. --eval python:my_module:score, --eval text:notes.txt or --eval zoo:validation")
    objectives = [Objective.parse(s) for s in args.eval]
    sampler = args.sampler or ("cmaes" if len(objectives) == 1 else "nsga2")
    if args.backend not in BACKENDS:
        raise StudioError(f"unknown backend {args.backend!r}", where="--backend", hint=", ".join(BACKENDS))
    dims = search_space(recipe, args.set_range, search_layout(recipe))
    return Search(recipe, dims, objectives, sampler=sampler, trials=args.trials, seed=args.seed, batch=args.batch,
                  grid_points=args.grid_points, device=str(resolve_device(args.device)))


def storage_url(args) -> str:
    if args.storage:
        return args.storage
    if not args.out:
        raise StudioError("a search needs somewhere to store its trials", where="--out",
                          hint="give --out DIR (trials go to DIR/search.db) or --storage URL")
    return f"sqlite:///{(Path(args.out) / 'search.db').resolve()}"


def make_backend(args, search: Search, evaluators):
    if args.backend == "local":
        return LocalBackend(Scorer(search, evaluators))
    if importlib.util.find_spec(RAY_BACKEND) is None:
        raise StudioError("this build has no Ray backend", where="--backend", hint="use --backend local")
    # loaded by name only for --backend ray: the module (and ray) is not needed by a local search
    module = importlib.import_module(RAY_BACKEND)
    return module.RayBackend(search, workers=args.workers, address=args.address,
                             cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)


def run(args) -> int:
    recipe = load_recipe(args.recipe, strict=args.strict)
    search = make_search(args, recipe)
    url = storage_url(args)
    out = Path(args.out) if args.out else None
    if out is not None:  # the folder may hold an earlier run's files (a resume), never be (inside) an input
        check_target(out, True, [Path(r) for r in recipe.referenced_models() if Path(r).exists()])
    evaluators = prepare(search)
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudioError(f"cannot create the output folder ({e.strerror})", where=str(out)) from None
    study = open_study(search, url, args.study)
    before = finished(study)
    backend = make_backend(args, search, evaluators)
    # disable=None: a bar on a terminal only (in a log its carriage-return frames make one unreadable line)
    bar = None if args.quiet or args.json else tqdm(total=search.trials, initial=min(before, search.trials),
                                                    desc="search", unit="trial", file=sys.stderr, dynamic_ncols=True,
                                                    disable=None)
    names = [o.name for o in search.objectives]

    def progress(info: dict) -> None:
        if bar is not None:
            bar.n = min(info["done"], search.trials)
            if info["best"] is not None:
                bar.set_postfix_str("best " + " ".join(f"{v:.4g}" for v in info["best"]), refresh=False)
            bar.refresh()

    t0 = time.perf_counter()
    failure, interrupted, ran = None, False, 0
    try:
        ran = run_search(search, study, backend, progress=progress)
    except StudioError as e:  # a failed trial: stored as failed; what finished before it is still written out
        failure = e
    except KeyboardInterrupt:  # run_search stored the trials it had asked as failed
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        backend.close()
    seconds = time.perf_counter() - t0
    files = write_outputs(out, study, search, args.study, url) if out is not None else {}
    if failure is not None:
        raise failure
    outcome = summary(study, search, args, url, files, ran=finished(study) - before if interrupted else ran,
                      seconds=seconds, interrupted=interrupted)
    if args.json:
        print_json(outcome)
    else:
        print_summary(outcome, names)
    if interrupted:
        print(f"interrupted after {outcome['trials']} of {search.trials} trials, all stored in {url}; resume with "
              f"the same command: {resume_command(args, url)}", file=sys.stderr)
        return 130
    return 0


def resume_command(args, url: str) -> str:
    words = ["python", "-m", "studio", "search", *sys.argv[2:]] if sys.argv[1:2] == ["search"] else \
        ["python", "-m", "studio", "search", args.recipe, "…"]
    if "--storage" not in words:
        words += ["--storage", url]
    if "--study" not in words:
        words += ["--study", args.study]
    return " ".join(shlex.quote(w) for w in words)


def write_outputs(out: Path, study, search: Search, name: str, url: str) -> dict[str, str | list[str]]:
    """best.yml (and pareto/NN.yml), trials.csv, trials.json and report.html in ``out``, each atomically."""
    rows = trial_rows(study, search)
    best = best_trials(study, search)
    files: dict[str, str | list[str]] = {}
    if best:
        files["best"] = str(write_text(out / "best.yml", best[0].user_attrs["recipe"]))
    if len(search.objectives) > 1 and best:
        with AtomicTarget(out / "pareto") as tmp:
            for i, t in enumerate(best):
                (tmp / f"{i:02d}.yml").write_text(t.user_attrs["recipe"], encoding="utf-8")
        files["pareto"] = [str(out / "pareto" / f"{i:02d}.yml") for i in range(len(best))]
    files["csv"] = str(write_text(out / "trials.csv", rows_csv(rows)))
    files["json"] = str(write_json(out / "trials.json", rows))
    files["report"] = str(write_text(out / "report.html", build_search_report(
        study, search, name, url, title=f"Merge Studio search — {name}")))
    return files


def rows_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def summary(study, search: Search, args, url: str, files: dict, *, ran: int, seconds: float,
            interrupted: bool) -> dict:
    rows = trial_rows(study, search)
    best = best_trials(study, search)
    names = [o.name for o in search.objectives]
    pareto = files.get("pareto") or []
    return {
        "study": args.study, "storage": url, "sampler": search.sampler, "trials": finished(study),
        "complete": sum(r["state"] == "complete" for r in rows), "failed": sum(r["state"] == "fail" for r in rows),
        "ran": ran, "seconds": round(seconds, 3), "interrupted": interrupted,
        "objectives": [{"name": n, "direction": d} for n, d in zip(names, search.directions)],
        "best": [{"trial": t.number, "values": dict(zip(names, t.values)), "params": dict(t.params),
                  "recipe": pareto[i] if pareto else (files.get("best") if i == 0 else None)}
                 for i, t in enumerate(best)],
        "files": files,
    }


def print_summary(outcome: dict, names: list[str]) -> None:
    print(f"search {outcome['study']!r}: {outcome['trials']} trials ({outcome['ran']} now, {outcome['failed']} "
          f"failed) in {outcome['seconds']:.1f} s, sampler {outcome['sampler']}; stored in {outcome['storage']}")
    best = outcome["best"]
    if not best:
        print("no trial completed")
    elif len(names) == 1:
        b = best[0]
        print(f"best: trial {b['trial']}, {names[0]} = {b['values'][names[0]]:.6g}")
        for k, v in b["params"].items():
            print(f"  {k} = {v:.6g}")
    else:
        print(f"Pareto front: {len(best)} trials")
        for b in best:
            print(f"  trial {b['trial']}: " + ", ".join(f"{n} = {b['values'][n]:.6g}" for n in names))
        print(f"settings of trial {best[0]['trial']} (best.yml):")
        for k, v in best[0]["params"].items():
            print(f"  {k} = {v:.6g}")
    files = outcome["files"]
    if files:
        shown = [files[k] for k in ("best", "csv", "json", "report") if k in files]
        if files.get("pareto"):
            shown.insert(1, f"{Path(files['pareto'][0]).parent}/ ({len(files['pareto'])} recipes)")
        print("wrote " + ", ".join(shown))
        if "best" in files:
            print(f"merge it: python -m studio merge {files['best']} MERGED_FOLDER")
