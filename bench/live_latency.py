"""Live-preview latency, measured through the session controller (what a slider release runs), not a browser.

1. Zoo slider release → updated preview numbers: median over 20 per-layer slider changes on the vision family
   (re-merge of the changed group + evaluation with the preview budget). Target < 300 ms on CPU.
2. Re-merging one layer of a synthetic 200M-parameter Llama-shaped model with ``LiveMerger`` (task arithmetic, one
   per-group change). Target < 50 ms on CPU.

    python bench/live_latency.py [--device cpu] [--updates 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def zoo_latency(updates: int, device: str):
    from studio.ui.catalog import Catalog
    from studio.ui.env import StudioEnv

    catalog = Catalog()
    name = catalog.default_family()
    if name is None:
        print("zoo slider release → preview: SKIPPED (no built zoo; run `python -m studio zoo build`)")
        return None
    env = StudioEnv(catalog, device=device)
    s = env.new_session(name)
    s.preview()  # first preview: loads the inputs and evaluates base and experts (cached afterwards)
    groups = s.layout().groups
    times, merge, evals = [], [], []
    for i in range(updates):
        g = groups[i % len(groups)]
        t0 = time.perf_counter()
        s.set_group_value(g, 0.2 + 0.05 * (i % 10))   # what the slider's release handler does …
        pv = s.preview()                               # … then re-merge + evaluate
        times.append(time.perf_counter() - t0)
        merge.append(pv.merge_seconds)
        evals.append(pv.eval_seconds)
    med = statistics.median(times) * 1000
    print(f"zoo slider release → preview ({name}, {len(groups)} groups, device {env.device}): median {med:.1f} ms "
          f"(merge {statistics.median(merge) * 1000:.1f} ms, evaluate {statistics.median(evals) * 1000:.1f} ms) "
          f"over {updates} updates; target 300 ms → {med / 300:.2f}× of target")
    return med


def llama_layer_latency(device: str, repeats: int = 7):
    from safetensors.torch import save_file

    from studio.engine.live import LiveMerger
    from studio.recipe import Recipe

    # Llama-shaped: hidden 1024, 11 layers, MLP 2816, vocab 32000 (untied head) → ≈ 0.20 B parameters
    hidden, layers, inter, vocab = 1024, 11, 2816, 32000
    g = torch.Generator().manual_seed(0)

    def model(scale):
        sd = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g) * scale,
              "lm_head.weight": torch.randn(vocab, hidden, generator=g) * scale,
              "model.norm.weight": torch.ones(hidden)}
        for i in range(layers):
            p = f"model.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                sd[p + f"self_attn.{n}.weight"] = torch.randn(hidden, hidden, generator=g) * scale
            sd[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g) * scale
            sd[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g) * scale
            sd[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g) * scale
            sd[p + "input_layernorm.weight"] = torch.ones(hidden)
            sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
        return sd

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for j in range(3):
            sd = model(0.02)
            n_params = sum(v.numel() for v in sd.values())
            path = Path(d) / f"m{j}.safetensors"
            save_file(sd, str(path))
            paths.append(str(path))
            del sd
        recipe = {"merge_method": "task_arithmetic", "base_model": paths[0],
                  "models": [{"model": p, "parameters": {"weight": 1.0}} for p in paths[1:]],
                  "parameters": {"lambda": 0.5}}
        t0 = time.perf_counter()
        live = LiveMerger(Recipe.from_dict(recipe), device=device)
        first = time.perf_counter() - t0
        times = []
        for i in range(repeats):
            recipe["parameters"]["lambda"] = {"*": 0.5, "L07": 0.3 + 0.05 * i}
            t0 = time.perf_counter()
            changed = live.update(Recipe.from_dict(recipe))
            times.append(time.perf_counter() - t0)
            assert len(changed) == 9, changed  # the one layer's 9 tensors
        med = statistics.median(times) * 1000
        # the same memory traffic as a bare torch loop, to read the figure against this machine's current load
        a, b = torch.randn(inter, hidden), torch.randn(inter, hidden)
        ref = []
        for _ in range(5):
            t0 = time.perf_counter()
            a.add_(b, alpha=0.3)
            ref.append(time.perf_counter() - t0)
        import os

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"  machine reference: one {inter}×{hidden} add_ takes {statistics.median(ref) * 1000:.1f} ms now "
              f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
        print(f"LiveMerger one-layer re-merge, Llama-shaped {n_params / 1e6:.0f}M parameters ({layers} layers, "
              f"device {live.device}): median {med:.1f} ms over {repeats} updates (first full merge "
              f"{first:.1f} s); target 50 ms → {med / 50:.2f}× of target")
        return med


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch CPU threads, as `python app.py --threads N` (default: torch's own choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    torch.set_grad_enabled(False)
    zoo_latency(args.updates, args.device)
    if not args.skip_llama:
        llama_layer_latency(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
