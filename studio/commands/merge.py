"""python -m studio merge RECIPE.yaml OUT_DIR [--set PATH=VALUE …] [--device auto|cpu|cuda] [--seed N] [--overwrite]
[--dry-run] [--allow-nonfinite] [--strict] [--quantize fp8|fp8-scaled|q8_0|q5_1|q5_0|q4_1|q4_0|f16|bf16]

RECIPE.yaml may hold several recipes (mergekit-multi's ``---`` documents, steps reading earlier steps by name): every
step is merged in turn and the one no step reads is written to OUT_DIR.

``--quantize``: the merge is computed and written in float32 to a scratch folder beside OUT, then written to OUT
quantized (fp8 safetensors, or one GGUF file: OUT ends ``.gguf``); the quantization error per tensor family is
reported (stderr, or ``quantization`` in ``--json``) and kept in the file's metadata (studio.output.quantize)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cli import print_json
from . import STRICT_HELP, load_recipe
from ..describe import human_bytes, human_count
from ..devices import parse_size
from ..engine import build_plan, check_merge_target, merge_steps, merge_to_disk, plan_steps, planned_output
from ..errors import StudioError
from ..engine.quantized import merge_quantized
from ..output.quantize import SCHEMES, check_scheme
from ..recipe import effective_lora_scales
from ..recipe.edit import with_assignments
from ..recipe.multi import MultiRecipe, load_multi


def add_arguments(p):
    p.add_argument("recipe", help="mergekit-style YAML recipe, or what carries one: a merged .safetensors or folder, "
                                  "a PNG with merge settings (the studio's, Model Mixer's); a YAML of several named "
                                  "recipes (mergekit-multi's) merges them in turn")
    p.add_argument("out", help="output folder (or a .safetensors file for single-file checkpoints)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="change one setting before merging (repeatable), e.g. models.0.weight=0.5, "
                        "parameters.lambda@L03=0.9, models.*.density=0.3; values are read as YAML")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=None, help="seed for random methods (DARE, DELLA)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    p.add_argument("--dry-run", action="store_true", help="read headers only and report what the merge would do")
    p.add_argument("--shard-size", default="5G", help="maximum shard size, e.g. 2G or 500M (default 5G)")
    p.add_argument("--json", action="store_true", help="print the plan summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge input tensors holding NaN/Inf values (refused by default: they spread through a merge)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--quantize", default=None, metavar="SCHEME",
                   help=f"write the float32 merge quantized: {', '.join(SCHEMES)} (GGUF types need OUT ending .gguf); "
                        "the error per tensor family is reported and stored in the file's metadata")


def print_summary(summary: dict, out=None) -> None:
    out = out or sys.stdout  # looked up per call: the stream may have been replaced since import
    print(f"method {summary['method']} · layout {summary['layout']} · {summary['tensors']} tensors "
          f"({summary['merged']} merged, {summary['tensors'] - summary['merged']} copied) · "
          f"output {human_bytes(summary['output_bytes'])}", file=out)
    if summary.get("layout_description"):
        print(f"layout: {summary['layout_description']}", file=out)
    if summary.get("num_layers") is not None:
        print(f"output layers: {summary['num_layers']}", file=out)
    # coverage: every tensor lies in exactly one group, so the rows add up to the totals above
    for g, v in summary["groups"].items():
        copied = v["tensors"] - v["merged"]
        label = "" if v.get("label", g) == g else f"  {v['label']}"
        print(f"  {g:>8}: {v['tensors']:5d} tensors ({v['merged']} merged{f', {copied} copied' if copied else ''})"
              f"  {human_count(v['parameters']):>9} params{label}", file=out)
    for w in summary["warnings"]:
        print(f"warning: {w}", file=out)
    for scale in summary.get("lora_scales", []):
        print(scale["explanation"], file=out)


def run(args) -> int:
    multi = load_multi(args.recipe, strict=args.strict)
    if multi is not None:
        return run_steps(args, multi)
    recipe = with_assignments(load_recipe(args.recipe, strict=args.strict), args.set)
    # a LoRA's strength meets the method's weight and λ: say what reaches the output (0.8 × λ 0.5 = 0.4)
    lora_scales = [s.to_dict() for s in effective_lora_scales(recipe)]
    if args.dry_run:
        plan = build_plan(recipe)
        check_merge_target(plan, Path(args.out), args.overwrite)
        if args.quantize:
            check_scheme(args.quantize, Path(args.out))
        else:
            planned_output(plan, Path(args.out))  # names what the target has no place for
        summary = dict(plan.summary(), lora_scales=lora_scales)
        print_json(summary) if args.json else (print("dry run: headers only, nothing written"), print_summary(summary))
        return 0
    t0 = time.perf_counter()
    if args.quantize:
        summary = merge_quantized_cli(recipe, args)
    else:
        summary = merge_to_disk(recipe, args.out, device=args.device, seed=args.seed, overwrite=args.overwrite,
                                progress=not args.quiet, shard_bytes=parse_size(args.shard_size),
                                allow_nonfinite=args.allow_nonfinite)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["lora_scales"] = lora_scales
    if args.json:
        print_json(summary)
    else:
        print_summary(summary)
        print(f"wrote {args.out} in {summary['seconds']:.1f} s")
    return 0


def merge_quantized_cli(recipe, args) -> dict:
    summary = merge_quantized(recipe, args.out, args.quantize, overwrite=args.overwrite, device=args.device,
                              seed=args.seed, progress=not args.quiet, shard_bytes=parse_size(args.shard_size),
                              allow_nonfinite=args.allow_nonfinite)
    print_quantization(summary["quantization"])
    return summary


def print_quantization(report: dict) -> None:
    """The quantization error per tensor family on stderr (stdout may carry --json)."""
    overall = report["overall"]
    print(f"quantized {report['scheme']}: {overall['tensors']} tensors, relative error "
          f"{overall['relative_error']:.3e}, max |error| {overall['max_abs_error']:.3e}", file=sys.stderr)
    for fam, row in report["families"].items():
        print(f"  {row['relative_error']:.3e}  {row['max_abs_error']:.3e}  {fam}", file=sys.stderr)
    if "tokenizer" in report and report["tokenizer"] is None:
        print("note: no tokenizer embedded (the model folder has none the gguf package reads: a Llama tokenizer.json, "
              "a byte-level BPE or a SentencePiece tokenizer.model); llama.cpp needs one", file=sys.stderr)


def run_steps(args, multi: MultiRecipe) -> int:
    """A multi-step recipe: every step planned (``--dry-run``) or merged in turn, each reported under its label."""
    if args.set:
        raise StudioError("--set changes one recipe, and this file holds several", where=args.recipe,
                          hint="edit the step in the file")
    if args.quantize:
        raise StudioError("--quantize writes one recipe's merge, and this file holds several", where=args.recipe,
                          hint="merge the steps, then merge the last one again with --quantize")
    for step in multi.steps:
        for warning in step.recipe.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    # with --json, stdout carries the JSON alone
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.dry_run:
        steps = [dict(sp.plan.summary(), step=sp.label,
                      lora_scales=[s.to_dict() for s in effective_lora_scales(sp.step.recipe)])
                 for sp in plan_steps(multi, Path(args.out), args.overwrite)]
        if args.json:
            print_json({"steps": steps})
        else:
            print(f"dry run: headers only, nothing written ({len(steps)} steps)")
            for summary in steps:
                print(summary["step"])
                print_summary(summary)
        return 0
    t0 = time.perf_counter()
    steps = merge_steps(multi, args.out, device=args.device, seed=args.seed, overwrite=args.overwrite,
                        progress=not args.quiet, shard_bytes=parse_size(args.shard_size),
                        allow_nonfinite=args.allow_nonfinite, announce=say)
    for summary, step in zip(steps, multi.steps):
        summary["lora_scales"] = [s.to_dict() for s in effective_lora_scales(step.recipe)]
    seconds = round(time.perf_counter() - t0, 3)
    if args.json:
        print_json({"steps": steps, "seconds": seconds})
    else:
        for summary in steps:
            print(summary["step"])
            print_summary(summary)
        print(f"wrote {args.out} in {seconds:.1f} s ({len(steps)} steps)")
    return 0
