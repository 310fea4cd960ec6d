"""Peak RSS and time of a streaming merge of two SDXL-shaped single-file checkpoints.

Builds two synthetic SDXL checkpoints (real ldm key names and shapes: UNet and VAE from diffusers' classes on the meta
device, CLIP-L and OpenCLIP-bigG tables; random fp16 data, written one tensor at a time), then runs
``python -m studio merge`` on a weighted-sum recipe in a subprocess and reports its peak RSS against the size of one
input. ``--scale 0.5`` shrinks every dimension ≥ 64 (names unchanged) when disk or time is short.

    python bench/sd_memory.py [--scale 1.0] [--dir /tmp/sd_bench] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scaled_table(scale: float):
    import torch

    from studio.sd.synth import ldm_table

    table = ldm_table("sdxl", tiny=False)
    if scale == 1.0:
        return table
    return {k: (tuple(max(1, round(d * scale)) if d >= 64 else d for d in s), dt) for k, (s, dt) in table.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/sd_memory_bench")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from studio.output import write_safetensors
    from studio.sources.base import TensorInfo

    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    table = scaled_table(args.scale)
    params = sum(torch.Size(s).numel() for s, _ in table.values())
    paths = []
    t0 = time.perf_counter()
    for i, name in enumerate(("a", "b")):
        p = d / f"sdxl_{name}.safetensors"
        if not p.exists():
            # random fp16 values from a 64 Mi-element pool at a per-file, per-tensor offset: the data only has to be
            # non-trivial, and drawing 3.5 B fresh normals would dominate the benchmark's run time
            pool = (torch.randn(1 << 26, generator=torch.Generator().manual_seed(i)) * 0.05).half()
            infos = {k: TensorInfo(s, torch.float16 if dt.is_floating_point else dt) for k, (s, dt) in table.items()}

            def fetch(k, pool=pool, off=[i * 7919]):
                info = infos[k]
                n = info.numel
                if not info.dtype.is_floating_point:
                    return torch.zeros(info.shape, dtype=info.dtype)
                off[0] = (off[0] + 104729) % pool.numel()
                reps = -(-(off[0] + n) // pool.numel())
                src = pool if reps == 1 else pool.repeat(reps)
                return src[off[0]:off[0] + n].reshape(info.shape)

            write_safetensors(p, infos, fetch, {"format": "pt"})
        paths.append(p)
    gen_s = time.perf_counter() - t0
    size = paths[0].stat().st_size
    recipe = d / "recipe.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {paths[0]}\n    parameters: {{weight: 0.7}}\n"
                      f"  - model: {paths[1]}\n    parameters: {{weight: 0.3}}\ndtype: float16\n")
    out = d / "merged.safetensors"
    if out.exists():
        out.unlink()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "studio", "merge", str(recipe), str(out), "--device", args.device],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # Linux: KiB, max over waited children
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return proc.returncode
    peak = peak_kib * 1024
    print(f"SDXL-shaped inputs: {len(table)} tensors, {params / 1e9:.2f} B params, {size / 2**30:.2f} GiB each (fp16)"
          f"{'' if args.scale == 1 else f', scale {args.scale}'}  [generated in {gen_s:.0f} s]")
    print(f"merge (linear 0.7/0.3, fp16 out): wall {wall:.1f} s, {2 * size / 2**30 / wall:.2f} GiB/s read")
    print(f"peak RSS of the merge process: {peak / 2**30:.2f} GiB = {peak / size:.1%} of one input "
          f"(SuperMerger needs ≥ 64 GB for SDXL, peers.md §1)")
    print(f"output: {out.stat().st_size / 2**30:.2f} GiB")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
