"""Bad input files, built byte by byte in the tests (issue #18): malformed safetensors, pickles that are not
checkpoints, LoRAs whose factors do not fit, weights holding NaN/Inf. Shared by the library tests of each class and
the CLI test that feeds all of them to ``inspect`` and ``merge``."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

F32_A = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
F32_B = {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}
GOOD = {"a": torch.arange(4.0).reshape(2, 2), "b": torch.tensor([5.0, 6.0])}  # F32_A and F32_B's values


def st_bytes(header, data: bytes = b"\0" * 24) -> bytes:
    """A safetensors file as written on disk: 8-byte little-endian header length, the header, the data. ``header``
    is JSON-encoded unless it is already bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _entry(**changes) -> dict:
    return {"a": F32_A, "b": {**F32_B, **changes}}


# id → (file bytes, the tensor the error must name or None, whether safetensors' own reader accepts the file)
SAFETENSORS_ROWS = {
    "truncated-data": (st_bytes({"a": F32_A, "b": F32_B}, b"\0" * 20), "b", False),
    "offsets-past-end": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "shape": [250], "data_offsets": [16, 1016]}}),
                         "b", False),
    "empty-data-section": (st_bytes({"a": F32_A}, b""), "a", False),
    "header-a-list": (st_bytes([F32_A, F32_B]), None, False),
    "header-a-string": (st_bytes("a"), None, False),
    # safetensors' reader (serde) also takes a struct as a list in field order; no writer makes one, and the format's
    # description has entries as objects: refused here
    "entry-a-list": (st_bytes({"a": F32_A, "b": ["F32", [2], [16, 24]]}), "b", True),
    "entry-a-number": (st_bytes({"a": F32_A, "b": 7}), "b", False),
    "entry-without-shape": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "data_offsets": [16, 24]}}), "b", False),
    "entry-without-dtype": (st_bytes({"a": F32_A, "b": {"shape": [2], "data_offsets": [16, 24]}}), "b", False),
    "entry-without-offsets": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "shape": [2]}}), "b", False),
    "metadata-a-list": (st_bytes({"__metadata__": ["format", "pt"], "a": F32_A, "b": F32_B}), None, False),
    "metadata-a-number-value": (st_bytes({"__metadata__": {"format": 1}, "a": F32_A, "b": F32_B}), None, False),
    "metadata-a-nested-value": (st_bytes({"__metadata__": {"r": {"x": "y"}}, "a": F32_A, "b": F32_B}), None, False),
    "two-tensors-one-range": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                       b"\0" * 16), "b", False),
    "overlapping-ranges": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}},
                                    b"\0" * 20), "b", False),
    "gap-between-tensors": (st_bytes({"a": F32_A, "b": {"dtype": "F32", "shape": [2], "data_offsets": [20, 28]}},
                                     b"\0" * 28), "b", False),
    "first-not-at-zero": (st_bytes({"a": {**F32_A, "data_offsets": [8, 24]}}), "a", False),
    "negative-shape": (st_bytes(_entry(shape=[-2])), "b", False),
    "float-shape": (st_bytes(_entry(shape=[2.0])), "b", False),
    "bool-shape": (st_bytes(_entry(shape=[True, 2])), "b", False),
    "string-shape": (st_bytes(_entry(shape="2")), "b", False),
    "size-not-itemsize-times-numel": (st_bytes(_entry(shape=[3], data_offsets=[16, 24])), "b", False),
    "size-hides-parameters": (st_bytes({"a": {**F32_A, "shape": [200, 200]}, "b": F32_B}), "a", False),
    "end-before-start": (st_bytes(_entry(data_offsets=[24, 16])), "b", False),
    "three-offsets": (st_bytes(_entry(data_offsets=[16, 24, 24])), "b", False),
    "float-offsets": (st_bytes(_entry(data_offsets=[16, 24.0])), "b", False),
    "unknown-dtype": (st_bytes(_entry(dtype="F33")), "b", False),
    "dtype-torch-lacks": (st_bytes({"a": F32_A, "b": {"dtype": "F4", "shape": [2], "data_offsets": [16, 17]}},
                                   b"\0" * 17), "b", True),
    "trailing-bytes": (st_bytes({"a": F32_A, "b": F32_B}, b"\0" * 32), None, False),
    "header-longer-than-file": (struct.pack("<Q", 1 << 20) + b'{"a": {}}', None, False),
    "shorter-than-length-field": (b"\x10\0\0", None, False),
    "header-not-utf8": (st_bytes(b'{"a\xff": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 8),
                        None, False),
    "header-not-json": (st_bytes(b"{'a': nope}"), None, False),
    "header-nested-too-deep": (st_bytes(b"[" * 100_000 + b"]" * 100_000), None, False),
    "name-with-a-newline": (st_bytes({"a": F32_A, "b\nc": {**F32_B, "shape": [-1]}}), "c", False),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
