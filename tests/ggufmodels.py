"""GGUF files for tests, written with the gguf package's own writer and quantizers (not with studio's writer): an
LLM GGUF in llama.cpp's naming from a tiny transformers Llama, as llama.cpp's converter lays it out."""

import json
import re
from pathlib import Path

import gguf
import numpy as np

from tinymodels import load_state

T = gguf.GGMLQuantizationType
LAYER = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
         ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
         ("mlp.down_proj", "ffn_down"), ("post_attention_layernorm", "ffn_norm"), ("input_layernorm", "attn_norm")]
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def llama_cpp_name(name: str) -> str:
    m = re.match(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)  # (written apart from studio's own map)
    if m:
        return f"blk.{m.group(1)}.{dict(LAYER)[m.group(2)]}.{m.group(3)}"
    stem, leaf = name.rsplit(".", 1)
    return f"{TOP[stem]}.{leaf}"


def interleave_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows (first half, second half) → pairs (written from its description)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, "T"]], kv=None) -> Path:
    """``tensors``: name → (float32 array, type to store it as)."""
    w = gguf.GGUFWriter(str(path), arch)
    for fn, value in (kv or {}).items():
        getattr(w, fn)(value)
    for name, (a, qtype) in tensors.items():
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, a.astype(np.float32 if qtype == T.F32 else np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def llama_gguf(path: Path, hf_folder: Path, qtype=T.F32) -> Path:
    """The tiny Llama at ``hf_folder`` as llama.cpp would convert it: matrices as ``qtype``, norms in F32."""
    cfg = json.loads((Path(hf_folder) / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors = {}
    for name, t in load_state(hf_folder).items():
        a = t.numpy()
        if name.endswith("q_proj.weight"):
            a = interleave_rotary(a, heads)
        elif name.endswith("k_proj.weight"):
            a = interleave_rotary(a, kv_heads)
        tensors[llama_cpp_name(name)] = (a, qtype if a.ndim == 2 else T.F32)
    kv = {"add_block_count": cfg["num_hidden_layers"], "add_embedding_length": cfg["hidden_size"],
          "add_head_count": heads, "add_head_count_kv": kv_heads,
          "add_feed_forward_length": cfg["intermediate_size"], "add_layer_norm_rms_eps": cfg["rms_norm_eps"],
          "add_rope_freq_base": cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
          "add_context_length": cfg["max_position_embeddings"], "add_vocab_size": cfg["vocab_size"]}
    return write(path, "llama", tensors, kv)
