"""Both grouped GEMMs of a call in one launch, their tiles interleaved (a config's `"INTERLEAVE": lag`).

Two launches leave a seam: down's programs start only as gate/up's last wave drains (with PDL, once every gate/up
program is on the GPU), so that wave runs part-empty. Here one launch holds every gate/up tile and every down tile.
Each program takes a ticket (an atomic counter, so tickets go in the order programs start) and the ticket names
its tile (`_ticket_item`):

- tickets [0, lag * cu): gate/up tiles 0.. (cu = gate/up's column tiles per row block, cd = down's);
- then B - lag periods of cu gate/up tiles followed by cd down tiles;
- then the down tiles left (those of the last `lag` row blocks).

Tiles within each GEMM keep their grouped order (`fused_moe._tile_ids`). A gate/up tile bumps its row block's
counter after its stores (`ready.signal_done`); a down tile spins until its row block's counter reaches cu
(`ready.wait_done`). A lag of at least GROUP_M(gate/up) + GROUP_M(down) - 2 row blocks puts every gate/up tile a
down tile waits for at an earlier ticket, so its program is on the GPU or done, and nothing can hang (the plan
refuses a smaller lag). The alignment zeroes the ticket and the B row-block counters (stored after
`expert_block`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels.fused_moe import _down_tile, _gate_up_tile, _half_full, _prefetch_guessed_tile, _tile_ids
from moe_lab.kernels.pdl import pdl_enter
from moe_lab.kernels.ready import signal_done, wait_done


def counters(num_blocks: int) -> int:
    """Counters an interleaved call needs after `expert_block`: the ticket, then one per row block."""
    return 1 + num_blocks


def min_lag(up_group_m: int, down_group_m: int) -> int:
    """The smallest lag (row blocks) at which every down tile waits only on gate/up tiles of earlier tickets."""
    return max(1, up_group_m + down_group_m - 2)


@triton.jit
def _ticket_item(t, num_blocks_m, lag, cu, cd):
    """(is_up, pid) of ticket t: a gate/up tile's pid, or a down tile's, in each GEMM's own grouped order."""
    head = lag * cu
    period = cu + cd
    q = tl.maximum(t - head, 0)
    p = q // period
    r = q - p * period
    periods = num_blocks_m - lag
    in_periods = (t >= head) & (p < periods)
    is_up = (t < head) | (in_periods & (r < cu))
    up_pid = tl.where(t < head, t, head + p * cu + r)
    down_pid = tl.where(in_periods, p * cd + r - cu, periods * cd + q - periods * period)
    return is_up, tl.where(is_up, up_pid, down_pid)


