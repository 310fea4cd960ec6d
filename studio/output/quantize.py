"""Quantized outputs: a float32 merge written as fp8 safetensors (plain, or "scaled" as ComfyUI reads it) or as GGUF
(``Q8_0``, ``Q5_1``, ``Q5_0``, ``Q4_1``, ``Q4_0``, ``F16``, ``BF16``: the types the gguf package can quantize that are
worth writing), with the quantization error measured against the float32 tensors and written into the file.

What is quantized: floating tensors of two or more dims (for GGUF, whose rows split into whole blocks). Norms,
biases and other vectors stay float32, as llama.cpp's converter keeps them; integer tensors keep their type.

* ``fp8``: ``float8_e4m3fn``, values beyond ±448 clamped (the format has no infinity).
* ``fp8-scaled``: per weight (a name ending ``weight``; other tensors stay float32), ``X.scale_weight`` = max|w| / 448 (float32 scalar) and ``X.weight`` = w / scale in
  e4m3fn, plus the empty ``scaled_fp8`` marker tensor ComfyUI looks for; ``w ≈ X.weight.float() * X.scale_weight``.
* GGUF: a llama-family transformers merge (config ``model_type`` llama, mistral, qwen2, qwen3) is written with
  llama.cpp's tensor names, its q/k rows permuted as llama.cpp's converter does and its hyperparameters as GGUF
  metadata, and its tokenizer embedded as llama.cpp reads it (the gguf package's vocabulary readers: a Llama
  byte-fallback ``tokenizer.json``, a GPT-2-style byte-level BPE, or a SentencePiece ``tokenizer.model``; merges,
  special tokens and the chat template; rows beyond the tokenizer padded with unused ``[PADn]`` tokens, as llama.cpp's
  converter does; a tokenizer none of them reads is reported, not guessed); any other model keeps its tensor names, and a diffusion
  model's ``general.architecture`` is the name city96's ComfyUI-GGUF loader accepts for its family (``flux``,
  ``sdxl``, ``sd3``, ``wan``, ``qwen_image`` …; "studio" for a model it has no name for). Tensors of more
  than 4 dims (ggml's limit) are stored flattened with ``comfy.gguf.orig_shape.NAME``, as city96's ComfyUI-GGUF does.

Errors, per tensor family (the name with its layer numbers replaced by ``*``) and overall: the relative Frobenius
error ‖q − w‖ / ‖w‖ and the largest |q − w|, where q is what a reader dequantizes. They go into the file's metadata
(safetensors ``__metadata__`` / GGUF key ``studio.quantization_error``, JSON) and are returned for the caller to show.

Quantizing is one pass: each tensor is quantized once, its stored form spilled to a scratch safetensors file beside
the target while its error is measured, and the final file (whose header carries the errors) is then written from
the spill. Memory stays at the tensors in flight.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import StudioError
from ..layout.sd import base_family, diffusion_family
from ..sources import TensorInfo, TensorSource, open_source
from ..sources.gguf_file import LLM_ARCHES, MODEL_TYPE_ARCH, ORIG_SHAPE, llama_cpp_name, rotary_permute
from ..sources.safetensors_file import SafetensorsFile
from .safetensors_writer import write_safetensors
from .side_files import copy_non_weight_files, is_single_file, recipe_path
from .target import AtomicTarget, atomic_files, write_json

T = gguf.GGMLQuantizationType
GGUF_TYPES = {"q8_0": T.Q8_0, "q5_1": T.Q5_1, "q5_0": T.Q5_0, "q4_1": T.Q4_1, "q4_0": T.Q4_0, "f16": T.F16,
              "bf16": T.BF16}
SCHEMES = ["fp8", "fp8-scaled", *GGUF_TYPES]
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
LAYER_NUMBER = re.compile(r"(?<=\.)\d+(?=\.)")
GGUF_MAX_DIMS = 4
NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32, torch.int8: np.int8, torch.int16: np.int16,
                torch.int32: np.int32, torch.int64: np.int64}


def check_scheme(scheme: str, target: Path) -> str:
    """``scheme`` lower-cased, after checking it names a scheme and fits the target (GGUF: a ``.gguf`` file)."""
    name = str(scheme).lower()
    if name not in SCHEMES:
        raise StudioError(f"unknown quantization {scheme!r}", where="--quantize", hint=f"one of {', '.join(SCHEMES)}")
    if name in GGUF_TYPES and Path(target).suffix != ".gguf":
        raise StudioError(f"{name} is written as one GGUF file", where=str(target), hint="give an output ending .gguf")
    if name not in GGUF_TYPES and Path(target).suffix == ".gguf":
        raise StudioError(f"{name} is written as safetensors, not GGUF", where=str(target),
                          hint="give a folder or a .safetensors file, or a GGUF type (q8_0, q4_0 …)")
    return name


def family(name: str) -> str:
    """A tensor's family: its name with layer numbers as ``*`` (``model.layers.*.mlp.up_proj.weight``)."""
    return LAYER_NUMBER.sub("*", name)


