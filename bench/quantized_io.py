"""GGUF read throughput: studio's GGUF source (open, dequantize every tensor to float32 torch tensors, in order)
against the gguf package's own loop (``GGUFReader`` + ``gguf.quants.dequantize`` per tensor), and the quantization
error and write speed of ``merge --quantize``'s GGUF/fp8 writers on the same weights.

    python bench/quantized_io.py [--mib 256] [--types Q8_0,Q4_0,F16] [--repeats 3]

Writes a synthetic GGUF per type (matrices of 4096 columns, ``--mib`` of float32 in all) in a temporary folder and
prints, per type: MB/s (float32 bytes produced) for both loops, their ratio (ours / package), and the relative
Frobenius error and MB/s of writing the same weights through studio.output.quantize; then fp8's and scaled fp8's
error on the same weights (N(0, 0.02²), as trained matrices roughly are).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studio.output.quantize import ErrorTally, fp8_tensors, write_gguf  # noqa: E402 - the checkout, not an installed copy
from studio.sources import DictSource  # noqa: E402
from studio.sources.gguf_file import GGUFFile  # noqa: E402


def synthetic(mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = 1024
    count = max(1, mib * 2**20 // (rows * 4096 * 4))
    return {f"blocks.{i}.weight": (rng.standard_normal((rows, 4096)) * 0.02).astype(np.float32) for i in range(count)}


def write(path: Path, tensors: dict[str, np.ndarray], qtype) -> None:
    w = gguf.GGUFWriter(str(path), "bench")
    for name, a in tensors.items():
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def package_loop(path: Path) -> int:
    total = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        total += gguf.quants.dequantize(t.data, t.tensor_type).nbytes
    return total


def studio_loop(path: Path) -> int:
    src = GGUFFile(path)
    total = 0
    for k in src.keys():
        total += src.get(k).nbytes
        src.release(k)
    return total


def best(fn, path, repeats) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        size = fn(path)
        times.append(time.perf_counter() - t0)
    return min(times), size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--types", default="Q8_0,Q4_0,Q5_1,F16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tensors = synthetic(args.mib)
    torch_tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.types.split(","):
            qtype = gguf.GGMLQuantizationType[name]
            path = Path(tmp) / f"{name}.gguf"
            write(path, tensors, qtype)
            t_pkg, size = best(package_loop, path, args.repeats)
            t_ours, _ = best(studio_loop, path, args.repeats)
            t0 = time.perf_counter()
            report = write_gguf(DictSource(torch_tensors), Path(tmp) / f"out-{name}.gguf", name.lower())
            t_write = time.perf_counter() - t0
            print(f"{name:5s} read: gguf package {size / t_pkg / 1e6:7.0f} MB/s · studio {size / t_ours / 1e6:7.0f} MB/s"
                  f" · ratio {t_pkg / t_ours:.2f} | write {size / t_write / 1e6:5.0f} MB/s · relative error "
                  f"{report['overall']['relative_error']:.2e}")
    for scaled in (False, True):  # fp8 outputs: the same weights' error
        tally = ErrorTally()
        for k, t in torch_tensors.items():
            tally.add(k, t, fp8_tensors(k, t, scaled)[1])
        print(f"{'fp8-scaled' if scaled else 'fp8':10s} relative error {tally.summary()['overall']['relative_error']:.2e}")


if __name__ == "__main__":
    main()
