"""Header-only reports: what a model is, and what does not line up between several."""

from __future__ import annotations

from .layout import detect_layout
from .layout.sd import diffusion_family
from .sources import TensorSource


def describe(src: TensorSource) -> dict:
    """Kind, architecture, parameter count, dtypes and tensor count, from headers and config files only."""
    cfg = src.config or {}
    family = diffusion_family(src)
    layout = detect_layout(src)
    info = {
        "ref": src.ref, "kind": src.kind, "architecture": architecture(src) or family or "unknown", "family": family,
        "parameters": src.num_parameters, "tensors": len(src), "bytes": src.total_bytes,
        "dtypes": src.dtype_counts(), "layout": layout.name, "groups": len(layout.groups),
        "layout_description": layout.description,
    }
    for field in ("vocab_size", "num_hidden_layers", "hidden_size", "model_type"):
        if field in cfg:
            info[field] = cfg[field]
    return info


def architecture(src: TensorSource) -> str | None:
    """The architecture a model's files name: a PEFT adapter's config, ``config.json``'s ``architectures`` or
    diffusers' ``_class_name``, else the safetensors metadata's SAI ModelSpec ``modelspec.architecture`` (real
    SDXL/SD3 files and the zoo's backbones carry it); None when nothing names one."""
    cfg = src.config or {}
    if src.kind == "peft-lora":
        return f"PEFT {cfg.get('peft_type', 'LORA')} adapter (r={cfg.get('r')}, alpha={cfg.get('lora_alpha')})"
    if cfg.get("architectures"):
        return cfg["architectures"][0]
    return cfg.get("_class_name") or (src.metadata or {}).get("modelspec.architecture")


def compare(sources: list[TensorSource]) -> dict:
    """What does not line up against the first source: missing / extra keys, shape mismatches, vocab sizes."""
    ref = sources[0]
    ref_keys = set(ref.keys())
    report = []
    for src in sources[1:]:
        keys = set(src.keys())
        shapes = [
            {"key": k, "expected": list(ref.info(k).shape), "got": list(src.info(k).shape)}
            for k in sorted(ref_keys & keys) if ref.info(k).shape != src.info(k).shape
        ]
        entry = {"ref": src.ref, "missing": sorted(ref_keys - keys), "extra": sorted(keys - ref_keys),
                 "shape_mismatches": shapes}
        v0, v1 = (ref.config or {}).get("vocab_size"), (src.config or {}).get("vocab_size")
        if v0 is not None and v1 is not None and v0 != v1:
            entry["vocab_size"] = {"expected": v0, "got": v1}
        entry["compatible"] = not (entry["missing"] or shapes)
        report.append(entry)
    return {"reference": ref.ref, "against": report}


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
