"""The LLM preview at full size: three Llama-3.2-1B-shaped checkpoints (random bf16 weights), task arithmetic, live.

Builds a base and two fine-tunes with Llama-3.2-1B's published shape (hidden 2048, 16 layers, 32 heads / 8 KV heads,
MLP 8192, vocabulary 128256, tied embeddings; ≈ 1.24 B parameters, ≈ 2.5 GB each in bf16) and a word-level tokenizer
over the same vocabulary, then measures in a fresh process (so its peak RSS is the preview's alone):

1. the first full merge (``LiveMerger``) and ``LLMPreviewer.attach`` (the merged tensors become the model's
   parameters);
2. one layer slider: ``live.update`` with one layer's weight changed + ``previewer.refresh`` → the new weights are in
   the model (median over ``--updates``); target < 100 ms;
3. 32 greedy tokens from the merge (``previewer.render``);
4. peak RSS against one float32 copy of the model; target ≤ 1.25×;
5. an input model rendered in the same modules (``render_source``: load, 32 tokens, merge restored).

    python bench/preview_llm.py [--device cpu|cuda|auto] [--dtype float32] [--dir /tmp/preview_llm_bench] [--keep]

The checkpoints are written to ``--dir`` (≈ 7.5 GB) and deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Llama-3.2-1B's config.json (the published shape; the weights here are random)
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
          "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 131072,
          "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "bos_token_id": 128000,
          "eos_token_id": 128001, "torch_dtype": "bfloat16",
          "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
LAYER = 7
PROMPT = " ".join(f"t{i}" for i in (128000, 791, 6864, 315, 9822, 374, 12366, 13))


def tensor_table() -> dict[str, tuple[int, ...]]:
    h, inter, kv = CONFIG["hidden_size"], CONFIG["intermediate_size"], 8 * CONFIG["head_dim"]
    table = {"model.embed_tokens.weight": (CONFIG["vocab_size"], h)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        table |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                  p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                  p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                  p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                  p + "mlp.down_proj.weight": (h, inter)}
    table["model.norm.weight"] = (h,)
    return table


def build(folder: Path, index: int) -> None:
    """One checkpoint: the base (index 0) or base + a small per-model delta (a fine-tune), in bf16, with its config
    and tokenizer. Values come from a shared pool of normals at per-tensor offsets (drawing 3.7 B fresh normals
    would dominate the run; the data only has to be non-trivial)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from studio.output import write_json, write_safetensors
    from studio.sources.base import TensorInfo

    if (folder / "model.safetensors").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    pool = torch.randn(1 << 25, generator=torch.Generator().manual_seed(0)) * 0.02
    delta = torch.randn(1 << 25, generator=torch.Generator().manual_seed(100 + index)) * 0.002
    table = tensor_table()
    offsets = {k: (i * 7919 * 131) % pool.numel() for i, k in enumerate(table)}

    def take(src, off, n):
        reps = -(-(off + n) // src.numel())
        return (src if reps == 1 else src.repeat(reps))[off:off + n]

    def fetch(key):
        shape = table[key]
        n = torch.Size(shape).numel()
        if len(shape) == 1:  # RMSNorm scales
            t = torch.ones(n)
        else:
            t = take(pool, offsets[key], n).clone()
        if index:
            t.add_(take(delta, offsets[key], n))
        return t.reshape(shape).to(torch.bfloat16)

    write_json(folder / "config.json", CONFIG)
    words = {f"t{i}": i for i in range(CONFIG["vocab_size"])}
    tok = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t128000", eos_token="t128001",
                            unk_token="t0").save_pretrained(folder)
    infos = {k: TensorInfo(s, torch.bfloat16) for k, s in table.items()}
    write_safetensors(folder / "model.safetensors", infos, fetch, {"format": "pt"})  # last: its presence = complete


