"""GGUF inputs: every quantization type dequantizes as the gguf package's reference does, with torch's dim order; a
llama.cpp-converted Llama reads back as the Hugging Face tensors and config; damaged files are one SourceError."""

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from ggufmodels import T, llama_cpp_name, llama_gguf, write
from studio.errors import SourceError
from studio.sources import open_source
from tinymodels import load_state, make_llama

QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.TQ2_0, T.MXFP4]
RAW_ONLY = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]  # the package dequantizes these only


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda q: q.name)
def test_quantized_tensor_equals_the_reference_dequantization(tmp_path, qtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 512)).astype(np.float32)
    path = write(tmp_path / "m.gguf", "flux", {"double_blocks.0.img_attn.qkv.weight": (a, qtype)})
    src = open_source(str(path))
    name = "double_blocks.0.img_attn.qkv.weight"  # a diffusion GGUF keeps its stored names
    assert src.keys() == [name] and src.info(name).shape == (6, 512) and src.info(name).dtype == torch.float32
    reference = gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype)
    got = src.get(name)
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), reference)
    if qtype == T.F32:
        assert np.array_equal(got.numpy(), a)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random bytes: some f16 scales are NaN, in both reads
@pytest.mark.parametrize("qtype", RAW_ONLY, ids=lambda q: q.name)
def test_k_quant_blocks_equal_the_reference_dequantization(tmp_path, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (4, 512 // block * size), dtype=np.uint8)
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "sdxl")
    w.add_tensor("w", raw, raw_dtype=qtype)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    src = open_source(str(tmp_path / "k.gguf"))
    assert src.info("w").shape == (4, 512)
    np.testing.assert_array_equal(src.get("w").numpy(), gguf.quants.dequantize(raw, qtype))  # (NaN equals NaN)


def test_dims_are_reversed_into_torch_order(tmp_path):
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    path = write(tmp_path / "m.gguf", "sd1", {"conv.weight": (a, T.F16), "bias": (np.arange(3.0, dtype=np.float32), T.F32)})
    reader = gguf.GGUFReader(str(path))
    assert reader.tensors[0].shape.tolist() == [5, 4, 3, 2]  # stored innermost first
    src = open_source(str(path))
    assert src.info("conv.weight").shape == (2, 3, 4, 5)
    assert torch.equal(src.get("conv.weight"), torch.from_numpy(a))


def test_llama_cpp_gguf_reads_back_as_the_hf_model(tmp_path):
    hf = make_llama(tmp_path / "hf", 0)
    state = load_state(hf)
    src = open_source(str(llama_gguf(tmp_path / "f32.gguf", hf)))
    assert src.kind == "transformers" and sorted(src.keys()) == sorted(state)
    for k, v in state.items():  # q/k rows un-permuted: equal bit for bit
        assert torch.equal(src.get(k), v), k
    cfg = json.loads((hf / "config.json").read_text())
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size", "rms_norm_eps", "model_type", "architectures"):
        assert src.config[field] == pytest.approx(cfg[field]), field
    assert src.config["rope_theta"] == cfg["rope_parameters"]["rope_theta"] and not src.config["tie_word_embeddings"]


def test_q8_0_llama_gguf_within_the_block_bound(tmp_path):
    hf = make_llama(tmp_path / "hf", 3)
    state = load_state(hf)
    src = open_source(str(llama_gguf(tmp_path / "q8.gguf", hf, T.Q8_0)))
    for k, v in state.items():
        got = src.get(k)
        if v.dim() == 1:
            assert torch.equal(got, v)
            continue
        blocks = v.reshape(-1, 32)
        step = blocks.abs().amax(1, keepdim=True) / 127  # half a step of rounding, plus the f16 scale's rounding
        assert ((got.reshape(-1, 32) - blocks).abs() <= step * 0.5 + blocks.abs() * 2 ** -10 + 1e-8).all(), k
        assert not torch.equal(got, v)


def test_tied_llama_gguf_config(tmp_path):
    hf = make_llama(tmp_path / "hf", 0, tie=True)
    src = open_source(str(llama_gguf(tmp_path / "t.gguf", hf)))
    assert "lm_head.weight" not in src.keys() and src.config["tie_word_embeddings"] is True


def test_merge_of_two_ggufs_equals_the_merge_of_the_safetensors(tmp_path):
    base = make_llama(tmp_path / "base", 0)
    tuned = make_llama(tmp_path / "tuned", 1, base_state=load_state(base), noise=0.05)
    ggufs = {n: llama_gguf(tmp_path / f"{n}.gguf", p, T.Q8_0) for n, p in (("base", base), ("tuned", tuned))}
    outs = {}
    for kind, refs in (("st", {"base": base, "tuned": tuned}), ("gguf", ggufs)):
        recipe = tmp_path / f"{kind}.yml"
        recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {refs['base']}\nmodels:\n"
                          f"  - model: {refs['tuned']}\n    parameters: {{weight: 0.7}}\ndtype: float32\n")
        outs[kind] = tmp_path / f"out-{kind}"
        done = subprocess.run([sys.executable, "-m", "studio", "merge", str(recipe), str(outs[kind]), "--quiet"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    exact, approx = load_state(outs["st"]), load_state(outs["gguf"])
    assert sorted(exact) == sorted(approx)
    cfg = json.loads((outs["gguf"] / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["model_type"] == "llama"
    for k, v in exact.items():
        # base + 0.7 (tuned - base) of inputs each off by ≤ half a Q8_0 step: off by ≤ 0.3 e_base + 0.7 e_tuned
        bound = 0.5 * max(load_state(base)[k].abs().max(), load_state(tuned)[k].abs().max()) / 127 + 1e-6
        assert (approx[k] - v).abs().max() <= bound * 1.01, k


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_damaged_gguf_is_one_source_error(tmp_path, damage):
    path = write(tmp_path / "m.gguf", "flux", {"w": (np.ones((4, 64), np.float32), T.Q8_0)})
    data = path.read_bytes()
    path.write_bytes({"magic": b"XXXX" + data[4:], "truncated": data[:40], "empty": b""}[damage])
    with pytest.raises(SourceError) as e:
        open_source(str(path))
    assert str(path) in str(e.value)


def test_corrupt_gguf_through_the_cli_is_exit_2_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {bad}\n    parameters: {{weight: 1}}\n")
    done = subprocess.run([sys.executable, "-m", "studio", "merge", str(recipe), str(tmp_path / "out")],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "GGUF" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_qwen2_gguf_keeps_row_order_and_maps_biases(tmp_path):
    hf = make_llama(tmp_path / "hf", 2)
    state = load_state(hf)
    torch.manual_seed(0)
    for i in range(3):  # qwen2 has q/k/v biases; llama.cpp does not permute its rows
        for p in ("q", "k", "v"):
            rows = state[f"model.layers.{i}.self_attn.{p}_proj.weight"].shape[0]
            state[f"model.layers.{i}.self_attn.{p}_proj.bias"] = torch.randn(rows)
    tensors = {llama_cpp_name(k): (v.numpy(), T.F32) for k, v in state.items()}
    path = write(tmp_path / "q.gguf", "qwen2", tensors, {"add_block_count": 3, "add_embedding_length": 32,
                                                          "add_head_count": 4, "add_head_count_kv": 2,
                                                          "add_feed_forward_length": 64})
    src = open_source(str(path))
    assert sorted(src.keys()) == sorted(state)
    assert all(torch.equal(src.get(k), v) for k, v in state.items())
    assert src.config["architectures"] == ["Qwen2ForCausalLM"] and src.config["vocab_size"] == 64


def test_a_folder_of_one_gguf_opens_it_and_of_several_names_them(tmp_path):
    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    (tmp_path / "repo").mkdir()
    write(tmp_path / "repo" / "m-Q8_0.gguf", "sd1", {"blocks.0.w.weight": (a, T.F32)})
    assert torch.equal(open_source(str(tmp_path / "repo")).get("blocks.0.w.weight"), torch.from_numpy(a))
    write(tmp_path / "repo" / "m-F16.gguf", "sd1", {"blocks.0.w.weight": (a, T.F16)})
    with pytest.raises(SourceError, match="holds 2 GGUF files") as e:
        open_source(str(tmp_path / "repo"))
    assert "m-F16.gguf, m-Q8_0.gguf" in e.value.hint
