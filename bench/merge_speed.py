"""End-to-end merge speed and peak memory: `python -m studio merge` vs mergekit 0.1.5, measured in the same run.

    python bench/merge_speed.py [--params 200e6] [--methods task_arithmetic,ties,dare_ties] [--keep DIR]

Builds 4 Llama-shaped fp16 checkpoints (base + 3 fine-tunes = base + noise) of about --params parameters each,
then runs each method through both CLIs as subprocesses, so each peak RSS (os.wait4 → ru_maxrss) is that process's
own. Both read the same files from a warm page cache; both write fp16 output. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"task_arithmetic": {"weight": 0.3}, "ties": {"weight": 0.3, "density": 0.3},
          "dare_ties": {"weight": 0.3, "density": 0.3}, "linear": {"weight": 0.25}}


def llama_shapes(target: float) -> tuple[dict, dict]:
    hidden, inter, vocab, heads, kv = 1024, 2816, 32000, 16, 8
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((target - fixed) / per_layer))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False, "dtype": "float16", "hidden_act": "silu"}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv * head_dim, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    return cfg, shapes


def build_models(root: Path, target: float) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    cfg, shapes = llama_shapes(target)
    paths = []
    for m in range(4):
        path = root / ("base" if m == 0 else f"ft{m}")
        path.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(0)
        noise = torch.Generator().manual_seed(m)
        tensors = {}
        for k, s in shapes.items():
            t = torch.randn(s, generator=g) * 0.02
            if m:
                t += torch.randn(s, generator=noise) * 0.002
            tensors[k] = t.half()
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(cfg))
        paths.append(path)
        del tensors
    return paths


def run_measured(cmd: list[str], env=None) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-2000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=200e6)
    ap.add_argument("--methods", default="task_arithmetic")
    ap.add_argument("--keep", default=None, help="build the models here and keep them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="merge-bench-"))
    try:
        print(f"building 4 Llama-shaped fp16 checkpoints of ~{args.params / 1e6:.0f}M parameters in {root} …", flush=True)
        if not (root / "ft3" / "model.safetensors").exists():
            build_models(root, args.params)
        models = [root / n for n in ("base", "ft1", "ft2", "ft3")]
        try:
            import mergekit  # noqa: F401
            have_mk = shutil.which("mergekit-yaml") is not None
        except ImportError:
            have_mk = False
        rows = []
        for method in args.methods.split(","):
            recipe = {"merge_method": method, "base_model": str(models[0]),
                      "models": [{"model": str(m), "parameters": PARAMS[method]} for m in models[1:]],
                      "dtype": "float16", "seed": 0}
            if method == "linear":
                recipe.pop("base_model")
            rfile = root / f"{method}.yaml"
            import yaml

            rfile.write_text(yaml.safe_dump(recipe, sort_keys=False))
            out = root / f"out-studio-{method}"
            shutil.rmtree(out, ignore_errors=True)
            ours = run_measured([sys.executable, "-m", "studio", "merge", str(rfile), str(out), "--device", "cpu",
                                 "--quiet", "--overwrite"], env=dict(os.environ, PYTHONPATH=str(ROOT)))
            row = {"method": method, "studio_s": round(ours[0], 2), "studio_rss_mib": round(ours[1]),
                   "studio_ok": ours[2] == 0}
            if have_mk:
                mk_out = root / f"out-mergekit-{method}"
                shutil.rmtree(mk_out, ignore_errors=True)
                theirs = run_measured(["mergekit-yaml", str(rfile), str(mk_out), "--quiet", "--random-seed", "0"])
                row.update(mergekit_s=round(theirs[0], 2), mergekit_rss_mib=round(theirs[1]),
                           mergekit_ok=theirs[2] == 0, speedup=round(theirs[0] / ours[0], 2),
                           rss_ratio=round(ours[1] / theirs[1], 2))
                shutil.rmtree(mk_out, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.json:
            print(json.dumps(rows))
        else:
            print(f"\n{'method':<16}{'studio s':>10}{'studio MiB':>12}{'mergekit s':>12}{'mergekit MiB':>14}"
                  f"{'speed-up':>10}{'RSS ratio':>11}")
            for r in rows:
                print(f"{r['method']:<16}{r['studio_s']:>10}{r['studio_rss_mib']:>12}{r.get('mergekit_s', '-'):>12}"
                      f"{r.get('mergekit_rss_mib', '-'):>14}{r.get('speedup', '-'):>10}{r.get('rss_ratio', '-'):>11}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
