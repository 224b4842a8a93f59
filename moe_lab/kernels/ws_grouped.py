"""Warp-specialized, persistent grouped GEMMs for the H100 (sm90), written in Gluon.

The `tl.dot` GEMMs of `fused_moe` issue their loads and their MMAs from the same warps, one output tile
per program; on the H100, Triton 3.6 builds nothing faster from `tl.dot` (its automatic warp
specialization hangs there). These kernels spell out, in Gluon (Triton's explicit-layout language), the
schedule cuBLAS's cooperative kernels run (`benchmarks/ws_gemm.py` measured the dense version level with
cuBLAS's batched GEMM):
- one program per SM walks the (row block, column tile) tiles in `fused_moe`'s grouped order;
- producer warps issue the loads of the row block and the weight tile(s) of each K step into a ring of
  STAGES shared buffers, each guarded by `ready` mbarriers (TMA bytes; gathered rows) and an `empty` one;
- the consumer warps (two warp groups at 8 warps, splitting the tile's rows: cooperative) run asynchronous
  wgmma on each stage as it lands and hand the stage before back once the next is issued; the epilogue
  goes to shared memory and out by a TMA store that runs on under the next tile's MMAs. With `PINGPONG`
  two consumers of one warp group each take alternate tiles and turns at the MMAs, so that one's epilogue
  runs while the other's MMAs do.

Both GEMMs write the expert-aligned order (P rows): gate/up gathers each row block's token rows by cp.async
(four producer warps: TMA cannot gather rows on the H100) and writes the (P, I) intermediate with the gating
applied, and the aligned row of each pair, `pair_row` (S,); down reads the intermediate by TMA and writes
(P, H) with the routing weight applied; the top-k sum reads each pair's row through `pair_row`. Blocks
past the last expert's (expert -1) are skipped. With `HALF_TAIL` a row block whose real rows fit in its top
half (an expert's last) runs as a half-height tile: its MMAs, its loads by TMA and its store cover BLOCK_M // 2
rows (at 8 consumer warps the two warp groups then split the columns); both GEMMs decide alike, so the rows
past it are neither written nor read. The row-block descriptors then have half-height boxes, two per block.
With `ONE_MMA` (gate/up) a stage's gate and up weight tiles land in the two halves of one (2 BN, BK) buffer
and a whole-height tile runs one wgmma of 2 BN columns per K step instead of two of BN, so each warp group
reads its rows from shared memory once per step, not twice; the accumulator's two halves are gate and up
(every thread holds both halves' values: splitting them moves no data).
What they take (sm90, bf16/fp16, concatenated gate or none, no bias, the top-k sum, contiguous token rows)
is checked by `ops.ws_refusal`. Legend as in `fused_moe`.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_wait)

from moe_lab.kernels import fused_moe

# fused_moe's tile order and epilogue math, compiled as Gluon (the same source; Gluon runs Triton's builtins)
_tile_ids = gluon.jit(fused_moe._tile_ids.fn)
_act = gluon.jit(fused_moe._act.fn)
_gate = gluon.jit(fused_moe._gate.fn)
_half_full = gluon.jit(fused_moe._half_full.fn)

GATHER_WARPS = gl.constexpr(4)  # producer warps: cp.async row gathers are issued per thread
LOADER_REGS = gl.constexpr(80)  # registers per producer thread (setmaxnreg); the consumers get the rest
PINGPONG_REGS = gl.constexpr(216)  # registers per thread of the second consumer (PINGPONG; setmaxnreg)


@gluon.jit
def _tile(tile, num_blocks, tiles_n, block_expert_ptr, expert_block_ptr, GROUP_M: gl.constexpr,
          EXPERT_GROUPS: gl.constexpr):
    """A tile's row block, column tile and expert (-1: a block past the last expert's), in the grouped order:
    GROUP_M row blocks at a time, every column tile of the group before the next group. EXPERT_GROUPS: the
    groups start again at each expert's first block, so that none spans two experts (an expert's blocks
    read each of its weight tiles one after another, while it is in L2); else they run over all blocks."""
    if EXPERT_GROUPS:  # expert e's tiles are [first * tiles_n, (first + blocks) * tiles_n): its blocks' span
        expert = gl.load(block_expert_ptr + tile // tiles_n)
        first = gl.load(expert_block_ptr + gl.maximum(expert, 0))
        blocks = gl.maximum(gl.load(expert_block_ptr + gl.maximum(expert, 0) + 1) - first, 1)
        pid_m, pid_n = _tile_ids(tile - first * tiles_n, blocks, tiles_n, GROUP_M)
        pid_m += first
    else:
        pid_m, pid_n = _tile_ids(tile, num_blocks, tiles_n, GROUP_M)
        expert = gl.load(block_expert_ptr + pid_m)
    return pid_m, pid_n, expert


@gluon.jit
def _w_buf(w_bufs, s, j, NW: gl.constexpr, ONE_MMA: gl.constexpr):
    """Stage s's j-th weight tile (gated: 0 gate, 1 up): its own buffer, or (ONE_MMA) the j-th half of the
    stage's one buffer."""
    if ONE_MMA:
        BN: gl.constexpr = w_bufs.type.shape[1] // NW
        buf = w_bufs.index(s).slice(j * BN, BN)
    else:
        buf = w_bufs.index(s * NW + j)
    return buf


