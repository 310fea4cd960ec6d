"""Diffusion previews at full size: a block slider → merged weights in the pipeline, a preview image, peak memory.

1. SD1.5-shaped: three ldm single files (random fp16 weights with the real SD1.5 key names and shapes), a linear merge
   with block weights, previewed in float32 on the CPU. Figures: building the pipeline, the first merge, attaching
   (binding / converting), one block slider → merged weights in the pipeline (``live.update`` + ``refresh``; target
   < 150 ms), a 256×256 4-step image, an input's image (``render_source``: render + the merge restored), and peak
   RSS against one float32 pipeline (target ≤ +25 %), split into anonymous memory and mapped input pages.
2. SDXL-shaped: two single files (fp16, ~6.9 GB each), previewed in float32 (``--sdxl-dtype``): open, merge,
   attach and render one 256×256 image; target peak RSS ≤ 16 GB. Skipped when the disk lacks room; the files are
   deleted afterwards.

Each scenario runs in its own process, so each peak is its own. Not a test: it prints figures.

    python bench/preview_sd.py [--dir /tmp/preview_sd_bench] [--skip-sdxl] [--keep] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2 ** 30


class MemoryWatch:
    """Peak RSS (total, anonymous, file-backed) of this process, sampled every 10 ms, per named phase. Past
    ``limit`` bytes of anonymous memory the process stops at once (the machine is shared: never push it to OOM)."""

    def __init__(self, limit: int | None = None):
        self.phase, self.peaks, self._stop, self.limit = "start", {}, False, limit
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                out[name] = int(value.split()[0]) * 1024
        return out

    def _run(self):
        while not self._stop:
            self.sample()
            time.sleep(0.01)

    def sample(self):
        cur = self.now()
        peak = self.peaks.setdefault(self.phase, dict.fromkeys(cur, 0))
        for k, v in cur.items():
            peak[k] = max(peak[k], v)
        if self.limit and cur.get("RssAnon", 0) > self.limit:
            print(json.dumps({"aborted": f"anonymous RSS {cur['RssAnon'] / GIB:.1f} GiB passed the limit "
                              f"{self.limit / GIB:.1f} GiB in phase {self.phase}", "peaks": self.peaks}), flush=True)
            os._exit(3)

    def enter(self, phase: str):
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> dict:
        self.sample()
        self._stop = True
        self._thread.join()
        return self.peaks


def write_inputs(folder: Path, family: str, n: int) -> list[Path]:
    """``n`` ldm single files of ``family`` at full size, fp16, random values (a 64 Mi-element pool read at per-file,
    per-tensor offsets: the values only have to be non-trivial and distinct per file)."""
    import torch

    from studio.output import write_safetensors
    from studio.sd.synth import ldm_table
    from studio.sources import TensorInfo

    table = ldm_table(family, tiny=False)
    infos = {k: TensorInfo(s, torch.float16 if dt.is_floating_point else dt) for k, (s, dt) in table.items()}
    paths = []
    for i in range(n):
        path = folder / f"{family}_{i}.safetensors"
        paths.append(path)
        if path.exists():
            continue
        pool = (torch.randn(1 << 26, generator=torch.Generator().manual_seed(i)) * 0.05).half()
        offset = [i * 7919]

        def fetch(k, pool=pool, offset=offset):
            info = infos[k]
            if not info.dtype.is_floating_point:
                return torch.arange(info.shape[-1]).reshape(info.shape).to(info.dtype) if k.endswith(
                    "position_ids") else torch.zeros(info.shape, dtype=info.dtype)
            offset[0] = (offset[0] + 104729) % pool.numel()
            reps = -(-(offset[0] + info.numel) // pool.numel())
            src = pool if reps == 1 else pool.repeat(reps)
            return src[offset[0]:offset[0] + info.numel].reshape(info.shape)

        write_safetensors(path, infos, fetch, {"format": "pt"})
    return paths


def child(args) -> dict:
    """One scenario in this process: figures as a dict."""
    import torch

    from studio.engine.live import LiveMerger
    from studio.preview import DiffusionPreviewer, ImageRequest
    from studio.recipe import Recipe
    from studio.sources import open_source

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    watch = MemoryWatch(int(args.rss_limit * GIB) if args.rss_limit else None)
    paths = [Path(p) for p in args.paths]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    blocks = ["IN04", "OUT03", "M00", "IN07", "OUT08", "IN01", "OUT05"]

    values = {"*": 0.4}  # block weights of the first model; the others share the rest

    def recipe(block=None, value=0.5):
        if block is not None:
            values[block] = value
        first = dict(values)
        rest = (1.0 - 0.4) / (len(paths) - 1)
        return Recipe.from_dict({"merge_method": "linear", "models": [
            {"model": str(paths[0]), "parameters": {"weight": first}},
            *[{"model": str(p), "parameters": {"weight": rest}} for p in paths[1:]]]})

    fig: dict = {"threads": torch.get_num_threads(), "dtype": args.dtype}
    t0 = time.perf_counter()
    watch.enter("build")
    p = DiffusionPreviewer(open_source(str(paths[0])), device="cpu", dtype=dtype)
    fig["build_s"] = time.perf_counter() - t0
    fig["pipeline_params"] = sum(sum(t.numel() for t in c.params().values()) for c in p.components)
    watch.enter("merge")
    t0 = time.perf_counter()
    live = LiveMerger(recipe(), device="cpu", out_dtype=dtype)
    fig["first_merge_s"] = time.perf_counter() - t0
    fig["memory_returns"] = live.memory_returns
    watch.enter("attach")
    t0 = time.perf_counter()
    p.attach(live)
    fig["attach_s"] = time.perf_counter() - t0
    fig["bound_share"] = p.bound_share
    fig["components"] = p.summary()["components"]
    watch.enter("sliders")
    times, merge_t, refresh_t, counts = [], [], [], []
    for i in range(args.updates):  # each update moves one block's slider (the others keep their values)
        r = recipe(blocks[i % len(blocks)], 0.5 + 0.05 * (i % 7))
        t0 = time.perf_counter()
        changed = live.update(r)
        t1 = time.perf_counter()
        p.refresh(changed)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        merge_t.append(t1 - t0)
        refresh_t.append(t2 - t1)
        counts.append(round(sum(live.state[k].numel() for k in changed) / 1e6, 1))
    fig["slider_ms_median"] = statistics.median(times) * 1000
    fig["slider_merge_ms_median"] = statistics.median(merge_t) * 1000
    fig["slider_refresh_ms_median"] = statistics.median(refresh_t) * 1000
    fig["slider_ms_all"] = [round(t * 1000) for t in times]
    fig["slider_mparams"] = counts
    watch.enter("render")
    req = ImageRequest(prompts=["a photograph of an astronaut riding a horse"], seeds=[0], steps=args.steps,
                       width=args.size, height=args.size)
    t0 = time.perf_counter()
    p.render(req)
    fig["render_s"] = time.perf_counter() - t0
    if args.source_render:
        watch.enter("render_source")
        t0 = time.perf_counter()
        p.render_source(open_source(str(paths[1])), req)
        fig["render_source_s"] = time.perf_counter() - t0
    peaks = watch.stop()
    fig["peaks"] = peaks
    fig["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del p, live
    # (after the peaks are taken) this machine now: the float32 accumulation of the inputs (fp16, in memory) for
    # the median slider's size, at most 100 M parameters
    n = min(int(statistics.median(counts) * 1e6), 100_000_000)
    a, xs = torch.zeros(n), [torch.randn(n).half() for _ in paths]
    ref = []
    for _ in range(3):
        t0 = time.perf_counter()
        for x in xs:
            a.add_(x, alpha=0.3)
        ref.append(time.perf_counter() - t0)
    fig["reference_ms"] = min(ref) * 1000
    fig["reference_mparams"] = n / 1e6
    del a, xs
    return fig


def run_child(family, paths, dtype, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", family, "--dtype", dtype, "--updates", str(extra.get("updates", 7)),
           "--steps", str(args.steps), "--size", str(args.size), "--rss-limit", str(args.rss_limit),
           "--paths", *map(str, paths)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if extra.get("source_render"):
        cmd.append("--source-render")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"{family} scenario failed (exit status {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, fig: dict, one_pipeline: int):
    gib = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    print(f"\n{name}: {fig['pipeline_params'] / 1e9:.3f} B pipeline parameters in {fig['dtype']} "
          f"({gib(one_pipeline)}), torch threads {fig['threads']}")
    print(f"  build pipeline (configs → empty modules) {fig['build_s']:.1f} s; first merge {fig['first_merge_s']:.1f} s; "
          f"attach {fig['attach_s']:.1f} s; bound share {fig['bound_share']:.2%}; freed memory returned "
          f"{fig['memory_returns']}× during the first merge")
    for comp, c in fig["components"].items():
        print(f"    {comp:15s} {c['parameters'] / 1e6:8.1f} M: bound {c['bound'] / max(c['parameters'], 1):.1%}, "
              f"converted {c['converted'] / 1e6:.1f} M")
    print(f"  block slider → merged weights in the pipeline: median {fig['slider_ms_median']:.0f} ms "
          f"(target 150 ms → {fig['slider_ms_median'] / 150:.2f}× of target) = re-merge (live.update) "
          f"{fig['slider_merge_ms_median']:.0f} ms + refresh {fig['slider_refresh_ms_median']:.1f} ms; "
          f"all {fig['slider_ms_all']} ms for {fig['slider_mparams']} M parameters re-merged")
    print(f"    machine reference: the same fp16 → fp32 accumulations in memory ({fig['reference_mparams']:.0f} M "
          f"parameters) take {fig['reference_ms']:.0f} ms now")
    print(f"  {fig.get('size', '')}preview image: {fig['render_s']:.1f} s"
          + (f"; an input's image (render + merge restored): {fig['render_source_s']:.1f} s"
             if "render_source_s" in fig else ""))
    top = max(v["VmRSS"] for v in fig["peaks"].values())
    print(f"  peak RSS {gib(top)} = {top / one_pipeline:.2f}× one {fig['dtype']} pipeline (target ≤ 1.25×); "
          f"ru_maxrss {gib(fig['ru_maxrss'])}")
    for phase, v in fig["peaks"].items():
        print(f"    {phase:14s} RSS {gib(v['VmRSS'])} (anonymous {gib(v['RssAnon'])}, mapped input pages "
              f"{gib(v['RssFile'])})")
    return top


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/preview_sd_bench")
    ap.add_argument("--skip-sd1", action="store_true")
    ap.add_argument("--skip-sdxl", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sdxl-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the SDXL preview's dtype (float32: CPUs without bf16 units run half precision ~100× slower)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--updates", type=int, default=7, help=argparse.SUPPRESS)
    ap.add_argument("--source-render", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--rss-limit", type=float, default=18.0, metavar="GIB",
                    help="stop a scenario whose anonymous RSS passes this (default 18 GiB)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; image {args.size}×{args.size}, "
          f"{args.steps} steps")
    try:
        if not args.skip_sd1:
            t0 = time.perf_counter()
            paths = write_inputs(d, "sd1", 3)
            print(f"SD1.5-shaped inputs: 3 × {paths[0].stat().st_size / GIB:.2f} GiB fp16 "
                  f"[written in {time.perf_counter() - t0:.0f} s]")
            fig = run_child("sd1", paths, "float32", args, updates=7, source_render=True)
            report("SD1.5-shaped, 3 checkpoints, linear with block weights", fig, 4 * fig["pipeline_params"])
        if not args.skip_sdxl:
            need = 2 * 7.2 * GIB
            if shutil.disk_usage(d).free < need + 4 * GIB:
                print(f"\nSDXL-shaped: SKIPPED (needs {need / GIB:.0f} GiB free on {d})")
            else:
                t0 = time.perf_counter()
                paths = write_inputs(d, "sdxl", 2)
                print(f"\nSDXL-shaped inputs: 2 × {paths[0].stat().st_size / GIB:.2f} GiB fp16 "
                      f"[written in {time.perf_counter() - t0:.0f} s]")
                fig = run_child("sdxl", paths, args.sdxl_dtype, args, updates=3)
                size = {"float32": 4, "bfloat16": 2}[args.sdxl_dtype]
                top = report("SDXL-shaped, 2 checkpoints, linear with block weights", fig,
                             size * fig["pipeline_params"])
                print(f"  SDXL target: peak RSS ≤ 16 GiB → {top / GIB:.2f} GiB")
                if not args.keep:
                    for p in paths:
                        p.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
