"""Quantized safetensors checkpoints presented as float32 weights under their plain names.

Formats (read from the stored tensors; neither bitsandbytes nor ComfyUI is needed):

* **Scaled fp8** (ComfyUI): ``X.weight`` in float8 (e4m3fn or e5m2) beside ``X.scale_weight``, a float scalar or one
  value per output row; the weight is ``X.weight.float() * X.scale_weight``. ``X.scale_input`` (the activation scale
  of fp8 matmuls) and the marker tensor ``scaled_fp8`` carry no weight: they are hidden. Plain fp8 tensors (no scale)
  need nothing here: the engine reads every input as float32.
* **bitsandbytes 4-bit** (NF4 or FP4, as transformers saves a ``Linear4bit``): ``X.weight`` holds the values of the
  flattened weight, two 4-bit codes per byte, the first value in the high nibble. The flattened weight is cut into
  blocks of ``blocksize`` values; value i is ``quant_map[code_i] * absmax[i // blocksize]``. ``X.weight.absmax``
  holds one scale per block, ``X.weight.quant_map`` the 16-entry codebook, and
  ``X.weight.quant_state.bitsandbytes__nf4`` (``__fp4``) the UTF-8 bytes of a JSON object as a uint8 tensor:
  ``quant_type``, ``blocksize``, ``dtype`` (the original's), ``shape`` (the original's). With double quantization
  (``compress_statistics``) ``absmax`` itself is 8-bit: ``X.weight.nested_absmax`` and ``X.weight.nested_quant_map``
  (a 256-entry codebook) hold its block scales and codebook, the JSON adds ``nested_blocksize``, ``nested_dtype`` and
  ``nested_offset``, and absmax j is ``nested_quant_map[absmax_j] * nested_absmax[j // nested_blocksize] +
  nested_offset``.
* **bitsandbytes int8** (LLM.int8, a ``Linear8bitLt``): ``X.weight`` int8 of the weight's shape, ``X.SCB`` the
  absolute maximum of each row; the weight is ``int8 * SCB[:, None] / 127``. ``X.weight_format`` (the layout the
  kernels used, row-major when saved) is hidden.

A folder's ``config.json`` ``quantization_config`` (``load_in_4bit``/``load_in_8bit``) is dropped from the config the
source presents, so a merge's written config describes the float weights it holds.
"""

from __future__ import annotations

import json

import torch