@gluon.jit
def _halves(acc, layout: gl.constexpr):
    """gate and up: the two column halves of a (ROWS, 2 BN) accumulator, each in `layout` (the (ROWS, BN)
    accumulator's); every thread already holds both halves' values, so no data moves."""
    ROWS: gl.constexpr = acc.shape[0]
    BN: gl.constexpr = acc.shape[1] // 2
    g, u = gl.split(gl.permute(gl.reshape(acc, [ROWS, 2, BN]), (0, 2, 1)))
    return gl.convert_layout(g, layout, assert_trivial=True), gl.convert_layout(u, layout, assert_trivial=True)


@gluon.jit
def _each_l2_line(ptr, nbytes, ASM: gl.constexpr):
    """The PTX `ASM` (its address operand $1) once for each 128-byte line of this program's share of the
    nbytes at ptr, the lines split evenly over the programs: a hint to L2 that reads and writes nothing."""
    LINES: gl.constexpr = 32 * GATHER_WARPS
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [GATHER_WARPS], [0])
    start = ptr.to(gl.int64) // 128 * 128
    n_lines = (ptr.to(gl.int64) + nbytes - start + 127) // 128
    per = gl.cdiv(n_lines, gl.num_programs(0))
    first = gl.program_id(0) * per
    for line0 in range(first, gl.minimum(first + per, n_lines), LINES):
        line = gl.minimum(line0 + gl.arange(0, LINES, layout=layout), n_lines - 1)
        gl.inline_asm_elementwise(ASM + "\n\tmov.u32 $0, 0;", "=r,l", [start + line * 128], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _load_partition(load_in, GATED: gl.constexpr, W_T: gl.constexpr, GATHER: gl.constexpr, GROUP_M: gl.constexpr,
                    EXPERT_GROUPS: gl.constexpr, HALF_TAIL: gl.constexpr, ONE_MMA: gl.constexpr,
                    X_L2_LAST: gl.constexpr):
    """Producer: each real tile's K steps, a row block and one (or, gated, a gate and an up) weight tile per
    stage, issued as soon as the consumers hand the stage back. The weight is the (E * n_rows, K) view of
    its storage (W_T: the (E * K, n_rows) view of its transposed storage); up rows start at `up_row`.
    Rows come by TMA from the aligned (P, K) x, in boxes of XB rows (the top one only for a half-height
    tile), or (GATHER) by cp.async straight from the tokens' rows, pair s's token s // TOPK, padding rows
    zero; then the row block's first column tile also writes pair_row[s] = its row, for the top-k sum.
    X_L2_LAST (GATHER; 1 to 8): the leading X_L2_LAST eighths of the tokens' rows (bytes) are first asked into
    L2 with the evict-last priority, so that the weights streaming past do not push them out between the K
    experts that read each row, and handed back to the normal priority once this program's loads are issued
    (no mark outlives the kernel)."""
    (x_desc, w_desc, x_bufs, w_bufs, ready, x_ready, empty, block_expert_ptr, expert_block_ptr, num_blocks, tiles_n,
     K, n_rows, up_row, x_ptr, sorted_ptr, pair_row_ptr, S, TOPK, stride_xt) = load_in
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BM: gl.constexpr = x_bufs.type.shape[1]
    BK: gl.constexpr = x_bufs.type.shape[2]
    XB: gl.constexpr = x_desc.block_type.shape[0]
    NW: gl.constexpr = 2 if GATED else 1
    BN: gl.constexpr = w_desc.block_type.shape[1] if W_T else w_desc.block_type.shape[0]
    w_bytes: gl.constexpr = NW * w_desc.block_type.nbytes
    TPW_K: gl.constexpr = min(BK // 8, 8)  # threads along a row, 8 values (16 bytes) each
    rows_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TPW_K, TPW_K], [GATHER_WARPS, 1], [1, 0])
    rows_M = gl.arange(0, BM, layout=gl.SliceLayout(1, rows_layout))
    cols_K = gl.arange(0, BK, layout=gl.SliceLayout(0, rows_layout))
    x_bytes = ((S // TOPK - 1).to(gl.int64) * stride_xt + K) * x_bufs.type.element_ty.primitive_bitwidth // 8
    x_bytes = x_bytes * X_L2_LAST // 8  # the leading X_L2_LAST eighths of them
    if X_L2_LAST:
        _each_l2_line(x_ptr, x_bytes, "prefetch.global.L2::evict_last [$1];")
    step = 0
    for tile in range(gl.program_id(0), num_blocks * tiles_n, gl.num_programs(0)):
        pid_m, pid_n, expert = _tile(tile, num_blocks, tiles_n, block_expert_ptr, expert_block_ptr, GROUP_M,
                                     EXPERT_GROUPS)
        if expert >= 0:
            x_boxes = BM // XB
            if HALF_TAIL and not GATHER:
                x_boxes = gl.where(_half_full(sorted_ptr, pid_m * BM, S, BM), 1, BM // XB)
            if GATHER:
                pair = gl.load(sorted_ptr + pid_m * BM + rows_M)
                real = pair < S
                if pid_n == 0:
                    gl.store(pair_row_ptr + pair, pid_m * BM + rows_M, mask=real)
                x_ptrs = x_ptr + gl.where(real, pair // TOPK, 0).to(gl.int64)[:, None] * stride_xt + cols_K[None, :]
            for k in range(0, K, BK):
                s = step % STAGES
                mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1
                bar = ready.index(s)
                if GATHER:
                    async_copy.async_copy_global_to_shared(x_bufs.index(s), x_ptrs + k, mask=real[:, None])
                    async_copy.mbarrier_arrive(x_ready.index(s), increment_count=False)
                    mbarrier.expect(bar, w_bytes)
                else:
                    mbarrier.expect(bar, BM // XB * x_desc.block_type.nbytes + w_bytes, pred=x_boxes == BM // XB)
                    if HALF_TAIL:  # a half-height tile: its top box only
                        mbarrier.expect(bar, x_desc.block_type.nbytes + w_bytes, pred=x_boxes == 1)
                    for b in gl.static_range(BM // XB):
                        tma.async_copy_global_to_shared(x_desc, [pid_m * BM + b * XB, k], bar,
                                                        x_bufs.index(s).slice(b * XB, XB), pred=b < x_boxes)
                for j in gl.static_range(NW):
                    col = pid_n * BN + j * up_row
                    if W_T:
                        tma.async_copy_global_to_shared(w_desc, [expert * K + k, col], bar,
                                                        _w_buf(w_bufs, s, j, NW, ONE_MMA))
                    else:
                        tma.async_copy_global_to_shared(w_desc, [expert * n_rows + col, k], bar,
                                                        _w_buf(w_bufs, s, j, NW, ONE_MMA))
                step += 1
    if X_L2_LAST:
        _each_l2_line(x_ptr, x_bytes, "applypriority.global.L2::evict_normal [$1], 128;")


@gluon.jit
def _b_operand(w_buf, W_T: gl.constexpr):
    """A stage's weight tile as wgmma's (BK, BN) operand: stored (BN, BK) it is a transposed view."""
    if W_T:  # one return: the compiler checks every return's type, in a constexpr branch or not
        op = w_buf
    else:
        op = w_buf.permute((1, 0))
    return op


@gluon.jit
def _tile_mma(tile_in, GATED: gl.constexpr, ACT: gl.constexpr, MUL_WEIGHT: gl.constexpr, W_T: gl.constexpr,
              GATHER: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr, CONSUMER: gl.constexpr,
              CONSUMERS: gl.constexpr, ONE_MMA: gl.constexpr):
    """One tile's top ROWS rows (BLOCK_M, or half of it for a half-height tile): wgmma on each stage as it
    lands, the stage before handed back once this one's are issued, the turn passed on (ping-pong), then the
    epilogue into the consumer's shared buffer and out by TMA in boxes of the descriptor's rows. At 8 warps a
    half-height tile has 64 rows, one warp group's: the two warp groups split its columns instead (and with
    ONE_MMA run gate and up as two wgmmas on the buffer's halves, so that each keeps both halves' columns)."""
    (x_bufs, w_bufs, ready, x_ready, empty, turn, c_desc, c_smem, sorted_ptr, rw_ptr, S, limit, alpha, K, step, pid_m,
     pid_n) = tile_in
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BM: gl.constexpr = x_bufs.type.shape[1]
    BK: gl.constexpr = x_bufs.type.shape[2]
    NW: gl.constexpr = 2 if GATED else 1
    BN: gl.constexpr = c_smem.type.shape[1]
    CB: gl.constexpr = c_desc.block_type.shape[0]
    WN: gl.constexpr = max(1, 16 * WARPS // ROWS)  # warps along the columns: 16 rows per warp along the rows
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS // WN, WN],
                                                         instr_shape=[16, BN // WN, 16])
    ONE: gl.constexpr = ONE_MMA and WN == 1  # gate and up as one wgmma of 2 BN columns
    if ONE:
        acc = gl.zeros([ROWS, NW * BN], gl.float32, gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, NW * BN, 16]))
    else:
        acc_g = gl.zeros([ROWS, BN], gl.float32, acc_layout)
        acc_u = gl.zeros([ROWS, BN], gl.float32, acc_layout)
    for k in range(0, K, BK):
        s = step % STAGES
        mbarrier.wait(ready.index(s), (step // STAGES) & 1)
        if GATHER:
            mbarrier.wait(x_ready.index(s), (step // STAGES) & 1)
            fence_async_shared()  # the rows came by cp.async (generic proxy); wgmma reads async
        xa = x_bufs.index(s)
        if ROWS < BM:
            xa = xa.slice(0, ROWS)
        if ONE:
            w = _b_operand(w_bufs.index(s), W_T)
            acc = warpgroup_mma(xa, w, acc, is_async=True)
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, xa, w))
        else:
            wg = _b_operand(_w_buf(w_bufs, s, 0, NW, ONE_MMA), W_T)
            acc_g = warpgroup_mma(xa, wg, acc_g, is_async=True)
            if GATED:
                wu = _b_operand(_w_buf(w_bufs, s, 1, NW, ONE_MMA), W_T)
                acc_u = warpgroup_mma(xa, wu, acc_u, is_async=True)
                acc_g, acc_u, _, _, _ = warpgroup_mma_wait(2, deps=(acc_g, acc_u, xa, wg, wu))
            else:
                acc_g, _, _ = warpgroup_mma_wait(1, deps=(acc_g, xa, wg))
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=k > 0)  # its wgmmas are done
        step += 1
    if CONSUMERS > 1:
        mbarrier.arrive(turn.index((CONSUMER + 1) % CONSUMERS))
    if ONE:
        acc_g, acc_u = _halves(warpgroup_mma_wait(0, deps=(acc,)), acc_layout)
    else:
        acc_g, acc_u = warpgroup_mma_wait(0, deps=(acc_g, acc_u))
    mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
    if GATED:
        out = _gate(acc_g, acc_u, ACT, limit, alpha)
    elif ACT >= 0:
        out = _act(acc_g, ACT, alpha)
    else:
        out = acc_g
    if MUL_WEIGHT:
        pair = gl.load(sorted_ptr + pid_m * BM + gl.arange(0, ROWS, layout=gl.SliceLayout(1, acc_layout)))
        rw = gl.load(rw_ptr + pair, mask=pair < S, other=0.0).to(gl.float32)
        out = out * rw[:, None]
    c_tile = c_smem
    if ROWS < BM:
        c_tile = c_smem.slice(0, ROWS)
    tma.store_wait(0)
    c_tile.store(out.to(c_desc.dtype))
    fence_async_shared()
    for b in gl.static_range(ROWS // CB):
        tma.async_copy_shared_to_global(c_desc, [pid_m * BM + b * CB, pid_n * BN], c_tile.slice(b * CB, CB))


@gluon.jit
def _mma_partition(mma_in, GATED: gl.constexpr, ACT: gl.constexpr, MUL_WEIGHT: gl.constexpr, W_T: gl.constexpr,
                   GATHER: gl.constexpr, GROUP_M: gl.constexpr, EXPERT_GROUPS: gl.constexpr, HALF_TAIL: gl.constexpr,
                   CONSUMER: gl.constexpr, CONSUMERS: gl.constexpr, WARPS: gl.constexpr, ONE_MMA: gl.constexpr):
    """Consumer CONSUMER of CONSUMERS, WARPS warps: every CONSUMERS-th real tile (`_tile_mma`; the epilogue
    ACT >= 0: the gating of `fused_moe._gate`, or `_act` without a gate; MUL_WEIGHT: each row times its
    pair's routing weight), its TMA store waited for only before its next tile's. Two consumers (ping-pong)
    take turns at the MMAs (`turn`: each waits for the other's main loop to be issued before starting its
    own), so one's epilogue runs under the other's MMAs, and each waits on its stages in the order they are
    loaded."""
    (x_bufs, w_bufs, ready, x_ready, empty, turn, c_desc, c_bufs, block_expert_ptr, expert_block_ptr, num_blocks,
     tiles_n, K, sorted_ptr, rw_ptr, S, limit, alpha) = mma_in
    BM: gl.constexpr = x_bufs.type.shape[1]
    BK: gl.constexpr = x_bufs.type.shape[2]
    c_smem = c_bufs.index(CONSUMER)
    k_steps = gl.cdiv(K, BK)
    real = 0  # real tiles so far, every consumer's
    mine = 0  # this consumer's
    for tile in range(gl.program_id(0), num_blocks * tiles_n, gl.num_programs(0)):
        pid_m, pid_n, expert = _tile(tile, num_blocks, tiles_n, block_expert_ptr, expert_block_ptr, GROUP_M,
                                     EXPERT_GROUPS)
        if expert >= 0:
            if real % CONSUMERS == CONSUMER:
                if CONSUMERS > 1:  # consumer 0's first wait passes at once (a fresh barrier, parity 1)
                    mbarrier.wait(turn.index(CONSUMER), (mine & 1) ^ (1 if CONSUMER == 0 else 0))
                tile_in = (x_bufs, w_bufs, ready, x_ready, empty, turn, c_desc, c_smem, sorted_ptr, rw_ptr, S, limit,
                           alpha, K, real * k_steps, pid_m, pid_n)
                if HALF_TAIL and _half_full(sorted_ptr, pid_m * BM, S, BM):
                    _tile_mma(tile_in, GATED, ACT, MUL_WEIGHT, W_T, GATHER, BM // 2, WARPS, CONSUMER, CONSUMERS,
                              ONE_MMA)
                else:
                    _tile_mma(tile_in, GATED, ACT, MUL_WEIGHT, W_T, GATHER, BM, WARPS, CONSUMER, CONSUMERS, ONE_MMA)
                mine += 1
            real += 1
    tma.store_wait(0)


@gluon.jit
def _ws_grouped_kernel(x_desc, w_desc, c_desc, block_expert_ptr, expert_block_ptr, sorted_ptr, rw_ptr, x_ptr,
                       pair_row_ptr, num_blocks, K, n_rows, up_row, S, TOPK, stride_xt, limit, alpha,
                       GATED: gl.constexpr, ACT: gl.constexpr, MUL_WEIGHT: gl.constexpr, W_T: gl.constexpr,
                       GATHER: gl.constexpr, GROUP_M: gl.constexpr, EXPERT_GROUPS: gl.constexpr, STAGES: gl.constexpr,
                       PINGPONG: gl.constexpr, BLOCK_M: gl.constexpr,
                       HALF_TAIL: gl.constexpr, ONE_MMA: gl.constexpr, X_L2_LAST: gl.constexpr,
                       num_warps: gl.constexpr):
    """c[rows of block b, columns n..] = epilogue(x[rows of b] @ W[expert of b] rows n.. (and up rows)), for
    every real tile. x: (P, K) TMA descriptor, boxes (XB, BK), or (GATHER) the tokens (T, K) at x_ptr, rows
    gathered (`x_desc` then only gives the box); c: (P, columns) descriptor, boxes (XB, BN); XB is BLOCK_M,
    or with HALF_TAIL half of it. One consumer of num_warps warps (two warp groups at 8: cooperative), or
    (PINGPONG) two of num_warps each. ONE_MMA (gated, weights not transposed): gate and up in one buffer per
    stage, one wgmma per K step. X_L2_LAST (GATHER): the token rows kept in L2 (`_load_partition`)."""
    NW: gl.constexpr = 2 if GATED else 1
    CONSUMERS: gl.constexpr = 2 if PINGPONG else 1
    BK: gl.constexpr = x_desc.block_type.shape[1]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BK], x_desc.layout)
    if ONE_MMA:
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, NW * w_desc.block_type.shape[0],
                                                          w_desc.block_type.shape[1]], w_desc.layout)
    else:
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES * NW] + w_desc.block_type.shape, w_desc.layout)
    c_bufs = gl.allocate_shared_memory(c_desc.dtype, [CONSUMERS, BLOCK_M, BN], c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    x_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(x_ready.index(i), count=32 * GATHER_WARPS)  # each producer thread's cp.async arrive
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    tiles_n = gl.cdiv(c_desc.shape[1], BN)
    # runtime values travel as one tuple each; the constexprs are written in every partition's own tuple (a
    # tuple built first would not keep them constexpr)
    mma_in = (x_bufs, w_bufs, ready, x_ready, empty, turn, c_desc, c_bufs, block_expert_ptr, expert_block_ptr,
              num_blocks, tiles_n, K, sorted_ptr, rw_ptr, S, limit, alpha)
    load_in = (x_desc, w_desc, x_bufs, w_bufs, ready, x_ready, empty, block_expert_ptr, expert_block_ptr, num_blocks,
               tiles_n, K, n_rows, up_row, x_ptr, sorted_ptr, pair_row_ptr, S, TOPK, stride_xt)
    if PINGPONG:
        gl.warp_specialize([
            (_mma_partition, (mma_in, GATED, ACT, MUL_WEIGHT, W_T, GATHER, GROUP_M, EXPERT_GROUPS, HALF_TAIL, 0, 2,
                                num_warps, ONE_MMA)),
            (_mma_partition, (mma_in, GATED, ACT, MUL_WEIGHT, W_T, GATHER, GROUP_M, EXPERT_GROUPS, HALF_TAIL, 1, 2,
                                num_warps, ONE_MMA)),
            (_load_partition, (load_in, GATED, W_T, GATHER, GROUP_M, EXPERT_GROUPS, HALF_TAIL, ONE_MMA,
                                 X_L2_LAST)),
        ], [num_warps, GATHER_WARPS], [PINGPONG_REGS, LOADER_REGS])
    else:
        gl.warp_specialize([
            (_mma_partition, (mma_in, GATED, ACT, MUL_WEIGHT, W_T, GATHER, GROUP_M, EXPERT_GROUPS, HALF_TAIL, 0, 1,
                                num_warps, ONE_MMA)),
            (_load_partition, (load_in, GATED, W_T, GATHER, GROUP_M, EXPERT_GROUPS, HALF_TAIL, ONE_MMA,
                                 X_L2_LAST)),
        ], [GATHER_WARPS], [LOADER_REGS])
