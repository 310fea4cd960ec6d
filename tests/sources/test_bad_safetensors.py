"""Malformed safetensors files fail when opened, with one SourceError naming the file and the tensor; every file that
safetensors itself writes (all our dtypes, empty tensors, scalars) still opens with its values."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from badinputs import GOOD, SAFETENSORS_ROWS, sha256, st_bytes
from studio.errors import SourceError
from studio.sources import ST_DTYPES, open_source


@pytest.mark.parametrize("row", sorted(SAFETENSORS_ROWS))
def test_a_malformed_file_fails_when_opened_naming_file_and_tensor(tmp_path, row):
    data, tensor, safetensors_accepts = SAFETENSORS_ROWS[row]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    before = sha256(path)
    with pytest.raises(SourceError) as err:
        open_source(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    if tensor is not None:
        assert f"tensor {next(k for k in _names(data) if k.endswith(tensor))!r}" in message
    assert sha256(path) == before
    # the same verdict as safetensors' own reader: what it refuses is refused here too
    try:
        with safe_open(str(path), "pt"):
            accepted = True
    except Exception:
        accepted = False
    assert accepted == safetensors_accepts


def _names(data: bytes) -> list[str]:
    import json

    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return [k for k in header if k != "__metadata__"]


def test_every_file_safetensors_writes_opens_with_its_values(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, dtype in ST_DTYPES.items():
        if dtype.is_floating_point:
            tensors[name] = torch.randn(3, 5, generator=g).to(dtype)
        elif dtype == torch.bool:
            tensors[name] = torch.rand(7, generator=g) > 0.5
        else:
            tensors[name] = torch.randint(0, 100, (2, 3, 2), generator=g).to(dtype)
        tensors[f"{name}.empty"] = torch.empty(0, 4, dtype=dtype)
        tensors[f"{name}.scalar"] = torch.ones((), dtype=dtype)
    tensors["odd"] = torch.randn(3, dtype=torch.float16)  # leaves the next tensor unaligned
    tensors["after_odd"] = torch.randn(3, dtype=torch.float64)
    for one in ({"only.empty": torch.empty(0)}, {}, tensors):
        path = tmp_path / f"m{len(one)}.safetensors"
        save_file(one, path, metadata={"format": "pt", "note": "x" * 1000})
        src = open_source(str(path))
        assert sorted(src.keys()) == sorted(one) and src.metadata["format"] == "pt"
        for k, v in one.items():
            assert src.info(k).shape == tuple(v.shape) and torch.equal(src.get(k), v), k
        assert src.num_parameters == sum(v.numel() for v in one.values())


@pytest.mark.parametrize("header", [
    {"__metadata__": None, "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
    {"z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},  # empty tensors at both ends and between
     "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], "extra": "ignored"},
     "y": {"dtype": "I64", "shape": [3, 0], "data_offsets": [16, 16]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
     "x": {"dtype": "BF16", "shape": [0], "data_offsets": [24, 24]}},
], ids=["null-metadata", "empty-tensors-and-extra-fields"])
def test_hand_written_files_that_safetensors_accepts_open(tmp_path, header):
    path = tmp_path / "ok.safetensors"
    data = GOOD["a"].numpy().tobytes() + GOOD["b"].numpy().tobytes()
    path.write_bytes(st_bytes(header, data))
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == sorted(k for k in header if k != "__metadata__")
    src = open_source(str(path))
    assert torch.equal(src.get("a"), GOOD["a"]) and torch.equal(src.get("b"), GOOD["b"])
    assert src.num_parameters == 6


def test_a_file_that_shrinks_after_opening_fails_on_read_not_with_a_crash(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(GOOD, path)
    src = open_source(str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SourceError, match="changed since it was opened"):
        src.get("a")
