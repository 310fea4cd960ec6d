"""``python -m studio lora bake | combine | convert | extract | inspect``."""

from __future__ import annotations

import argparse

from ..cli import print_json
from ..layout import detect_layout
from ..lora.apply import LoraAppliedSource
from ..lora.bake import LoraSpec, bake
from ..lora.combine import combine
from ..lora.convert import FORMATS, convert
from ..lora.extract import extract
from ..lora.network import detect_lora_family, read_lora
from ..sources import open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lora_command", metavar="{bake,combine,convert,extract,inspect}")
    sub.required = True

    b = sub.add_parser("bake", help="bake LoRAs into a checkpoint (exact, float32 ΔW)")
    b.add_argument("base", metavar="BASE", help="checkpoint: .safetensors/.ckpt file, diffusers or transformers folder")
    b.add_argument("out", metavar="OUT", help="output (.safetensors file, or a folder for folder inputs)")
    b.add_argument("--lora", action="append", required=True, metavar="FILE[:STRENGTH[:BLOCKS]]",
                   help="LoRA to bake (repeatable); strength defaults to 1; BLOCKS as for --blocks")
    b.add_argument("--blocks", metavar="SPEC",
                   help="per-block weights for every LoRA: a preset name (GRAD_V, …), 26 (SD1/SD2) or 20 (SDXL) "
                        "comma-separated values in SuperMerger order, or BLOCK=value pairs (\"IN=0,OUT=1,*=0.5\")")
    b.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="output dtype (default: the base's)")
    b.add_argument("--overwrite", action="store_true")

    c = sub.add_parser("combine", help="combine LoRAs into one (exact concat, or SVD with --rank)")
    c.add_argument("out", metavar="OUT")
    c.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT]")
    c.add_argument("--rank", type=int, help="re-factorise to this rank by SVD (default: exact concatenation)")
    c.add_argument("--conv-rank", type=int, help="rank for k×k conv modules when re-factorising")
    c.add_argument("--clamp-quantile", type=float, default=None, help="clamp factors at this quantile (e.g. 0.99)")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")

    v = sub.add_parser("convert", help="re-spell a LoRA for a diffusion transformer's module names, exactly (e.g. a "
                                       "diffusers Flux LoRA → kohya on BFL names: split q/k/v fused)")
    v.add_argument("lora", metavar="LORA")
    v.add_argument("out", metavar="OUT", help="output .safetensors")
    v.add_argument("--base", required=True, help="a model in the spelling to write (BFL or diffusers Flux, …)")
    v.add_argument("--format", choices=sorted(FORMATS), default="kohya",
                   help="kohya: lora_unet_<module>; diffusers: transformer.<module>.lora_A/lora_B")
    v.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    v.add_argument("--overwrite", action="store_true")

    e = sub.add_parser("extract", help="extract a LoRA from (TUNED − BASE) by SVD")
    e.add_argument("base", metavar="BASE")
    e.add_argument("tuned", metavar="TUNED")
    e.add_argument("out", metavar="OUT")
    e.add_argument("--rank", type=int, required=True)
    e.add_argument("--conv-rank", type=int, help="rank for k×k convs (default: --rank; 0 skips them)")
    e.add_argument("--clamp-quantile", type=float, default=None,
                   help="clamp the factors at this quantile of their values, as kohya's script does (e.g. 0.99); "
                        "default: exact (a rank-r delta extracted at rank r reproduces it)")
    e.add_argument("--min-diff", type=float, default=1e-6, help="skip modules whose |Δ| never exceeds this")
    e.add_argument("--format", choices=["kohya", "peft"], default="kohya")
    e.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="flavour, rank/alpha per module, block coverage (headers only)")
    i.add_argument("lora", metavar="LORA")
    i.add_argument("--base", help="check every module against this checkpoint and show block coverage")
    i.add_argument("--json", action="store_true")