def rss(field: str = "VmRSS") -> int:
    """Bytes of this process's resident memory (VmRSS now, VmHWM the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(folders: list[str], device: str, dtype_name: str, updates: int, tokens: int) -> dict:
    """The measured run (a fresh process): figures as a dict."""
    from studio.devices import parse_dtype
    from studio.engine.live import LiveMerger
    from studio.preview import LLMPreviewer, TextRequest
    from studio.recipe import Recipe
    from studio.sources import open_source

    torch.set_grad_enabled(False)
    dtype = parse_dtype(dtype_name)
    importlib.import_module("transformers")  # the previewer imports it anyway: counted in the baseline, not the model

    out = {"baseline_rss": rss()}

    def recipe(layer_weight: float):
        return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": folders[0],
                                 "models": [{"model": folders[1], "parameters": {
                                     "weight": {"*": 0.5, f"L{LAYER:02d}": layer_weight}}},
                                            {"model": folders[2], "parameters": {"weight": 0.5}}]})

    t0 = time.perf_counter()
    pv = LLMPreviewer(open_source(folders[0]), device, dtype)
    out["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    live = LiveMerger(recipe(0.5), device=device, out_dtype=dtype)
    out["first_merge_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pv.attach(live)
    out["attach_s"] = time.perf_counter() - t0
    out["device"] = str(live.device)
    out["resident_bytes"] = live.resident_bytes
    out["params"] = sum(p.numel() for p in pv.model.parameters())
    ptrs = {n: p.data_ptr() for n, p in pv.model.named_parameters()}
    req = TextRequest(prompts=[PROMPT], max_new_tokens=tokens)
    pv.render(TextRequest(prompts=[PROMPT], max_new_tokens=2))  # warm-up (kernels, allocator)
    times = []
    for i in range(updates):
        t0 = time.perf_counter()
        changed = live.update(recipe(0.55 + 0.05 * i))
        pv.refresh(changed)
        if live.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert len(changed) == 9 and all(k.startswith(f"model.layers.{LAYER}.") for k in changed), changed
    assert {n: p.data_ptr() for n, p in pv.model.named_parameters()} == ptrs  # written in place
    key = f"model.layers.{LAYER}.mlp.up_proj.weight"
    assert pv.model.get_parameter(key).data_ptr() == live.state[key].data_ptr()
    out["slider_ms"] = [t * 1000 for t in times]
    t0 = time.perf_counter()
    res = pv.render(req)
    out["generate_s"] = time.perf_counter() - t0
    out["generated_words"] = len(res["samples"][PROMPT].split())
    out["peak_rss"] = rss("VmHWM")
    out["rss_after"] = rss()
    if device != "cpu" and torch.cuda.is_available():
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    t0 = time.perf_counter()
    other = pv.render_source(open_source(folders[1]), req)
    out["render_source_s"] = time.perf_counter() - t0
    out["peak_rss_with_source"] = rss("VmHWM")
    again = pv.render(req)
    out["restored"] = again["samples"] == res["samples"] and other["samples"] != res["samples"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/preview_llm_bench")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="the preview's dtype (float32, bfloat16, float16)")
    ap.add_argument("--updates", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = Path(args.dir)
    folders = [str(d / name) for name in ("base", "ft1", "ft2")]
    if args.child:
        print(json.dumps(child(folders, args.device, args.dtype, args.updates, args.tokens)))
        return 0
    t0 = time.perf_counter()
    for i, f in enumerate(folders):
        build(Path(f), i)
    gen_s = time.perf_counter() - t0
    size = (d / "base" / "model.safetensors").stat().st_size
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", "--dir", str(d), "--device", args.device, "--dtype", args.dtype,
           "--updates", str(args.updates), "--tokens", str(args.tokens)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    fp32 = r["params"] * 4
    gib = 2 ** 30
    slider = statistics.median(r["slider_ms"])
    a, b = torch.randn(8192, 2048), torch.randn(8192, 2048)
    ref = []
    for _ in range(5):
        t1 = time.perf_counter()
        a.add_(b, alpha=0.3)
        ref.append(time.perf_counter() - t1)
    print(f"Llama-3.2-1B-shaped: {r['params'] / 1e9:.3f} B parameters, 3 checkpoints of {size / gib:.2f} GiB (bf16)"
          f" [built in {gen_s:.0f} s]; preview {args.dtype} on {r['device']} "
          f"(inputs resident: {r['resident_bytes'] / gib:.2f} GiB); torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}; one 8192×2048 add_ takes {statistics.median(ref) * 1000:.1f} ms")
    print(f"model from config.json {r['build_s']:.2f} s; first full merge {r['first_merge_s']:.1f} s; "
          f"attach {r['attach_s'] * 1000:.0f} ms")
    print(f"one layer slider → weights in the model: median {slider:.1f} ms over {len(r['slider_ms'])} updates "
          f"(min {min(r['slider_ms']):.1f}, max {max(r['slider_ms']):.1f}); target 100 ms → "
          f"{slider / 100:.2f}× of target")
    print(f"{args.tokens} greedy tokens: {r['generate_s']:.2f} s ({args.tokens / r['generate_s']:.1f} tokens/s)")
    print(f"peak RSS {r['peak_rss'] / gib:.2f} GiB (process after imports {r['baseline_rss'] / gib:.2f} GiB) vs one "
          f"fp32 model {fp32 / gib:.2f} GiB → {r['peak_rss'] / fp32:.2f}× (target 1.25×); above the imports: "
          f"{(r['peak_rss'] - r['baseline_rss']) / fp32:.2f}×")
    if "cuda_peak" in r:
        print(f"CUDA peak allocated {r['cuda_peak'] / gib:.2f} GiB")
    print(f"input model in the same modules (load + {args.tokens} tokens + merge restored): "
          f"{r['render_source_s']:.1f} s; peak RSS then {r['peak_rss_with_source'] / gib:.2f} GiB "
          f"({r['peak_rss_with_source'] / fp32:.2f}×); merge restored: {r['restored']}")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