@dataclass
class ErrorTally:
    """Squared error, squared norm and largest absolute error per family, and over all quantized tensors."""

    families: dict[str, list[float]] = field(default_factory=dict)  # family → [Σ err², Σ w², max |err|, tensors]

    def add(self, name: str, exact: torch.Tensor, approx: torch.Tensor) -> None:
        exact = exact.float().reshape(-1)
        diff = approx.float().reshape(-1) - exact
        if diff.numel():  # float32 norms (pairwise sums): a report's precision, at a fraction of float64's cost
            self._count(family(name), float(torch.linalg.vector_norm(diff)) ** 2,
                        float(torch.linalg.vector_norm(exact)) ** 2, float(diff.abs().max()), 1)
        else:
            self._count(family(name), 0.0, 0.0, 0.0, 1)

    def absorb(self, other: "ErrorTally") -> None:
        """Add another tally's sums (one shard's) to this one."""
        for fam, row in other.families.items():
            self._count(fam, *row)

    def _count(self, fam: str, sq_err: float, sq_ref: float, max_abs: float, tensors: int) -> None:
        row = self.families.setdefault(fam, [0.0, 0.0, 0.0, 0])
        row[0] += sq_err
        row[1] += sq_ref
        row[2] = max(row[2], max_abs)
        row[3] += tensors

    @staticmethod
    def _entry(sq_err, sq_ref, max_abs, count) -> dict:
        rel = math.sqrt(sq_err / sq_ref) if sq_ref > 0 else (0.0 if sq_err == 0 else math.inf)
        return {"relative_error": rel, "max_abs_error": max_abs, "tensors": count}

    def summary(self) -> dict:
        rows = list(self.families.values())
        total = [sum(r[0] for r in rows), sum(r[1] for r in rows), max((r[2] for r in rows), default=0.0),
                 sum(r[3] for r in rows)]
        return {"overall": self._entry(*total),
                "families": {f: self._entry(*r) for f, r in sorted(self.families.items())}}


