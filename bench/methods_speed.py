"""TIES (density 0.3) and DARE-TIES per-tensor speed and peak memory: Merge Studio vs mergekit, same run.

    python bench/methods_speed.py [--size 4096] [--models 3] [--repeat 3]

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own; the figure reported is the peak
above the inputs already resident (base + models). Inputs: float32 [size, size], models = base + noise.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {"ties": {"density": 0.3}, "dare_ties": {"density": 0.3}}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(impl: str, name: str, size: int, n: int, repeat: int) -> dict:
    import torch

    torch.manual_seed(0)
    base = torch.randn(size, size)
    models = [base + 0.01 * torch.randn(size, size) for _ in range(n)]
    weights = [1.0] * n
    dens = METHODS[name]["density"]
    if impl == "mergekit":
        from mergekit.merge_methods import merge_tensors

        params = {"weight": weights, "density": dens}

        def run():
            return merge_tensors([base, *models], name, parameters=params, base_index=0)
    else:
        from studio.methods.registry import get_method

        spec = get_method(name)
        kw = {p.py_name: p.default for p in spec.params if not p.required and not p.per_model}
        kw.update(weight=weights, density=[dens] * n)
        gen = torch.Generator().manual_seed(0)
        if spec.random:
            kw["generator"] = gen

        def run():
            return spec(base, models, **kw)

    resident = _rss_mib()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    return {"impl": impl, "method": name, "best_s": min(times), "peak_extra_mib": _rss_mib() - resident,
            "peak_mib": _rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "METHOD"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a.size, a.models, a.repeat)))
        return
    import torch

    print(f"# {a.models} models of [{a.size}, {a.size}] float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {a.repeat}")
    print(f"{'method':<10} {'impl':<9} {'time s':>8} {'peak+ MiB':>10} {'speedup':>8} {'mem ratio':>9}")
    for name in METHODS:
        res = {}
        for impl in ("mergekit", "studio"):
            cmd = [sys.executable, __file__, "--worker", impl, name, "--size", str(a.size), "--models",
                   str(a.models), "--repeat", str(a.repeat)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name:<10} {impl:<9} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            res[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        for impl, r in res.items():
            extra = ""
            if impl == "studio" and "mergekit" in res:
                m = res["mergekit"]
                extra = f"{m['best_s'] / r['best_s']:>7.1f}x {r['peak_extra_mib'] / max(m['peak_extra_mib'], 1):>8.2f}"
            print(f"{name:<10} {impl:<9} {r['best_s']:>8.3f} {r['peak_extra_mib']:>10.0f} {extra}")


if __name__ == "__main__":
    main()