@triton.jit
def _interleaved_kernel(
    x_ptr, x_half_ptr, w_up_ptr, b_up_ptr, a_ptr, a_down_ptr, a_down_half_ptr, w_down_ptr, b_down_ptr, y_ptr,
    topk_w_ptr, sorted_ptr, block_expert_ptr, counters_ptr,
    S, TOPK, H, I, num_blocks_m, lag,
    stride_xt, stride_xh, stride_ue, stride_un, stride_uh, stride_ube, stride_ubn,
    stride_de, stride_dh, stride_di, stride_dbe, stride_dbh,
    limit, alpha, E, guess_blocks, prefetch_programs,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    DOT_MODE: tl.constexpr, BLOCK_M: tl.constexpr, HALF_TAIL: tl.constexpr,
    UP_BLOCK_N: tl.constexpr, UP_BLOCK_K: tl.constexpr, UP_GROUP_M: tl.constexpr, UP_EVEN_K: tl.constexpr,
    ONE_DOT: tl.constexpr, UP_W_TMA: tl.constexpr, UP_W_T: tl.constexpr, UP_A_TMA: tl.constexpr,
    DOWN_BLOCK_N: tl.constexpr, DOWN_BLOCK_K: tl.constexpr, DOWN_GROUP_M: tl.constexpr, DOWN_EVEN_K: tl.constexpr,
    DOWN_W_TMA: tl.constexpr, DOWN_W_T: tl.constexpr, DOWN_A_TMA: tl.constexpr,
    PDL: tl.constexpr = False, OUT_EVICT: tl.constexpr = "", W_PREFETCH_LINES: tl.constexpr = 0,
):
    """The arguments of `_gate_up_grouped_kernel` and `_down_grouped_kernel` (UP_ / DOWN_ their tiles), the
    intermediate (P, I) row-major as gate/up stores it (a_ptr) and as down loads it (a_down_ptr, a_down_half_ptr:
    a_ptr again, or with DOWN_A_TMA its descriptors), y (S, H) row-major; counters_ptr: the ticket, then a counter
    per row block."""
    cu = tl.cdiv(I, UP_BLOCK_N)
    cd = tl.cdiv(H, DOWN_BLOCK_N)
    if W_PREFETCH_LINES > 0:
        _prefetch_guessed_tile(w_up_ptr, num_blocks_m, cu, E, guess_blocks, prefetch_programs, I, H, stride_ue,
                               stride_un, GATE_MODE, UP_BLOCK_N, UP_GROUP_M, W_PREFETCH_LINES)
    pdl_enter(PDL)
    is_up, pid = _ticket_item(tl.atomic_add(counters_ptr, 1), num_blocks_m, lag, cu, cd)
    if is_up:
        pid_m, pid_n = _tile_ids(pid, num_blocks_m, cu, UP_GROUP_M)
        expert = tl.load(block_expert_ptr + pid_m)
        if expert >= 0:  # blocks past the last expert's: nothing to do, and no down tile waits on them
            row0 = pid_m * BLOCK_M
            if HALF_TAIL and _half_full(sorted_ptr, row0, S, BLOCK_M):
                _gate_up_tile(x_half_ptr, w_up_ptr, b_up_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                              stride_xt, stride_xh, stride_ue, stride_un, stride_uh, stride_ube, stride_ubn, I,
                              limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M // 2, UP_BLOCK_N,
                              UP_BLOCK_K, UP_EVEN_K, ONE_DOT, UP_W_TMA, UP_W_T, UP_A_TMA, OUT_EVICT)
            else:
                _gate_up_tile(x_ptr, w_up_ptr, b_up_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                              stride_xt, stride_xh, stride_ue, stride_un, stride_uh, stride_ube, stride_ubn, I,
                              limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M, UP_BLOCK_N,
                              UP_BLOCK_K, UP_EVEN_K, ONE_DOT, UP_W_TMA, UP_W_T, UP_A_TMA, OUT_EVICT)
            signal_done(counters_ptr + 1 + pid_m)
    else:
        pid_m, pid_n = _tile_ids(pid, num_blocks_m, cd, DOWN_GROUP_M)
        expert = tl.load(block_expert_ptr + pid_m)
        if expert >= 0:
            row0 = pid_m * BLOCK_M
            wait_done(counters_ptr + 1 + pid_m, cu, DOWN_A_TMA)
            if HALF_TAIL and _half_full(sorted_ptr, row0, S, BLOCK_M):
                _down_tile(a_down_half_ptr, w_down_ptr, b_down_ptr, y_ptr, topk_w_ptr, sorted_ptr, row0, pid_n,
                           expert, S, H, I, I, stride_de, stride_dh, stride_di, stride_dbe, stride_dbh, H,
                           MUL_WEIGHT, HAS_BIAS, DOT_MODE, BLOCK_M // 2, DOWN_BLOCK_N, DOWN_BLOCK_K, DOWN_EVEN_K,
                           DOWN_W_TMA, DOWN_W_T, DOWN_A_TMA, OUT_EVICT)
            else:
                _down_tile(a_down_ptr, w_down_ptr, b_down_ptr, y_ptr, topk_w_ptr, sorted_ptr, row0, pid_n,
                           expert, S, H, I, I, stride_de, stride_dh, stride_di, stride_dbe, stride_dbh, H,
                           MUL_WEIGHT, HAS_BIAS, DOT_MODE, BLOCK_M, DOWN_BLOCK_N, DOWN_BLOCK_K, DOWN_EVEN_K,
                           DOWN_W_TMA, DOWN_W_T, DOWN_A_TMA, OUT_EVICT)


def grid_size(num_blocks: int, I: int, H: int, up_block_n: int, down_block_n: int) -> int:
    """Programs of an interleaved call: every gate/up tile and every down tile."""
    return num_blocks * (triton.cdiv(I, up_block_n) + triton.cdiv(H, down_block_n))
