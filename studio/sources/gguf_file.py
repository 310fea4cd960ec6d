"""GGUF files (llama.cpp's format; city96's diffusion GGUFs) read as float32 tensors, one tensor at a time.

The header (names, dims, quantization types, metadata) is parsed when the file is opened; ``gguf.GGUFReader`` maps
the file, so a tensor's blocks are read from disk only when that tensor is dequantized (``gguf.quants.dequantize``),
and the float32 result is the only copy. GGUF writes a tensor's dims innermost first (ggml's ``ne``): torch's shape
is the reverse.

Names. Diffusion GGUFs store the original state-dict names; they are kept. LLM GGUFs of the llama family
(``general.architecture`` llama, which llama.cpp also uses for Mistral; qwen2; qwen3) use llama.cpp's names
(``blk.N.attn_q.weight``): they are mapped back to transformers' names, and a transformers ``config`` is built from
the metadata, so the layouts and the LLM code see the model as if it were the original checkpoint. llama.cpp's
converter permutes the rows of a llama q/k projection (it interleaves the two rotary halves of each head); the
permutation is undone here, so the tensors equal the Hugging Face ones.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import SourceError
from .base import TensorInfo, TensorSource

T = gguf.GGMLQuantizationType
INTEGER_TYPES = {T.I8: torch.int8, T.I16: torch.int16, T.I32: torch.int32, T.I64: torch.int64}
# llama.cpp's per-layer names → transformers' (the part after ``blk.N.`` / ``model.layers.N.``)
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
HF_LAYER_NAMES = {v: k for k, v in LAYER_NAMES.items()}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
HF_GLOBAL_NAMES = {v: k for k, v in GLOBAL_NAMES.items()}
# architecture → (transformers class, model_type, whether llama.cpp permuted q/k rows)
LLM_ARCHES = {"llama": ("LlamaForCausalLM", "llama", True), "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
              "qwen3": ("Qwen3ForCausalLM", "qwen3", False)}
MODEL_TYPE_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
LLAMA_CPP_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
HF_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$")
SKIPPED = {"rope_freqs.weight"}  # llama 3's rope scaling factors: transformers computes them from the config
ORIG_SHAPE = "comfy.gguf.orig_shape."  # city96's ComfyUI-GGUF: the shape a >4-dim tensor had before it was flattened


def hf_name(name: str) -> str | None:
    """The transformers name of a llama.cpp tensor name; None for one that has no counterpart."""
    if name in SKIPPED:
        return None
    m = LLAMA_CPP_NAME.match(name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    stem, _, leaf = name.rpartition(".")
    return f"{GLOBAL_NAMES[stem]}.{leaf}" if stem in GLOBAL_NAMES else name


def llama_cpp_name(name: str) -> str:
    """The llama.cpp name of a transformers tensor name (names it does not know stay as they are)."""
    m = HF_LAYER_NAME.match(name)
    if m and m.group(2) in HF_LAYER_NAMES:
        return f"blk.{m.group(1)}.{HF_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    stem, _, leaf = name.rpartition(".")
    return f"{HF_GLOBAL_NAMES[stem]}.{leaf}" if stem in HF_GLOBAL_NAMES else name


def rotary_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of a q/k projection from transformers' (each head's two rotary halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rotary_unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' row order of a q/k projection from llama.cpp's: the inverse of :func:`rotary_permute`."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def llm_config(reader: gguf.GGUFReader, arch: str, vocab: int | None, tied: bool) -> dict:
    """A transformers config built from a llama-family GGUF's metadata (what the layouts and LLM code read)."""
    cls, model_type, _ = LLM_ARCHES[arch]

    def value(key, default=None):
        v = _field(reader, key.format(arch=arch))
        return default if v is None else v

    heads = value(gguf.Keys.Attention.HEAD_COUNT)
    config = {
        "architectures": [cls], "model_type": model_type,
        "hidden_size": value(gguf.Keys.LLM.EMBEDDING_LENGTH),
        "num_hidden_layers": value(gguf.Keys.LLM.BLOCK_COUNT),
        "num_attention_heads": heads,
        "num_key_value_heads": value(gguf.Keys.Attention.HEAD_COUNT_KV, heads),
        "intermediate_size": value(gguf.Keys.LLM.FEED_FORWARD_LENGTH),
        "vocab_size": value(gguf.Keys.LLM.VOCAB_SIZE, vocab),
        "rms_norm_eps": value(gguf.Keys.Attention.LAYERNORM_RMS_EPS, 1e-6),
        "rope_theta": value(gguf.Keys.Rope.FREQ_BASE, 10000.0),  # (transformers 5 reads rope_parameters)
        "rope_parameters": {"rope_theta": value(gguf.Keys.Rope.FREQ_BASE, 10000.0), "rope_type": "default"},
        "max_position_embeddings": value(gguf.Keys.LLM.CONTEXT_LENGTH, 2048),
        "tie_word_embeddings": tied,
    }
    head_dim = value(gguf.Keys.Attention.KEY_LENGTH)
    if head_dim is not None:
        config["head_dim"] = head_dim
    return config


