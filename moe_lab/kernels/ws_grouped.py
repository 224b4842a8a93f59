"""Warp-specialized, persistent grouped GEMMs for the H100 (sm90), written in Gluon.

The `tl.dot` GEMMs of `fused_moe` issue their loads and their MMAs from the same warps, one output tile
per program; on the H100, Triton 3.6 builds nothing faster from `tl.dot` (its automatic warp
specialization hangs there). These kernels spell out, in Gluon (Triton's explicit-layout language), the
schedule cuBLAS's cooperative kernels run (`benchmarks/ws_gemm.py` measured the dense version level with
cuBLAS's batched GEMM):
- one program per SM walks the (row block, column tile) tiles in `fused_moe`'s grouped order;
- a producer warp issues the TMA loads of the row block and the weight tile(s) of each K step into a ring
  of STAGES shared buffers, each guarded by a `ready` and an `empty` mbarrier;
- the consumer warps (two warp groups at 8 warps, splitting the tile's rows) run asynchronous wgmma on
  each stage as it lands and hand the stage before back once the next is issued; the epilogue goes to
  shared memory and out by a TMA store that runs on under the next tile's MMAs.

Both GEMMs read and write the expert-aligned order (P rows): gate/up reads the tokens gathered into it
(`align._gather_rows_kernel`) and writes the (P, I) intermediate with the gating applied; down reads that
and writes (P, H) with the routing weight applied, and the top-k sum reads each pair's row through
`pair_row` (S,), the aligned row of pair s. Blocks past the last expert's (expert -1) are skipped.
What they take (sm90, bf16/fp16, concatenated gate or none, no bias, the top-k sum) is checked by
`ops.Plan`. Legend as in `fused_moe`.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from moe_lab.kernels import fused_moe

# fused_moe's tile order and epilogue math, compiled as Gluon (the same source; Gluon runs Triton's builtins)
_tile_ids = gluon.jit(fused_moe._tile_ids.fn)
_act = gluon.jit(fused_moe._act.fn)
_gate = gluon.jit(fused_moe._gate.fn)

LOADER_REGS = gl.constexpr(40)  # registers per thread of the producer warp (setmaxnreg); the consumers get the rest


@gluon.jit
def _tile(tile, num_blocks, tiles_n, block_expert_ptr, GROUP_M: gl.constexpr):
    """A tile's row block, column tile and expert (-1: a block past the last expert's)."""
    pid_m, pid_n = _tile_ids(tile, num_blocks, tiles_n, GROUP_M)
    return pid_m, pid_n, gl.load(block_expert_ptr + pid_m)


@gluon.jit
def _load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, block_expert_ptr, num_blocks, tiles_n, K,
                    n_rows, up_row, GATED: gl.constexpr, W_T: gl.constexpr, GROUP_M: gl.constexpr):
    """Producer: each real tile's K steps, a row block and one (or, gated, a gate and an up) weight tile per
    stage, issued as soon as the consumers hand the stage back. The weight is the (E * n_rows, K) view of
    its storage (W_T: the (E * K, n_rows) view of its transposed storage); up rows start at `up_row`."""
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BM: gl.constexpr = x_bufs.type.shape[1]
    BK: gl.constexpr = x_bufs.type.shape[2]
    NW: gl.constexpr = 2 if GATED else 1
    BN: gl.constexpr = w_bufs.type.shape[2] if W_T else w_bufs.type.shape[1]
    nbytes: gl.constexpr = x_desc.block_type.nbytes + NW * w_desc.block_type.nbytes
    step = 0
    for tile in range(gl.program_id(0), num_blocks * tiles_n, gl.num_programs(0)):
        pid_m, pid_n, expert = _tile(tile, num_blocks, tiles_n, block_expert_ptr, GROUP_M)
        if expert >= 0:
            for k in range(0, K, BK):
                s = step % STAGES
                mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1
                bar = ready.index(s)
                mbarrier.expect(bar, nbytes)
                tma.async_copy_global_to_shared(x_desc, [pid_m * BM, k], bar, x_bufs.index(s))
                for j in gl.static_range(NW):
                    col = pid_n * BN + j * up_row
                    if W_T:
                        tma.async_copy_global_to_shared(w_desc, [expert * K + k, col], bar, w_bufs.index(s * NW + j))
                    else:
                        tma.async_copy_global_to_shared(w_desc, [expert * n_rows + col, k], bar,
                                                        w_bufs.index(s * NW + j))
                step += 1


@gluon.jit
def _b_operand(w_buf, W_T: gl.constexpr):
    """A stage's weight tile as wgmma's (BK, BN) operand: stored (BN, BK) it is a transposed view."""
    if W_T:
        return w_buf
    else:
        return w_buf.permute((1, 0))


@gluon.jit
def _mma_partition(x_bufs, w_bufs, ready, empty, c_desc, c_smem, block_expert_ptr, num_blocks, tiles_n, K,
                   sorted_ptr, rw_ptr, S, limit, alpha, GATED: gl.constexpr, ACT: gl.constexpr,
                   MUL_WEIGHT: gl.constexpr, W_T: gl.constexpr, GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """Consumers: wgmma per stage, the stage before handed back once this one's are issued; then the epilogue
    (ACT >= 0: the gating of `fused_moe._gate`, or `_act` without a gate; MUL_WEIGHT: each row times its
    pair's routing weight) into shared memory and out by TMA, waited for only before the next tile's."""
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BM: gl.constexpr = x_bufs.type.shape[1]
    BK: gl.constexpr = x_bufs.type.shape[2]
    NW: gl.constexpr = 2 if GATED else 1
    BN: gl.constexpr = c_desc.block_type.shape[1]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    rows_M = gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
    step = 0
    for tile in range(gl.program_id(0), num_blocks * tiles_n, gl.num_programs(0)):
        pid_m, pid_n, expert = _tile(tile, num_blocks, tiles_n, block_expert_ptr, GROUP_M)
        if expert >= 0:
            acc_g = gl.zeros([BM, BN], gl.float32, acc_layout)
            acc_u = gl.zeros([BM, BN], gl.float32, acc_layout)
            for k in range(0, K, BK):
                s = step % STAGES
                mbarrier.wait(ready.index(s), (step // STAGES) & 1)
                xa = x_bufs.index(s)
                wg = _b_operand(w_bufs.index(s * NW), W_T)
                acc_g = warpgroup_mma(xa, wg, acc_g, is_async=True)
                if GATED:
                    wu = _b_operand(w_bufs.index(s * NW + 1), W_T)
                    acc_u = warpgroup_mma(xa, wu, acc_u, is_async=True)
                    acc_g, acc_u, _, _, _ = warpgroup_mma_wait(2, deps=(acc_g, acc_u, xa, wg, wu))
                else:
                    acc_g, _, _ = warpgroup_mma_wait(1, deps=(acc_g, xa, wg))
                mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=k > 0)  # its wgmmas are done
                step += 1
            acc_g, acc_u = warpgroup_mma_wait(0, deps=(acc_g, acc_u))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
            if GATED:
                out = _gate(acc_g, acc_u, ACT, limit, alpha)
            elif ACT >= 0:
                out = _act(acc_g, ACT, alpha)
            else:
                out = acc_g
            if MUL_WEIGHT:
                pair = gl.load(sorted_ptr + pid_m * BM + rows_M)
                rw = gl.load(rw_ptr + pair, mask=pair < S, other=0.0).to(gl.float32)
                out = out * rw[:, None]
            tma.store_wait(0)
            c_smem.store(out.to(c_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)
    tma.store_wait(0)


@gluon.jit
def _ws_grouped_kernel(x_desc, w_desc, c_desc, block_expert_ptr, sorted_ptr, rw_ptr, num_blocks, K, n_rows,
                       up_row, S, limit, alpha, GATED: gl.constexpr, ACT: gl.constexpr, MUL_WEIGHT: gl.constexpr,
                       W_T: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """c[rows of block b, columns n..] = epilogue(x[rows of b] @ W[expert of b] rows n.. (and up rows)), for
    every real tile. x: (P, K) TMA descriptor, boxes (BM, BK); c: (P, columns) descriptor, boxes (BM, BN)."""
    NW: gl.constexpr = 2 if GATED else 1
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES * NW] + w_desc.block_type.shape, w_desc.layout)
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    tiles_n = gl.cdiv(c_desc.shape[1], c_desc.block_type.shape[1])
    gl.warp_specialize([
        (_mma_partition, (x_bufs, w_bufs, ready, empty, c_desc, c_smem, block_expert_ptr, num_blocks, tiles_n, K,
                          sorted_ptr, rw_ptr, S, limit, alpha, GATED, ACT, MUL_WEIGHT, W_T, GROUP_M, num_warps)),
        (_load_partition, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, block_expert_ptr, num_blocks, tiles_n, K,
                           n_rows, up_row, GATED, W_T, GROUP_M)),
    ], [1], [LOADER_REGS])
