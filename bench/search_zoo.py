"""Black-box search on the demo zoo: per-layer λ of task arithmetic over the vision zoo's 8 experts, searched on a
validation split carved from the training data, then scored once on the untouched test split.

    python bench/search_zoo.py                  # CMA-ES and random search, 200 trials each; throughput
    python bench/search_zoo.py --quick          # 40 trials each, a smoke run
    python bench/search_zoo.py --trials 400 --no-adamerging

Prints the normalized test accuracy (mean over tasks of merged / expert accuracy, as the zoo report) of each search's
best recipe next to task arithmetic at λ = 0.3 and layer-wise AdaMerging, both measured in this same run; then
trials per minute on the vision and text zoos with the local backend (and Ray with 2 workers when the Ray backend
and ray are there), the driver's ask/tell time per trial, and what that makes of N GPUs on paper.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

import studio  # noqa: E402,F401 — registers the methods and the zoo evaluator
from studio.engine import merge_in_memory  # noqa: E402
from studio.evaluate.common import normalized  # noqa: E402
from studio.recipe import Recipe  # noqa: E402
from studio.search import (LocalBackend, Objective, Scorer, Search, best_trials, open_study, prepare,  # noqa: E402
                           run_search, search_space)
from studio.search.study import completed, search_layout  # noqa: E402
from studio.zoo import get_family  # noqa: E402
from studio.zoo.build import load_state  # noqa: E402
from studio.zoo.learned_report import zoo_rows  # noqa: E402

README_ADAMERGING_LAYER = 93.9


def task_arithmetic(fam, lam: float = 0.3) -> Recipe:
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": fam.base, "dtype": "float32",
                             "parameters": {"lambda": lam},
                             "models": [{"model": p, "parameters": {"weight": 1.0}} for p in fam.experts.values()]})


def per_layer(recipe: Recipe) -> list[str]:
    groups = search_layout(recipe).groups
    return [f"parameters.lambda@{groups[0]}..{groups[-1]}=0:1"]


def searched(recipe: Recipe, objective: str, sampler: str, trials: int, seed: int, backend=None, batch: int = 4):
    """(search, study, wall seconds of run_search) for an in-memory study."""
    search = Search(recipe, search_space(recipe, per_layer(recipe), search_layout(recipe)),
                    [Objective.parse(objective)], sampler=sampler, trials=trials, seed=seed, batch=batch)
    evaluators = prepare(search)
    study = open_study(search)
    made = backend(search) if backend else LocalBackend(Scorer(search, evaluators))
    t0 = time.perf_counter()
    try:
        run_search(search, study, made)
    finally:
        made.close()
    return search, study, time.perf_counter() - t0


def throughput(study, wall: float) -> dict:
    """Trials per minute, and the driver's share per trial: wall time less the trials' own merge-and-score time."""
    done = completed(study)
    scoring = sum(t.user_attrs.get("seconds", 0.0) for t in done)
    return {"trials": len(done), "per_minute": 60 * len(done) / wall, "trial_s": scoring / len(done),
            "driver_s": max(0.0, wall - scoring) / len(done), "wall": wall}


def test_normalized(recipe: Recipe, ev, experts: dict[str, float]) -> tuple[float, float]:
    out = ev.evaluate(merge_in_memory(recipe))
    return float(out["average"]), 100 * normalized(out["per_task"], experts, ev.metric)


def ray_backend_factory(workers: int):
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("studio.search.ray_backend") is None:
        return None
    module = importlib.import_module("studio.search.ray_backend")
    return lambda search: module.RayBackend(search, workers=workers, address=None, cpus_per_worker=1,
                                            gpus_per_worker=0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="40 trials per search, 8 text trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared CPU)")
    p.add_argument("--no-adamerging", action="store_true", help="quote the README's 93.9 instead of recomputing")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trials = 40 if args.quick else args.trials
    text_trials = 8 if args.quick else 24
    t_start = time.perf_counter()

    fam = get_family("vision")
    recipe = task_arithmetic(fam)
    ev = fam.evaluator("report", "cpu")       # the test split, whole: never seen by a search
    experts = {t: float(ev.evaluate(load_state("vision", p))["per_task"][t]) for t, p in fam.experts.items()}
    rows = [("task arithmetic λ=0.3", None, *test_normalized(recipe, ev, experts), None)]
    if args.no_adamerging:
        rows.append(("adamerging_layer (README)", None, None, README_ADAMERGING_LAYER, None))
    else:
        t0 = time.perf_counter()
        ada = zoo_rows("vision", methods=["adamerging_layer"])[0]
        rows.append(("adamerging_layer (this run)", None, ada["average"], ada["normalized"],
                     time.perf_counter() - t0))
    runs = {}
    for sampler in ("cmaes", "random"):
        search, study, wall = searched(recipe, "zoo:validation", sampler, trials, args.seed)
        best = best_trials(study, search)[0]
        best_recipe = Recipe.from_dict(yaml.safe_load(best.user_attrs["recipe"]))
        rows.append((f"search {sampler}, {trials} trials", best.values[0], *test_normalized(best_recipe, ev, experts),
                     wall))
        runs[sampler] = (study, wall)
        print(f"{sampler}: best validation {best.values[0]:.2f} at trial {best.number}; λ per layer "
              + " ".join(f"{v:.2f}" for v in best.params.values()), file=sys.stderr)

    print(f"Vision zoo, 8 experts, task arithmetic with one λ per layer group ({len(search.dims)} groups) "
          f"searched on zoo:validation; test split scored once per row. torch threads {args.threads}.\n")
    print("| recipe | validation avg | test avg | normalized % | s |")
    print("|---|---|---|---|---|")
    for label, val, test, norm, sec in rows:
        cells = [f"{val:.2f}" if val is not None else "", f"{test:.2f}" if test is not None else "",
                 f"{norm:.1f}", f"{sec:.1f}" if sec is not None else ""]
        print(f"| {label} | {' | '.join(cells)} |")
    ta_norm = rows[0][3]
    for label, _, _, norm, _ in rows[2:]:
        print(f"{label}: {norm - ta_norm:+.1f} normalized points over task arithmetic λ=0.3, "
              f"{norm - rows[1][3]:+.1f} over layer-wise AdaMerging")

    print("\nThroughput (local backend: one process, trials one after another)")
    print("| zoo | backend | trials | trials/min | merge+score s/trial | driver ask/tell s/trial |")
    print("|---|---|---|---|---|---|")
    for sampler, (study, wall) in runs.items():
        got = throughput(study, wall)
        print(f"| vision | local, {sampler} | {got['trials']} | {got['per_minute']:.0f} | {got['trial_s']:.3f} | "
              f"{got['driver_s']:.3f} |")
    local = throughput(*runs["random"])
    text = get_family("text")
    _, tstudy, twall = searched(task_arithmetic(text), "zoo", "random", text_trials, args.seed)
    tl = throughput(tstudy, twall)
    print(f"| text | local, random | {tl['trials']} | {tl['per_minute']:.0f} | {tl['trial_s']:.3f} | {tl['driver_s']:.3f} |")
    factory = None if args.no_ray else ray_backend_factory(2)
    if factory is None:
        print("(Ray: " + ("skipped" if args.no_ray else "ray or studio.search.ray_backend not importable here")
              + " — no Ray row)")
    else:
        _, rstudy, rwall = searched(recipe, "zoo:validation", "random", trials, args.seed, backend=factory)
        rl = throughput(rstudy, rwall)
        # trials overlap on the workers: wall less their summed time says nothing of the driver
        print(f"| vision | ray, 2 workers, random | {rl['trials']} | {rl['per_minute']:.0f} | {rl['trial_s']:.3f} | "
              "(overlapped) |")
        print(f"ray 2 workers / local: {rl['per_minute'] / local['per_minute']:.2f}× on this 2-core machine")
    # one resident actor per GPU scores a batch in parallel; the driver still asks and tells one trial at a time
    t, d = local["trial_s"], local["driver_s"]
    paper = ", ".join(f"{n} GPUs ≈ {60 / (t / n + d):.0f}/min ({(t + d) / (t / n + d):.1f}×)" for n in (1, 2, 4, 8))
    print(f"\nOn paper, vision, one actor per GPU with these per-trial times (score {t:.3f} s, driver {d:.3f} s): "
          f"{paper}; the driver's ask/tell caps it at {60 / d if d else float('inf'):.0f}/min.")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
