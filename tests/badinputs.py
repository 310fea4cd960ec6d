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


# ---------------------------------------------------------------------------------------------------------- LoRAs
def lora_base() -> dict[str, torch.Tensor]:
    """A base whose tensors the LoRA rows target: a linear layer (16×8), a 3×3 conv (16×8×3×3), an embedding."""
    g = torch.Generator().manual_seed(0)
    return {"net.fc.weight": torch.randn(16, 8, generator=g), "net.fc.bias": torch.zeros(16),
            "net.conv.weight": torch.randn(16, 8, 3, 3, generator=g), "net.emb.weight": torch.randn(10, 8, generator=g)}


def _r(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


FC, CONV = "net.fc", "net.conv"
# id → (the LoRA file's tensors, the module the error must name); each is a good LoRA of its flavour with one factor
# (or the target) made not to fit
LORA_ROWS = {
    "lora-up-rank-not-down-rank": ({f"{FC}.lora_A.weight": _r(4, 8), f"{FC}.lora_B.weight": _r(16, 2)}, FC),
    "kohya-up-rank-not-down-rank": ({f"{FC}.lora_down.weight": _r(2, 8), f"{FC}.lora_up.weight": _r(16, 4),
                                     f"{FC}.alpha": torch.tensor(2.0)}, FC),
    "locon-up-rank-not-down-rank": ({f"{CONV}.lora_down.weight": _r(4, 8, 3, 3),
                                     f"{CONV}.lora_up.weight": _r(16, 2, 1, 1)}, CONV),
    "locon-up-with-a-kernel": ({f"{CONV}.lora_down.weight": _r(4, 8, 1, 1),
                                f"{CONV}.lora_up.weight": _r(16, 4, 3, 3)}, CONV),
    "down-a-vector": ({f"{FC}.lora_A.weight": _r(32), f"{FC}.lora_B.weight": _r(16, 4)}, FC),
    "tucker-mid-not-joining": ({f"{CONV}.lora_mid.weight": _r(3, 2, 3, 3), f"{CONV}.lora_up.weight": _r(16, 2, 1, 1),
                                f"{CONV}.lora_down.weight": _r(3, 8, 1, 1)}, CONV),
    "tucker-mid-alone": ({f"{CONV}.lora_mid.weight": _r(2, 3, 3, 3)}, CONV),
    "loha-rank-mismatch": ({f"{FC}.hada_w1_a": _r(16, 4), f"{FC}.hada_w1_b": _r(3, 8), f"{FC}.hada_w2_a": _r(16, 2),
                            f"{FC}.hada_w2_b": _r(2, 8)}, FC),
    "loha-factors-of-two-shapes": ({f"{FC}.hada_w1_a": _r(16, 4), f"{FC}.hada_w1_b": _r(4, 8),
                                    f"{FC}.hada_w2_a": _r(8, 2), f"{FC}.hada_w2_b": _r(2, 16)}, FC),
    "loha-missing-a-factor": ({f"{FC}.hada_w1_a": _r(16, 4), f"{FC}.hada_w1_b": _r(4, 8),
                               f"{FC}.hada_w2_a": _r(16, 2)}, FC),
    "loha-tucker-core-not-joining": ({f"{CONV}.hada_w1_a": _r(2, 16), f"{CONV}.hada_w1_b": _r(2, 8),
                                      f"{CONV}.hada_t1": _r(3, 2, 3, 3), f"{CONV}.hada_w2_a": _r(2, 16),
                                      f"{CONV}.hada_w2_b": _r(2, 8), f"{CONV}.hada_t2": _r(2, 2, 3, 3)}, CONV),
    "lokr-rank-mismatch": ({f"{FC}.lokr_w1": _r(2, 2), f"{FC}.lokr_w2_a": _r(8, 2), f"{FC}.lokr_w2_b": _r(3, 4)}, FC),
    "lokr-without-w2": ({f"{FC}.lokr_w1": _r(2, 2), f"{FC}.lokr_w2_a": _r(8, 2)}, FC),
    "embedding-rank-mismatch": ({"net.emb.lora_embedding_A": _r(4, 10), "net.emb.lora_embedding_B": _r(8, 2)},
                                "net.emb"),
    "alpha-not-a-number": ({f"{FC}.lora_A.weight": _r(4, 8), f"{FC}.lora_B.weight": _r(16, 4),
                            f"{FC}.alpha": torch.zeros(0)}, FC),
    "dora-magnitude-of-neither-side": ({f"{FC}.lora_A.weight": _r(4, 8), f"{FC}.lora_B.weight": _r(16, 4),
                                        f"{FC}.lora_magnitude_vector": _r(5)}, FC),
    "module-wider-than-its-target": ({f"{FC}.lora_A.weight": _r(4, 8), f"{FC}.lora_B.weight": _r(32, 4)}, FC),
    "conv-module-on-a-linear-target": ({f"{FC}.lora_down.weight": _r(4, 8, 3, 3),
                                        f"{FC}.lora_up.weight": _r(16, 4, 1, 1)}, FC),
}


# ----------------------------------------------------------------------------------------- paths and pickles
def long_paths(tmp: Path) -> dict[str, str]:
    """References the system cannot even look up: id → the reference text."""
    deep = str(tmp) + "/" + "/".join(["d" * 200] * 25) + "/m.safetensors"  # names ≤ 255 bytes, path > 4096
    return {
        "5000-character-name": "a" * 5000,
        "name-over-255-bytes": str(tmp / ("b" * 300 + ".safetensors")),
        "path-over-4096-bytes": deep,
        "multibyte-name-over-255-bytes": str(tmp / ("é" * 130 + ".safetensors")),  # 130 characters, 265 bytes
        "long-model-plus-lora": "x" * 300 + "+lora.safetensors:0.5",
        "model-plus-long-lora": "{base}+" + str(tmp / ("l" * 300 + ".safetensors")) + ":0.8",
        "hub-id-shaped": "n" * 300 + "/model",
    }


class Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/nonexistent/pwned')}",))


def _torchscript(path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; such archives are still around
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)


PICKLE_IDS = ["garbage", "empty", "truncated-zip", "truncated-legacy", "module-object", "evil-raw-pickle",
              "evil-torch-save", "protocol-4", "torchscript", "no-tensors"]


def pickle_rows(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoints that are not (tensor) checkpoints, written into ``tmp``: id → (path, what the message says)."""
    import pickle

    out: dict[str, tuple[Path, str]] = {}

    def put(name, text, write):
        path = tmp / name
        write(path)
        out[name.rsplit(".", 1)[0]] = (path, text)

    good = {"w": torch.ones(3, 3)}
    put("garbage.pt", "cannot read", lambda p: p.write_bytes(b"hello, not a pickle"))
    put("empty.bin", "cannot read", lambda p: p.write_bytes(b""))
    put("truncated-zip.bin", "cannot read", lambda p: (torch.save(good, p), p.write_bytes(p.read_bytes()[:120])))
    put("truncated-legacy.ckpt", "cannot read",
        lambda p: (torch.save(good, p, _use_new_zipfile_serialization=False), p.write_bytes(p.read_bytes()[:60])))
    put("module-object.pt", "refused", lambda p: torch.save({"w": torch.nn.Linear(2, 2)}, p))
    put("evil-raw-pickle.ckpt", "refused", lambda p: p.write_bytes(pickle.dumps({"state_dict": {"w": Evil()}})))
    put("evil-torch-save.bin", "refused", lambda p: torch.save({"w": torch.ones(2), "x": Evil()}, p))
    put("protocol-4.bin", "refused", lambda p: torch.save(good, p, pickle_protocol=4))
    put("torchscript.pt", "cannot read", _torchscript)
    put("no-tensors.ckpt", "no tensors", lambda p: torch.save({"epoch": 3, "lr": [0.1]}, p))
    return out


# ------------------------------------------------------------------------------------------- non-finite weights
def finite_model(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layers.0.w": torch.randn(6, 4, generator=g).to(dtype), "layers.1.w": torch.randn(6, 4, generator=g).to(dtype),
            "alphas_cumprod": torch.linspace(1, 0.1, 5).to(dtype)}  # a buffer copied from the base, never merged


def _spoil(values: list[float], key="layers.1.w", dtype=torch.float32):
    def spoil(state):
        t = state[key].to(torch.float32).flatten()
        t[:len(values)] = torch.tensor(values)
        state[key] = t.reshape(state[key].shape).to(dtype)
        return state
    return spoil


NAN, INF = float("nan"), float("inf")
# id → (dtype of the files, which model is spoiled: "base" or "model", how, the counts the message must give)
NONFINITE_ROWS = {
    "one-nan": (torch.float32, "model", _spoil([NAN]), "1 NaN / 0 Inf"),
    "nans-and-infs": (torch.float32, "model", _spoil([NAN, NAN, INF, -INF, INF]), "2 NaN / 3 Inf"),
    "minus-inf-only": (torch.float32, "model", _spoil([-INF]), "0 NaN / 1 Inf"),
    "nan-in-the-base": (torch.float32, "base", _spoil([NAN] * 12, key="layers.0.w"), "12 NaN / 0 Inf"),
    "fp16-overflowed": (torch.float16, "model", _spoil([INF, INF], dtype=torch.float16), "0 NaN / 2 Inf"),
    "bf16-nan": (torch.bfloat16, "model", _spoil([NAN], dtype=torch.bfloat16), "1 NaN / 0 Inf"),
    "all-nan": (torch.float32, "model", _spoil([NAN] * 24), "24 NaN / 0 Inf"),
}
