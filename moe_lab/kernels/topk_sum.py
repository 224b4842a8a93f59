"""The top-k sum after the down GEMM: out[t] = sum_k y[t*K + k], float32 accumulation, in k order.

The down GEMM has already applied each pair's routing weight, so this is a plain sum over the K rows
of each token in y (S, H), (t, k) order, or (INDIRECT) in y (P, H), pair s in row pair_row[s]
(the warp-specialized GEMMs write the expert-aligned order, `ws_grouped`). One program per (BLOCK_T
tokens, BLOCK_H columns) reads its tokens' K rows once and writes their sums: S*H + T*H elements
moved, as few as a sum can. DISCARD (`l2_temps`, the call's last kernel): each program then drops the
L2 lines of the y it has read (rows of a multiple of 128 bytes from a line-aligned y, as the plan makes
them: whole lines, one element each over its TOPK_P2 >= TOPK pairs) and its share of the dead
intermediate's (dead_ptr; the row blocks gate/up wrote, of dead_block_bytes each: their count is at E in the
alignment's expert_block), none of them written back. READY_WAIT (a SPLIT call, `ready`): the launch before
is the second part's down; each program also waits for the first part's down (wait_programs programs).

TILE: the one tile within 4% of the best of 24 at every (model, T) measured on the H100, where torch's
`sum(dim=1)` over the (T, K, H) view took 1.05 to 1.28x as long (`benchmarks/topk_sum.py`,
data/results/h100/triton_gpu_run4/topk_sum/).
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels.l2_temps import discard_line_addrs, discard_share
from moe_lab.kernels.pdl import pdl_enter
from moe_lab.kernels.ready import wait_done


@triton.jit
def _y_row(pair_row_ptr, rows, t, T, k, TOPK: tl.constexpr, INDIRECT: tl.constexpr):
    """The y row of each token's k-th pair (k a number, or a range of them within TOPK)."""
    if INDIRECT:
        return tl.load(pair_row_ptr + rows + k, mask=(t < T) & (k < TOPK), other=0).to(tl.int64)
    return rows + k


@triton.jit
def _topk_sum_kernel(y_ptr, out_ptr, pair_row_ptr, dead_ptr, dead_block_bytes, expert_block_ptr, E, T, H,
                     wait_programs, TOPK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                     INDIRECT: tl.constexpr = False, DISCARD: tl.constexpr = False, TOPK_P2: tl.constexpr = 1,
                     READY_WAIT: tl.constexpr = False, PDL: tl.constexpr = False):
    pdl_enter(PDL)
    if READY_WAIT:  # SPLIT: the launch before is part two's down; part one's counts at expert_block[E + 3]
        wait_done(expert_block_ptr + E + 3, wait_programs, False)
    if DISCARD:
        dead_bytes = tl.load(expert_block_ptr + E).to(tl.int64) * dead_block_bytes  # first: its wait overlaps y's
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (t < T)[:, None] & (h < H)[None, :]
    rows = t.to(tl.int64) * TOPK
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for k in tl.static_range(TOPK):
        row = _y_row(pair_row_ptr, rows, t, T, k, TOPK, INDIRECT)
        acc += tl.load(y_ptr + row[:, None] * H + h[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64)[:, None] * H + h[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
    if DISCARD:
        tl.debug_barrier()  # every thread's loads are in (their values are stored) before any line goes
        ITEM: tl.constexpr = y_ptr.dtype.element_ty.primitive_bitwidth // 8
        LINES_H: tl.constexpr = BLOCK_H * ITEM // 128
        h0 = tl.program_id(1) * BLOCK_H
        k = tl.arange(0, TOPK_P2)
        j = tl.arange(0, LINES_H)
        t_TKJ = t[:, None, None]
        row_TK = _y_row(pair_row_ptr, rows[:, None], t[:, None], T, k[None, :], TOPK, INDIRECT)
        own = (t_TKJ < T) & (k < TOPK)[None, :, None] & (j < tl.minimum(H - h0, BLOCK_H) * ITEM // 128)[None, None, :]
        line = (y_ptr + row_TK[:, :, None] * H + h0).to(tl.int64) + j[None, None, :] * 128
        line = tl.where(own, line, tl.max(tl.where(own, line, 0)))  # a repeat of an own line
        discard_line_addrs(tl.reshape(line, [BLOCK_T * TOPK_P2 * LINES_H]))  # one element per line: no repeats
        discard_share(dead_ptr, dead_bytes, 256)

TILE = {"BLOCK_T": 1, "BLOCK_H": 1024, "num_warps": 8}
