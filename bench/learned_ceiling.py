"""The ceiling of layer-wise merge coefficients on the vision zoo: λ trained *with labels* (a supervised oracle).

    python bench/learned_ceiling.py [--split test] [--steps 1000] [--lr 3e-2] [--granularity layer]

Learns the same per-tensor coefficients as AdaMerging / SAMerging, but minimises the cross-entropy of the true labels
of ``--split`` (default: the test split itself, so the figure is an upper bound for any method that learns layer-wise
λ from unlabeled data). Prints normalized accuracy (merged / expert, averaged over tasks) as it trains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.learn.adapters import make_adapter  # noqa: E402
from studio.learn.coefficient_merge import CoefficientMerge  # noqa: E402
from studio.zoo import get_family  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=["test", "unlabeled", "train"])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--granularity", default="layer", choices=["layer", "task"])
    args = ap.parse_args()
    torch.manual_seed(0)
    fam = get_family("vision")
    tasks = list(fam.experts)
    adapter = make_adapter(fam.base, list(fam.experts.values()), device=torch.device("cpu"), tasks=tasks)
    merge = CoefficientMerge(adapter.base, adapter.task_vectors(), adapter.keys, args.granularity, 0.3)
    data = {t: fam.data(t, args.split) for t in tasks}
    ev = fam.evaluator("report")
    expert = {t: ev.evaluate(load_file(p))["per_task"][t] for t, p in fam.experts.items()}

    def normalized() -> float:
        with torch.no_grad():
            per = ev.evaluate(adapter.full_params(merge.params()))["per_task"]
        return 100 * sum(per[t] / expert[t] for t in tasks) / len(tasks)

    opt = torch.optim.Adam([merge.lam], lr=args.lr)
    g = torch.Generator().manual_seed(0)
    print(f"step 0: normalized {normalized():.1f} % (task arithmetic, λ = 0.3)", flush=True)
    for step in range(1, args.steps + 1):
        picks = {t: torch.randint(0, len(data[t][0]), (args.batch,), generator=g) for t in tasks}
        logits = adapter.logits_many(merge.params(), {t: data[t][0][picks[t]] for t in tasks})
        loss = sum(F.cross_entropy(logits[t], data[t][1][picks[t]]) for t in tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}: loss {float(loss.detach()):.3f} · normalized {normalized():.1f} %", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