from ..errors import SourceError
from .base import TensorInfo, TensorSource

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
BNB4_STATE = ".quant_state.bitsandbytes__"
BNB4_PARTS = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
def unpack_state(blob: torch.Tensor, where: str) -> dict:
    """The JSON object bitsandbytes packs into a uint8 tensor beside a 4-bit weight."""
    try:
        state = json.loads(bytes(blob.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"the 4-bit quantization state is not JSON ({e})", where=where) from None
    if not isinstance(state, dict) or not {"blocksize", "shape"} <= set(state):
        raise SourceError("the 4-bit quantization state lacks blocksize or shape", where=where)
    return state


def blockwise(codes: torch.Tensor, code: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``code[codes[i]] * scales[i // blocksize]`` over the flattened ``codes`` (the last block may be short)."""
    values = code.float()[codes.reshape(-1).long()]
    n = values.numel()
    per_value = scales.float().reshape(-1).repeat_interleave(blocksize)[:n]
    return values * per_value


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """4-bit codes from bytes, the high nibble first, the first ``n`` of them."""
    b = packed.reshape(-1).view(torch.uint8)
    return torch.stack([b >> 4, b & 0x0F], dim=1).reshape(-1)[:n]


def dequantize_4bit(packed: torch.Tensor, parts: dict[str, torch.Tensor], state: dict) -> torch.Tensor:
    """A bitsandbytes NF4/FP4 weight as float32 (``parts``: absmax, quant_map, and the nested ones if any)."""
    shape = tuple(int(s) for s in state["shape"])
    n = 1
    for s in shape:
        n *= s
    absmax = parts["absmax"]
    if "nested_absmax" in parts:
        absmax = blockwise(absmax, parts["nested_quant_map"], parts["nested_absmax"], int(state["nested_blocksize"]))
        absmax = absmax + float(state.get("nested_offset", 0.0))
    codes = unpack_nibbles(packed, n)
    return blockwise(codes, parts["quant_map"], absmax, int(state["blocksize"])).reshape(shape)


def dequantize_int8(weight: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    """An LLM.int8 weight as float32: each row's int8 values times its absmax / 127."""
    return weight.float() * (scb.float().reshape(-1, *([1] * (weight.dim() - 1))) / 127.0)


def scaled_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A ComfyUI scaled-fp8 weight as float32 (a scalar scale, or one per output row)."""
    w = weight.float()
    s = scale.float()
    if s.numel() > 1:
        s = s.reshape(-1, *([1] * (w.dim() - 1)))
    return w * s


class DequantizedSource(TensorSource):
    """``inner`` with its quantized weights dequantized to float32 and their quantization tensors hidden.

    ``plan``: plain name → (how, stored names it needs), ``how`` one of "fp8", "nf4", "int8"."""

    def __init__(self, inner: TensorSource, plan: dict[str, tuple[str, tuple[str, ...]]], hidden: set[str],
                 shapes: dict[str, tuple[int, ...]], scheme: str):
        config = dict(inner.config) if isinstance(inner.config, dict) else inner.config
        if isinstance(config, dict):
            config.pop("quantization_config", None)
        super().__init__(ref=inner.ref, path=inner.path, kind=inner.kind, config=config,
                         metadata=dict(inner.metadata), folder=inner.folder)
        self.inner, self.plan, self.scheme = inner, plan, scheme
        for k in inner.keys():
            if k in hidden:
                continue
            self._index[k] = TensorInfo(shapes[k], torch.float32) if k in plan else inner.info(k)

    def _read(self, key):
        if key not in self.plan:
            return self.inner.get(key)
        how, stored = self.plan[key]
        where = f"{self.ref} ({key})"
        tensors = [self.inner.get(k) for k in stored]
        if how == "fp8":
            return scaled_fp8(*tensors)
        if how == "int8":
            return dequantize_int8(*tensors)
        packed, blob, *rest = tensors
        state = unpack_state(blob, where)
        parts = dict(zip([s.rsplit(".", 1)[-1] for s in stored[2:]], rest))
        out = dequantize_4bit(packed, parts, state)
        if tuple(out.shape) != self._index[key].shape:
            raise SourceError(f"the 4-bit weight unpacks to {tuple(out.shape)}", where=where)
        return out

    def release(self, key):
        for k in self.plan.get(key, (None, (key,)))[1]:
            self.inner.release(k)

    def close(self):
        self.inner.close()


def _bnb4_plan(src: TensorSource, plan, hidden, shapes) -> None:
    for k in src.keys():
        head, sep, qtype = k.partition(BNB4_STATE)
        if not sep or head not in src:
            continue
        parts = [head + p for p in BNB4_PARTS if head + p in src]
        plan[head] = ("nf4" if qtype == "nf4" else "fp4", (head, k, *parts))
        hidden.update([k, *parts])
        shapes[head] = tuple(int(s) for s in unpack_state(src.get(k), f"{src.ref} ({k})")["shape"])


def _int8_plan(src: TensorSource, plan, hidden, shapes) -> None:
    for k in src.keys():
        if not k.endswith(".SCB"):
            continue
        weight = k[:-len("SCB")] + "weight"
        if weight in src and src.info(weight).dtype == torch.int8:
            plan[weight] = ("int8", (weight, k))
            shapes[weight] = src.info(weight).shape
            hidden.add(k)
            if k[:-len("SCB")] + "weight_format" in src:
                hidden.add(k[:-len("SCB")] + "weight_format")


def _fp8_plan(src: TensorSource, plan, hidden, shapes) -> None:
    for k in src.keys():
        if k.endswith(".scale_input"):
            hidden.add(k)
        if not k.endswith(".scale_weight"):
            continue
        weight = k[:-len("scale_weight")] + "weight"
        if weight in src and src.info(weight).dtype in FP8:
            plan[weight] = ("fp8", (weight, k))
            shapes[weight] = src.info(weight).shape
            hidden.add(k)
    if "scaled_fp8" in src:
        hidden.add("scaled_fp8")


def dequantized(src: TensorSource) -> TensorSource:
    """``src`` itself when it holds no quantized weights; else a :class:`DequantizedSource` over it."""
    plan: dict = {}
    hidden: set[str] = set()
    shapes: dict = {}
    schemes = []
    for scheme, planner in (("bitsandbytes-4bit", _bnb4_plan), ("bitsandbytes-int8", _int8_plan),
                            ("scaled-fp8", _fp8_plan)):
        before = len(plan) + len(hidden)
        planner(src, plan, hidden, shapes)
        if len(plan) + len(hidden) > before:
            schemes.append(scheme)
    if not schemes:
        return src
    return DequantizedSource(src, plan, hidden, shapes, "+".join(schemes))
