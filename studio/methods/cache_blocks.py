"""Cache-sized blocks for the CPU kernels: the block size, and ``blocked_cast``, which computes a result block by
block and rounds each block once into the output dtype."""

from __future__ import annotations

import torch

# Elements per block. Each op on a block releases and retakes the GIL, so with the engine's two worker threads
# small blocks serialise on it: big blocks (still cache-resident) when ops run on the calling thread alone (the
# engine sets one intra-op thread per worker). With intra-op threads, blocks of torch's grain size
# (at::internal::GRAIN_SIZE = 32768) keep every op on the calling thread: per-op OpenMP barriers cost more than a
# block's work whenever a core is busy elsewhere.
BLOCK = 1 << 18
SERIAL_BLOCK = 1 << 15


def block_size() -> int:
    return BLOCK if torch.get_num_threads() == 1 else min(BLOCK, SERIAL_BLOCK)


def blocked_cast(shape, out_dtype: torch.dtype, fill, block: int | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor of ``out_dtype`` whose elements [s, e) are ``fill(s, e, acc)``'s float32 values, computed block by
    block (``block`` elements, default :func:`block_size`) and rounded once: equal to computing the whole float32
    tensor and casting it, without the float32 tensor (its fresh pages) or the extra pass. ``acc`` is a reused
    cache-sized float32 scratch, or for a float32 result the output block itself (``fill`` fills it in place).
    ``out``: a contiguous float32 tensor of ``shape`` to fill instead of a new one (the live engine's merged state).
    """
    res = torch.empty(shape, dtype=out_dtype) if out is None else out
    flat = res.view(-1)
    n = flat.numel()
    blk = max(1, min(block or block_size(), n))
    direct = out_dtype == torch.float32
    acc = None if direct else torch.empty(blk, dtype=torch.float32)
    for s in range(0, n, blk):
        e = min(n, s + blk)
        if direct:
            fill(s, e, flat[s:e])
        else:
            flat[s:e].copy_(fill(s, e, acc[: e - s]))
    return res
