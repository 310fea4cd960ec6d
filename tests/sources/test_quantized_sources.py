"""Scaled fp8 and bitsandbytes NF4/int8 checkpoints read as float32 under their plain names. The quantized files are
built here by quantizers written from the format definitions (studio/sources/quantized.py's docstring)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main
from studio.errors import SourceError
from studio.sources import open_source

NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


def quantize_blocks(flat: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Nearest codebook entry of each value scaled by its block's absmax; (codes, absmax)."""
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks / absmax[:, None]).reshape(-1)[:n]
    codes = (scaled[:, None] - code[None, :]).abs().argmin(dim=1).to(torch.uint8)
    return codes, absmax


def nf4_entries(name: str, w: torch.Tensor, blocksize=64, nested=False) -> dict[str, torch.Tensor]:
    codes, absmax = quantize_blocks(w.reshape(-1), NF4, blocksize)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    packed = (codes[0::2] << 4 | codes[1::2]).reshape(-1, 1)
    state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": "bfloat16", "shape": list(w.shape)}
    out = {name: packed, f"{name}.quant_map": NF4.clone()}
    if nested:
        offset = absmax.mean()
        code8 = torch.linspace(-1, 1, 256)
        codes8, absmax2 = quantize_blocks(absmax - offset, code8, 256)
        out.update({f"{name}.absmax": codes8, f"{name}.nested_absmax": absmax2, f"{name}.nested_quant_map": code8})
        state.update(nested_blocksize=256, nested_dtype="float32", nested_offset=float(offset))
    else:
        out[f"{name}.absmax"] = absmax
    out[f"{name}.quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    return out


def test_nf4_codebook_values_round_trip_exactly(tmp_path):
    # a block whose absmax is 2 and whose values are 2 × every codebook entry: each comes back bit for bit
    w = (2 * NF4.repeat(8)).reshape(8, 16)[torch.randperm(8)]
    save_file({**nf4_entries("lin.weight", w), "lin.bias": torch.ones(8)}, tmp_path / "m.safetensors")
    src = open_source(str(tmp_path / "m.safetensors"))
    assert sorted(src.keys()) == ["lin.bias", "lin.weight"]
    assert src.info("lin.weight").shape == (8, 16) and src.info("lin.weight").dtype == torch.float32
    assert torch.equal(src.get("lin.weight"), w)


@pytest.mark.parametrize("nested", [False, True])
def test_nf4_dequantization_within_the_codebook_bound(tmp_path, nested):
    torch.manual_seed(0)
    w = torch.randn(48, 40)  # 1920 values: 30 blocks of 64, the nested scales one short block of 256
    save_file(nf4_entries("a.weight", w, nested=nested), tmp_path / "m.safetensors")
    got = open_source(str(tmp_path / "m.safetensors")).get("a.weight")
    blocks = w.reshape(-1, 64)
    gap = (NF4[1:] - NF4[:-1]).max() / 2  # the farthest a scaled value lies from its nearest entry
    bound = gap * blocks.abs().amax(1, keepdim=True)
    err = (got.reshape(-1, 64) - blocks).abs()
    if nested:  # the 8-bit absmax adds its own rounding: half a step of 2/255 of the largest |absmax - offset|
        absmax = blocks.abs().amax(1)
        bound = bound + (absmax - absmax.mean()).abs().max() / 255 * 1.01
    assert (err <= bound * 1.0001).all()
    assert err.max() > 0  # really quantized
    rel = (got - w).norm() / w.norm()
    assert 0.05 < rel < 0.15  # NF4 on Gaussian weights: ~10 % relative Frobenius error


def test_int8_rows_dequantize_with_their_scales(tmp_path):
    torch.manual_seed(1)
    w = torch.randn(16, 24)
    scb = w.abs().amax(1)
    q = torch.round(w * 127 / scb[:, None]).to(torch.int8)
    save_file({"l.weight": q, "l.SCB": scb, "l.weight_format": torch.tensor([0], dtype=torch.uint8)},
              tmp_path / "m.safetensors")
    src = open_source(str(tmp_path / "m.safetensors"))
    assert src.keys() == ["l.weight"]
    got = src.get("l.weight")
    assert torch.equal(got, q.float() * (scb[:, None] / 127))
    assert ((got - w).abs() <= scb[:, None] / 254 * 1.0001).all()  # half a step


def test_scaled_fp8_reads_scaled_and_hides_scales(tmp_path):
    torch.manual_seed(2)
    w = torch.randn(8, 12) * 3
    per_row = w.abs().amax(1) / 448
    scalar = w.abs().max() / 448
    save_file({"a.weight": (w / scalar).to(torch.float8_e4m3fn), "a.scale_weight": scalar.reshape(()),
               "a.scale_input": torch.tensor(1.0), "b.weight": (w / per_row[:, None]).to(torch.float8_e4m3fn),
               "b.scale_weight": per_row, "c.weight": w.to(torch.float8_e4m3fn),
               "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, tmp_path / "m.safetensors")
    src = open_source(str(tmp_path / "m.safetensors"))
    assert sorted(src.keys()) == ["a.weight", "b.weight", "c.weight"]
    a, b = src.get("a.weight"), src.get("b.weight")
    assert torch.equal(a, (w / scalar).to(torch.float8_e4m3fn).float() * scalar)
    assert torch.equal(b, (w / per_row[:, None]).to(torch.float8_e4m3fn).float() * per_row[:, None])
    # e4m3 keeps 3 mantissa bits: relative error at most 2^-4 per value (normal range)
    assert ((a - w).abs() <= w.abs() * 2 ** -4 + scalar * 2 ** -9).all()
    assert src.info("c.weight").dtype == torch.float8_e4m3fn  # plain fp8: the engine upcasts it


def test_bnb_folder_config_loses_quantization_config(tmp_path):
    w = torch.randn(4, 8)
    scb = w.abs().amax(1)
    save_file({"l.weight": torch.round(w * 127 / scb[:, None]).to(torch.int8), "l.SCB": scb},
              tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "load_in_8bit": True}}))
    src = open_source(str(tmp_path))
    assert src.config == {"model_type": "llama"}


