"""Choosing the compute device: `auto` means CUDA when available."""

import ctypes

import psutil
import torch

from .errors import StudioError


def resolve_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StudioError("CUDA was requested but no CUDA device is available", hint="use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise StudioError(f"unknown device {name!r}", hint="use auto, cpu or cuda")


DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A dtype name → torch dtype; None (also "", "keep", "auto") → None: keep each tensor's stored dtype."""
    if name in (None, "", "keep", "auto"):
        return None
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise StudioError(f"unknown dtype {name!r}", hint="use float32, float16 or bfloat16 (or fp32, fp16, bf16)"
                          ) from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, str(dtype).replace("torch.", ""))


def parse_size(text: str) -> int:
    """``2G``, ``500M``, ``64K`` or a number of bytes → bytes."""
    text = str(text).strip().upper().rstrip("B")
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    try:
        if text and text[-1] in mult:
            return int(float(text[:-1]) * mult[text[-1]])
        return int(text)
    except ValueError:
        raise StudioError(f"bad size {text!r}", hint="use e.g. 2G, 500M or a number of bytes") from None


def memory_use(device: str | torch.device = "cpu") -> dict[str, int]:
    """This process's memory now: ``ram`` (resident bytes), ``ram_total`` (the machine's), and on a CUDA device
    ``vram`` (bytes allocated by torch) and ``vram_total``."""
    out = {"ram": psutil.Process().memory_info().rss, "ram_total": psutil.virtual_memory().total}
    device = torch.device(device)
    if device.type == "cuda":
        out["vram"] = torch.cuda.memory_allocated(device)
        out["vram_total"] = torch.cuda.get_device_properties(device).total_memory
    return out



TRIM_EVERY = 256 << 20  # bytes of tensors allocated or freed between two returns of freed memory to the system


def return_freed_memory() -> int:
    """Hand the C heap's free pages back to the system; returns 0 (bytes freed since). glibc keeps freed blocks
    below its mmap threshold (up to 32 MiB) in the process, so a model's worth of tensors allocated and freed one by
    one — a first merge's temporaries, the merger's own copies as a pipeline binds them — would otherwise stay in
    RSS beside the model. No-op without glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        pass
    return 0