def _cmd_bake(args) -> int:
    specs = [LoraSpec.parse(t) for t in args.lora]
    s = bake(args.base, args.out, specs, blocks=args.blocks, dtype=args.dtype, overwrite=args.overwrite)
    for lo in s["loras"]:
        print(f"baked {lo['lora']} ({lo['flavour']}, {lo['modules']} modules) × {lo['strength']:g}")
    print(f"{s['tensors_patched']} tensors changed → {s['output']}")
    return 0


def _cmd_combine(args) -> int:
    specs = [LoraSpec.parse(t) for t in args.lora]
    s = combine(args.out, [(sp.ref, sp.strength) for sp in specs], rank=args.rank, conv_rank=args.conv_rank,
                clamp_quantile=args.clamp_quantile, dtype=args.dtype, overwrite=args.overwrite)
    if args.json:
        print_json(s)
        return 0
    print(f"{s['method']}: {s['modules']} modules → {s['output']}")
    if s["method"] == "svd":
        print(f"relative Frobenius error overall: {s['overall_rel_error']:.4g}")
        for name, err in s["worst"]:
            print(f"  {err:.4g}  {name}")
    return 0


def _cmd_convert(args) -> int:
    s = convert(args.lora, args.base, args.out, fmt=args.format, dtype=args.dtype, overwrite=args.overwrite)
    print(f"{s['modules_in']} modules → {s['modules_out']} ({s['format']}, ranks {s['ranks']}) → {s['output']}")
    return 0


def _cmd_extract(args) -> int:
    s = extract(args.base, args.tuned, args.out, rank=args.rank, conv_rank=args.conv_rank,
                clamp_quantile=args.clamp_quantile, fmt=args.format, min_diff=args.min_diff, dtype=args.dtype,
                overwrite=args.overwrite)
    if args.json:
        print_json(s)
        return 0
    print(f"{s['modules']} modules ({s['format']}) → {s['output']}  ({s['unchanged_skipped']} unchanged skipped)")
    print(f"relative Frobenius error overall: {s['overall_rel_error']:.4g}")
    for name, err in s["worst"]:
        print(f"  {err:.4g}  {name}")
    return 0


def inspect_lora(lora_ref: str, base_ref: str | None = None) -> dict:
    net = read_lora(open_source(lora_ref))
    info = {"lora": lora_ref, "style": net.style, "flavour": net.flavour, "family": detect_lora_family(net),
            "modules": len(net.modules)}
    ranks: dict[str, int] = {}
    for m in net.modules.values():
        key = f"rank {m.rank} scale {m.scale:.4g}"
        ranks[key] = ranks.get(key, 0) + 1
    info["rank_scale_counts"] = ranks
    info["per_module"] = {n: {"algo": m.algo, "rank": m.rank, "alpha": m.alpha, "scale": m.scale,
                              "shape": m.delta_shape()} for n, m in net.modules.items()}
    if base_ref:
        base = open_source(base_ref)
        applied = LoraAppliedSource(base, [(net, 1.0, None)])
        layout = detect_layout(base)
        cov: dict[str, int] = {g: 0 for g in layout.groups}
        for key in applied.patches:
            g = layout.group_of(key)
            cov[g] = cov.get(g, 0) + 1
        info["block_coverage"] = {g: n for g, n in cov.items()}
        info["tensors_patched"] = len(applied.patches)
    return info


def _cmd_inspect(args) -> int:
    info = inspect_lora(args.lora, args.base)
    if args.json:
        print_json(info)
        return 0
    for k in ("lora", "style", "flavour", "family", "modules", "rank_scale_counts", "tensors_patched"):
        if k in info:
            print(f"{k}: {info[k]}")
    if "block_coverage" in info:
        print("block coverage (tensors changed): " +
              " ".join(f"{g}:{n}" for g, n in info["block_coverage"].items()))
    return 0


def run(args) -> int:
    cmd = {"bake": _cmd_bake, "combine": _cmd_combine, "convert": _cmd_convert, "extract": _cmd_extract, "inspect": _cmd_inspect}
    return cmd[args.lora_command](args)