def _damaged(path: Path, what: str) -> SourceError:
    return SourceError(what, where=str(path), hint="the file is damaged or not GGUF; re-download or re-export it")


class GGUFFile(TensorSource):
    """A GGUF file's tensors, dequantized to float32 when read (integer tensors keep their type)."""

    def __init__(self, path: Path, ref: str | None = None, **kw):
        kw.pop("kind", None)  # what it is comes from the file: "transformers" for a mapped LLM (its config is written
        super().__init__(ref=ref or str(path), path=Path(path), kind="gguf", **kw)  # beside a merge), else "gguf"
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except Exception as e:  # noqa: BLE001 - the third-party parser raises many types on a damaged file
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise _damaged(self.path, f"cannot read GGUF header ({first})") from None
        self.arch = _field(self._reader, "general.architecture")
        self.metadata = {"format": "gguf", "general.architecture": str(self.arch)}
        self._tensors: dict[str, tuple] = {}  # our name → (reader tensor, rows to unpermute by heads or None)
        stored = {t.name: t for t in self._reader.tensors}
        llm = self.arch in LLM_ARCHES and "token_embd.weight" in stored
        heads = kv_heads = None
        if llm:
            heads = _field(self._reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=self.arch))
            kv_heads = _field(self._reader, gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=self.arch)) or heads
            permuted = LLM_ARCHES[self.arch][2]
        for t in self._reader.tensors:
            if t.tensor_type not in INTEGER_TYPES and t.tensor_type not in gguf.GGML_QUANT_SIZES:
                raise _damaged(self.path, f"tensor {t.name!r} has unknown type {t.tensor_type}")
            name, rows = t.name, None
            if llm:
                name = hf_name(t.name)
                if name is None:
                    continue
                if permuted and t.name.endswith((".attn_q.weight", ".attn_k.weight")):
                    rows = heads if ".attn_q." in t.name else kv_heads
            shape = self._shape(t)
            dtype = INTEGER_TYPES.get(t.tensor_type, torch.float32)
            self._index[name] = TensorInfo(shape, dtype)
            self._tensors[name] = (t, rows)
        if llm:
            vocab = self._index["model.embed_tokens.weight"].shape[0]
            self.config = self.config or llm_config(self._reader, self.arch, vocab, "lm_head.weight" not in self._index)
            self.kind = "transformers"

    def _shape(self, t) -> tuple[int, ...]:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        orig = _field(self._reader, ORIG_SHAPE + t.name)
        if orig is not None:
            orig = tuple(int(d) for d in orig)
            if int(np.prod(orig)) != int(np.prod(shape)):
                raise _damaged(self.path, f"tensor {t.name!r}: its original shape {orig} has another size")
            return orig
        return shape

    def quant_type(self, key: str) -> str:
        """How ``key`` is stored in the file (``Q8_0``, ``F16``…)."""
        self.info(key)
        return self._tensors[key][0].tensor_type.name

    def _read(self, key: str) -> torch.Tensor:
        t, rows = self._tensors[key]
        info = self._index[key]
        try:
            if t.tensor_type in INTEGER_TYPES:
                out = torch.from_numpy(np.array(t.data)).reshape(info.shape)
            else:
                values = gguf.quants.dequantize(t.data, t.tensor_type)
                # F32 comes back as the read-only mapping itself: copied, as torch tensors are writable
                values = np.array(values, dtype=np.float32, copy=not values.flags.writeable or None, order="C")
                out = torch.from_numpy(values).reshape(info.shape)
        except (ValueError, OSError, IndexError) as e:  # a truncated file maps short: its last tensors fail here
            raise _damaged(self.path, f"cannot read tensor {t.name!r} ({str(e)[:120]})") from None
        return out if rows is None else rotary_unpermute(out, rows).contiguous()

    def release(self, key: str) -> None:
        """Drop the mapped pages of a tensor already dequantized (the page cache keeps them)."""
        entry = self._tensors.get(key)
        mm = getattr(self._reader.data, "_mmap", None) if self._reader is not None else None
        if entry is None or mm is None:
            return
        t = entry[0]
        lo = t.data_offset // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, t.data_offset + t.n_bytes - lo)
        except (OSError, ValueError, AttributeError):  # platforms without madvise: memory is merely higher
            pass

    def close(self):
        self._reader = None