# -- per-tensor quantizers: (stored tensors under their names, what a reader dequantizes) ----------------------------
def fp8_tensors(name: str, w: torch.Tensor, scaled: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if not scaled:
        q = w.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return {name: q}, q.float()
    peak = float(w.abs().max())
    scale = torch.tensor(peak / FP8_MAX if peak > 0 else 1.0, dtype=torch.float32)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {name: q, name[:-len("weight")] + "scale_weight": scale}, q.float() * scale


def gguf_array(w: torch.Tensor, qtype) -> tuple[np.ndarray, np.ndarray]:
    """(stored blocks as the gguf package lays them out, their dequantization) of a 2+-dim float32 tensor."""
    a = w.detach().cpu().float().numpy()
    q = gguf.quants.quantize(a, qtype)
    approx = gguf.quants.dequantize(q, qtype)
    return q.view(np.uint8), approx  # (F16 comes back as float16 values: its bytes are its blocks)


# -- the llama.cpp view of a transformers merge ----------------------------------------------------------------------
def llama_cpp_layout(config: dict | None) -> tuple[str, dict] | None:
    """(GGUF architecture, metadata setters) for a llama-family config; None for any other model."""
    if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPE_ARCH:
        return None
    heads = config["num_attention_heads"]
    rope = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    kv = {"add_block_count": config["num_hidden_layers"], "add_embedding_length": config["hidden_size"],
          "add_head_count": heads, "add_head_count_kv": config.get("num_key_value_heads") or heads,
          "add_feed_forward_length": config["intermediate_size"],
          "add_layer_norm_rms_eps": float(config.get("rms_norm_eps", 1e-6)), "add_rope_freq_base": float(rope),
          "add_context_length": config.get("max_position_embeddings", 2048), "add_vocab_size": config["vocab_size"]}
    if config.get("head_dim"):
        kv["add_key_length"] = kv["add_value_length"] = config["head_dim"]
    return MODEL_TYPE_ARCH[config["model_type"]], kv


# the gguf package's readers of a transformers tokenizer folder, in the order llama.cpp's converter tries them; each
# raises FileNotFoundError when the folder holds another kind
VOCABS = (gguf.vocab.LlamaHfVocab, gguf.vocab.BpeVocab, gguf.vocab.SentencePieceVocab)


def add_tokenizer(writer: "gguf.GGUFWriter", folder: Path | None, n_vocab: int) -> str | None:
    """Embed the tokenizer of a transformers folder; returns its kind, or None when there is none it can read."""
    if folder is None:
        return None
    for reader in VOCABS:
        try:
            vocab = reader(Path(folder))
        except (FileNotFoundError, ValueError, KeyError):
            continue
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        for i in range(len(tokens), n_vocab):  # embedding rows no token uses (a padded vocabulary)
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model(vocab.tokenizer_model)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.vocab.SpecialVocab(Path(folder), load_merges=reader is gguf.vocab.BpeVocab,
                                n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return vocab.name
    return None


class _Spill:
    """Stored forms computed once, measured, and kept in a scratch safetensors file until the final file is written."""

    def __init__(self, src: TensorSource, scheme: str, tally: ErrorTally, layout):
        self.src, self.scheme, self.tally, self.layout = src, scheme, tally, layout
        self.infos: dict[str, TensorInfo] = {}
        self.origin: dict[str, str] = {}  # stored name → the source tensor it comes from
        self.gguf: dict[str, tuple] = {}  # stored name → (GGUF type, shape in torch order)
        for name in src.keys():
            info = src.info(name)
            for stored, sinfo in self._planned(name, info).items():
                self.infos[stored] = sinfo
                self.origin[stored] = name
        self._pending: dict[str, torch.Tensor] = {}

    def _planned(self, name: str, info: TensorInfo) -> dict[str, TensorInfo]:
        """The stored tensors of ``name``, shape and dtype known before anything is computed."""
        floating = info.dtype.is_floating_point and len(info.shape) >= 2 and info.numel > 0
        if self.scheme in ("fp8", "fp8-scaled"):
            scaled = self.scheme == "fp8-scaled"
            if not floating or (scaled and not name.endswith("weight")):  # a scale has a place beside weights only
                return {name: info}
            out = {name: TensorInfo(info.shape, torch.float8_e4m3fn)}
            if scaled:
                out[name[:-len("weight")] + "scale_weight"] = TensorInfo((), torch.float32)
            return out
        shape = info.shape if len(info.shape) <= GGUF_MAX_DIMS else (info.shape[0], info.numel // info.shape[0])
        qtype = GGUF_TYPES[self.scheme]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        if not floating or shape[-1] % block:
            qtype = T.F32 if info.dtype.is_floating_point else None
        stored = self._gguf_name(name)
        self.gguf[stored] = (qtype, tuple(info.shape))
        if qtype is None:
            return {stored: info}
        if qtype == T.F32:
            return {stored: TensorInfo(shape, torch.float32)}
        return {stored: TensorInfo((*shape[:-1], shape[-1] // block * size), torch.uint8)}

    def _gguf_name(self, name: str) -> str:
        return llama_cpp_name(name) if self.layout is not None else name

    def fetch(self, stored: str) -> torch.Tensor:
        """The stored form of ``stored`` (a scale comes with its weight, which is fetched first)."""
        if stored in self._pending:
            return self._pending.pop(stored)
        name = self.origin[stored]
        try:
            return self._stored_form(stored, name, self.src.get(name))
        finally:
            self.src.release(name)  # after its last use: the tensor may view the mapped pages

    def _stored_form(self, stored: str, name: str, w: torch.Tensor) -> torch.Tensor:
        if self.scheme in ("fp8", "fp8-scaled"):
            if self.infos[stored].dtype != torch.float8_e4m3fn:
                return w
            w = w.float()
            parts, approx = fp8_tensors(name, w, self.scheme == "fp8-scaled")
            self.tally.add(name, w, approx)
            self._pending.update({k: v for k, v in parts.items() if k != stored})
            return parts[stored]
        qtype, _ = self.gguf[stored]
        if qtype is None:
            return w
        w = w.float()
        # llama.cpp interleaves the rotary halves of llama's q/k rows only (qwen2/qwen3 keep the HF order): the
        # reader's table says which architectures, so writing and reading undo each other
        if self.layout is not None and LLM_ARCHES[self.layout[0]][2] and \
                stored.endswith((".attn_q.weight", ".attn_k.weight")):
            cfg = self.src.config
            heads = cfg["num_attention_heads"]
            w = rotary_permute(w, heads if ".attn_q." in stored else cfg.get("num_key_value_heads") or heads)
        w = w.reshape(self.infos[stored].shape[:-1] + (-1,)) if qtype != T.F32 else w.reshape(self.infos[stored].shape)
        if qtype == T.F32:  # kept as it is: not counted among the quantized tensors
            return w.contiguous()
        blocks, approx = gguf_array(w, qtype)
        self.tally.add(name, w, torch.from_numpy(approx))
        return torch.from_numpy(np.ascontiguousarray(blocks))


def _metadata(base: dict, scheme: str, summary: dict) -> dict[str, str]:
    meta = {k: str(v) for k, v in (base or {}).items()}  # (transformers wants its "format": "pt" kept)
    meta.update({"quantization": scheme, "quantization_error": json.dumps(summary, separators=(",", ":"))})
    return meta


def quantize_safetensors_file(src_path: Path, dst: Path, scheme: str, tally: ErrorTally) -> None:
    """One merged float32 safetensors file → ``dst`` in fp8 (``dst`` is written in place: the caller's target is
    atomic); its metadata carries the errors of this file's tensors."""
    src = SafetensorsFile(src_path)
    own = ErrorTally()
    spill = _Spill(src, scheme, own, None)
    scratch = dst.with_name(f".{dst.name}.spill")
    try:
        write_safetensors(scratch, spill.infos, spill.fetch)
        tally.absorb(own)  # the caller's tally sums over all shards
        stored = SafetensorsFile(scratch)
        meta = dict(src.metadata, **({"scaled_fp8": "e4m3fn"} if scheme == "fp8-scaled" else {}))
        infos = dict(spill.infos)
        fetch = stored.get
        if scheme == "fp8-scaled":  # ComfyUI's marker: its presence and dtype say the file is scaled fp8
            infos["scaled_fp8"] = TensorInfo((0,), torch.float8_e4m3fn)
            fetch = lambda k: torch.empty(0, dtype=torch.float8_e4m3fn) if k == "scaled_fp8" else stored.get(k)  # noqa: E731
        write_safetensors(dst, infos, fetch, _metadata(meta, scheme, own.summary()))
        stored.close()
    finally:
        src.close()
        scratch.unlink(missing_ok=True)


def write_fp8(merged: Path, tmp: Path, scheme: str) -> dict:
    """The merge at ``merged`` (a folder, or a .safetensors file, float32) written to ``tmp`` (a folder that exists,
    or a file path) in fp8, side files and shard index carried over; returns the error summary."""
    tally = ErrorTally()
    if merged.is_file():
        quantize_safetensors_file(merged, tmp, scheme, tally)
        return tally.summary()
    copy_non_weight_files(merged, tmp)
    for f in sorted(merged.glob("*.safetensors")):
        quantize_safetensors_file(f, tmp / f.name, scheme, tally)
    for index in merged.glob("*.safetensors.index.json"):  # the scales are new tensors: the map lists them
        data = json.loads(index.read_text())
        shards = sorted(set(data.get("weight_map", {}).values()))
        data["weight_map"] = {k: shard for shard in shards for k in SafetensorsFile(tmp / shard).keys()}
        data.setdefault("metadata", {})["total_size"] = sum((tmp / s).stat().st_size for s in shards)
        write_json(tmp / index.name, data)
    return tally.summary()


# our diffusion family (its base) → the architecture names ComfyUI-GGUF's loader accepts (its IMG_ARCH_LIST); it
# tells the models apart by their keys, so Flux.1's relatives load as "flux" and SD2 as "sd1"
COMFY_GGUF_ARCH = {"sd1": "sd1", "sd2": "sd1", "sdxl": "sdxl", "flux": "flux", "chroma": "flux", "flux2": "flux",
                   "sd3": "sd3", "hidream": "hidream", "wan": "wan", "lumina2": "lumina2", "z-image": "lumina2",
                   "qwen-image": "qwen_image"}


def gguf_architecture(src: TensorSource) -> str:
    """``general.architecture`` of a GGUF that is not a llama.cpp LLM: the ComfyUI-GGUF name of its diffusion
    family, else "studio"."""
    return COMFY_GGUF_ARCH.get(base_family(diffusion_family(src)) or "", "studio")


def write_gguf(src: TensorSource, path: Path, scheme: str) -> dict:
    """``src`` (float32) written to the GGUF file ``path`` as ``scheme``; returns the error summary. The caller makes
    it atomic; the spill goes beside ``path`` and is removed either way."""
    layout = llama_cpp_layout(src.config)
    tally = ErrorTally()
    spill = _Spill(src, scheme, tally, layout)
    scratch = path.with_name(f".{path.name}.spill")
    try:
        write_safetensors(scratch, spill.infos, spill.fetch)
        stored = SafetensorsFile(scratch)
        summary = tally.summary()
        writer = gguf.GGUFWriter(None, layout[0] if layout else gguf_architecture(src))
        for setter, value in (layout[1] if layout else {}).items():
            getattr(writer, setter)(value)
        if layout:
            summary["tokenizer"] = add_tokenizer(writer, src.folder, src.config["vocab_size"])
        writer.add_string("studio.quantization", scheme)
        writer.add_string("studio.quantization_error", json.dumps(summary, separators=(",", ":")))
        for name, (qtype, shape) in spill.gguf.items():
            info = spill.infos[name]
            if len(shape) > GGUF_MAX_DIMS:
                writer.add_array(ORIG_SHAPE + name, list(shape))
            np_dtype = NUMPY_DTYPES.get(info.dtype)
            if np_dtype is None:
                raise StudioError(f"tensor {name!r} is {info.dtype}, which GGUF cannot hold", where=str(src.ref))
            writer.add_tensor_info(name, info.shape, np.dtype(np_dtype), info.nbytes,
                                   raw_dtype=qtype if qtype not in (None, T.F32) else None)
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name in spill.gguf:
            writer.write_tensor_data(stored.get(name).numpy())
            stored.release(name)
        writer.close()
        stored.close()
    finally:
        scratch.unlink(missing_ok=True)
    return summary


def quantized_recipe_path(target: Path) -> Path:
    """Where the recipe goes beside a quantized output: inside a folder, ``<stem>.recipe.yml`` beside a file."""
    target = Path(target)
    return target.with_name(target.stem + ".recipe.yml") if target.suffix == ".gguf" else recipe_path(target)


def quantize_merge(merged: Path, target: Path, scheme: str) -> dict:
    """The float32 merge at ``merged`` (as ``merge_to_disk`` wrote it) written to ``target`` as ``scheme``, with its
    recipe, all at once or not at all. Returns the error summary."""
    merged, target = Path(merged), Path(target)
    if scheme in GGUF_TYPES:
        src = open_source(str(merged))
        try:
            with atomic_files(target, quantized_recipe_path(target)) as (tmp, tmp_recipe):
                summary = write_gguf(src, tmp, scheme)
                shutil.copy2(recipe_path(merged), tmp_recipe)
        finally:
            src.close()
        return summary
    if is_single_file(target):
        with atomic_files(target, recipe_path(target)) as (tmp, tmp_recipe):
            summary = write_fp8(merged, tmp, scheme)
            shutil.copy2(recipe_path(merged), tmp_recipe)
        return summary
    with AtomicTarget(target) as tmp:
        return write_fp8(merged, tmp, scheme)


def merge_scratch(target: Path) -> Path:
    """A scratch folder beside ``target`` for the float32 merge that is quantized into it (the caller removes it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.float32-", dir=target.parent))


def scratch_target(scratch: Path, target: Path) -> Path:
    """Where in ``scratch`` the float32 merge goes: a single file for a single-file target, else a folder (a folder
    keeps the config a GGUF's metadata is made from)."""
    return scratch / ("model.safetensors" if is_single_file(target) else "model")


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
