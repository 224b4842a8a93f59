"""The top-k sum after the down GEMM: out[t] = sum_k y[t*K + k], float32 accumulation, in k order.

The down GEMM has already applied each pair's routing weight, so this is a plain sum over the K rows
of each token in y (S, H), (t, k) order, or (INDIRECT) in y (P, H), pair s in row pair_row[s]
(the warp-specialized GEMMs write the expert-aligned order, `ws_grouped`). One program per (BLOCK_T
tokens, BLOCK_H columns) reads its tokens' K rows once and writes their sums: S*H + T*H elements
moved, as few as a sum can.

TILE: the one tile within 4% of the best of 24 at every (model, T) measured on the H100, where torch's
`sum(dim=1)` over the (T, K, H) view took 1.05 to 1.28x as long (`benchmarks/topk_sum.py`,
data/results/h100/triton_gpu_run4/topk_sum/).
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels.pdl import pdl_enter


@triton.jit
def _topk_sum_kernel(y_ptr, out_ptr, pair_row_ptr, T, H, TOPK: tl.constexpr, BLOCK_T: tl.constexpr,
                     BLOCK_H: tl.constexpr, INDIRECT: tl.constexpr = False, PDL: tl.constexpr = False):
    pdl_enter(PDL)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (t < T)[:, None] & (h < H)[None, :]
    rows = t.to(tl.int64) * TOPK
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        if INDIRECT:
            row = tl.load(pair_row_ptr + rows + k, mask=t < T, other=0).to(tl.int64)
        else:
            row = rows + k
        acc += tl.load(y_ptr + row[:, None] * H + h[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64)[:, None] * H + h[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


TILE = {"BLOCK_T": 1, "BLOCK_H": 1024, "num_warps": 8}