def test_damaged_4bit_state_is_a_source_error(tmp_path):
    entries = nf4_entries("l.weight", torch.randn(4, 16))
    entries["l.weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    save_file(entries, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match="not JSON"):
        open_source(str(tmp_path / "m.safetensors"))


def test_quantized_inputs_merge_as_their_dequantized_weights(tmp_path):
    torch.manual_seed(3)
    w = torch.randn(8, 64)
    scb = w.abs().amax(1)
    scale = w.abs().max() / 448
    save_file(nf4_entries("l.weight", w), tmp_path / "nf4.safetensors")
    save_file({"l.weight": torch.round(w * 127 / scb[:, None]).to(torch.int8), "l.SCB": scb}, tmp_path / "i8.safetensors")
    save_file({"l.weight": (w / scale).to(torch.float8_e4m3fn), "l.scale_weight": scale.reshape(())},
              tmp_path / "f8.safetensors")
    names = ["nf4", "i8", "f8"]
    models = "".join(f"  - model: {tmp_path / n}.safetensors\n    parameters: {{weight: 1}}\n" for n in names)
    (tmp_path / "r.yml").write_text(f"merge_method: linear\nmodels:\n{models}out_dtype: float32\n")
    assert main(["merge", str(tmp_path / "r.yml"), str(tmp_path / "out.safetensors"), "--quiet"]) == 0
    expected = sum(open_source(str(tmp_path / f"{n}.safetensors")).get("l.weight") for n in names) / 3
    merged = open_source(str(tmp_path / "out.safetensors"))
    assert merged.keys() == ["l.weight"]
    assert torch.allclose(merged.get("l.weight"), expected, atol=1e-6)
