"""A persistent, warp-specialized batched GEMM for the H100, written in Gluon (Triton's explicit-layout language).

Run 10 found the gap between our grouped GEMMs and cuBLAS's to be the GEMM Triton 3.6 generates from `tl.dot`:
one tile per program, the loads and the MMAs issued by the same warps, no warp specialization (its automatic
version hangs on the H100, run 7). Gluon, shipped with Triton 3.6, lets a kernel spell out what cuBLAS's
`coop` kernels do:
- a producer partition (one warp) issues the TMA loads of A and W into a ring of `STAGES` shared buffers,
  each guarded by a `ready` and an `empty` mbarrier;
- the default partition (`num_warps` consumer warps, two warp groups at 8, splitting the tile's rows, as
  CUTLASS's cooperative schedule does) runs asynchronous wgmma on each stage as it arrives, hands the stage
  back once the next wgmma has been issued, and stores its tile;
- persistent: one program per SM walks the tiles, so the producer fills the next tile's stages while the
  consumers run the epilogue of the last one.
`benchmarks/triton_profile.py` times it on the balanced products beside cuBLAS and `dense_tma_gemm.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
from bench_rows import versions, write_rows
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

TILES = [(128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 64, 5, 4),
         (128, 128, 64, 6, 8)]  # (BM, BN, BK, stages, consumer warps)


@gluon.jit
def _tile_origin(tile, M, N, BM: gl.constexpr, BN: gl.constexpr):
    """The group and the first row and column of a tile. A group's row blocks are adjacent in tile order, so
    the programs running at once share its weight tile in L2."""
    tiles_m = gl.cdiv(M, BM)
    per_group = tiles_m * gl.cdiv(N, BN)
    e = tile // per_group
    rest = tile % per_group
    return e, (rest % tiles_m) * BM, (rest // tiles_m) * BN


@gluon.jit
def _load_partition(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, tiles):
    """Producer: TMA loads of every tile's K steps into the ring, one stage as soon as the consumers free it."""
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    BM: gl.constexpr = a_bufs.type.shape[1]
    BK: gl.constexpr = a_bufs.type.shape[2]
    BN: gl.constexpr = w_bufs.type.shape[1]
    step = 0
    for tile in range(gl.program_id(0), tiles, gl.num_programs(0)):
        e, row, col = _tile_origin(tile, M, N, BM, BN)
        for k in range(0, K, BK):
            s = step % STAGES
            mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1 at once
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [e * M + row, k], ready.index(s), a_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [e * N + col, k], ready.index(s), w_bufs.index(s))
            step += 1


@gluon.jit
def _mma_partition(a_bufs, w_bufs, ready, empty, c_desc, c_smem, M, N, K, tiles, num_warps: gl.constexpr):
    """Consumers: wgmma on each stage as it lands, the stage before handed back once this one is issued; then
    the tile, rounded to c's dtype, into shared memory and out by a TMA store that runs on under the next
    tile's MMAs (waited for only before the buffer is written again; the box clips at the group's M rows)."""
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    BM: gl.constexpr = a_bufs.type.shape[1]
    BK: gl.constexpr = a_bufs.type.shape[2]
    BN: gl.constexpr = w_bufs.type.shape[1]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, min(BN, 256), 16])
    step = 0
    for tile in range(gl.program_id(0), tiles, gl.num_programs(0)):
        e, row, col = _tile_origin(tile, M, N, BM, BN)
        acc = gl.zeros([BM, BN], gl.float32, acc_layout)
        for k in range(0, K, BK):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            a_tile, w_tile = a_bufs.index(s), w_bufs.index(s).permute((1, 0))
            acc = warpgroup_mma(a_tile, w_tile, acc, is_async=True)
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a_tile, w_tile))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=k > 0)  # the previous wgmma is done
            step += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
        tma.store_wait(0)
        c_smem.reshape([BM, BN]).store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [e, row, col], c_smem)
    tma.store_wait(0)


@gluon.jit
def _ws_bmm_kernel(a_desc, w_desc, c_desc, M, N, K, tiles, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """c[e] = a[e] @ w[e].T for every group e; a is (E*M, K) and w (E*N, K), both loaded by TMA, c (E, M, N)
    stored by TMA."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    gl.warp_specialize([
        (_mma_partition, (a_bufs, w_bufs, ready, empty, c_desc, c_smem, M, N, K, tiles, num_warps)),
        (_load_partition, (a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, tiles)),
    ], [1], [24])


def ws_bmm(a_EMK: torch.Tensor, w_EKN: torch.Tensor, out_EMN: torch.Tensor, tile: tuple,
           programs: int | None = None) -> torch.Tensor:
    """out = a @ w per group, like `torch.bmm(a, w, out=out)`, operands as `dense_tma_gemm.batched_operands`
    takes them, bf16 or fp16. One program per SM (or `programs`)."""
    from dense_tma_gemm import batched_operands
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    BM, BN, BK, stages, warps = tile
    E, M, N, K, w_ENK = batched_operands("ws_bmm", a_EMK, w_EKN, out_EMN)
    if a_EMK.dtype not in (torch.bfloat16, torch.float16) or w_EKN.dtype != a_EMK.dtype:
        raise ValueError(f"ws_bmm: bf16 or fp16 operands of one dtype, got {a_EMK.dtype} and {w_EKN.dtype}")
    dtype = gl.bfloat16 if a_EMK.dtype == torch.bfloat16 else gl.float16
    a_desc = TensorDescriptor(a_EMK, [E * M, K], [K, 1], [BM, BK],
                              gl.NVMMASharedLayout.get_default_for([BM, BK], dtype))
    w_desc = TensorDescriptor(w_ENK, [E * N, K], [K, 1], [BN, BK],
                              gl.NVMMASharedLayout.get_default_for([BN, BK], dtype))
    c_desc = TensorDescriptor(out_EMN, [E, M, N], [M * N, N, 1], [1, BM, BN],
                              gl.NVMMASharedLayout.get_default_for([1, BM, BN], dtype))
    tiles = E * triton.cdiv(M, BM) * triton.cdiv(N, BN)
    if programs is None:
        programs = torch.cuda.get_device_properties(a_EMK.device).multi_processor_count
    _ws_bmm_kernel[(min(programs, tiles),)](a_desc, w_desc, c_desc, M, N, K, tiles, stages, num_warps=warps)
    return out_EMN


PRODUCTS = {  # name -> (E, M, N, K): the balanced products at 8192 tokens and at the ridge, and a dense square
    "qwen1.5 T=8192 gate/up": (60, 547, 2816, 2048), "qwen1.5 T=8192 down": (60, 547, 2048, 1408),
    "qwen3 T=8192 gate/up": (128, 512, 1536, 2048), "qwen3 T=8192 down": (128, 512, 2048, 768),
    "olmoe T=8192 gate/up": (64, 1024, 2048, 2048), "olmoe T=8192 down": (64, 1024, 2048, 1024),
    "qwen3 T=4096 gate/up": (128, 256, 1536, 2048), "olmoe T=2048 gate/up": (64, 256, 2048, 2048),
    "dense 4096^3": (1, 4096, 4096, 4096),
}


def probe_one(product: str, tile: tuple) -> dict:
    """One tile on one product: relative error against cuBLAS, then both timed (us, L2 flushed before each)."""
    from moe_lab.tune import median_ms

    E, M, N, K = PRODUCTS[product]
    gen = torch.Generator(device="cuda").manual_seed(0)
    a_EMK = torch.randn(E, M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    w_EKN = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
    out_EMN = torch.empty(E, M, N, device="cuda", dtype=torch.bfloat16)
    ref_EMN = torch.bmm(a_EMK, w_EKN).float()
    rel_err = float((ws_bmm(a_EMK, w_EKN, out_EMN, tile).float() - ref_EMN).norm() / ref_EMN.norm())
    ws_us = median_ms(lambda: ws_bmm(a_EMK, w_EKN, out_EMN, tile), a_EMK.device) * 1e3
    cublas_us = median_ms(lambda: torch.bmm(a_EMK, w_EKN, out=out_EMN), a_EMK.device) * 1e3
    flops = 2 * E * M * N * K
    return dict(product=product, tile="{}x{}x{} s{} w{}".format(*tile), rel_err=f"{rel_err:.2e}",
                ws_us=round(ws_us, 1), cublas_us=round(cublas_us, 1), ws_tflops=round(flops / ws_us / 1e6, 1),
                cublas_tflops=round(flops / cublas_us / 1e6, 1), **versions())


def main(argv=None) -> int:
    """Every tile on every product, each in its own process under a time limit (a kernel that deadlocks is
    recorded as a timeout, and the others still run); rows to --out/ws_gemm.csv."""
    import argparse
    import json
    import subprocess

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", default="out")
    p.add_argument("--products", default=",".join(PRODUCTS))
    p.add_argument("--tiles", default=";".join(",".join(map(str, t)) for t in TILES))
    p.add_argument("--limit-s", type=int, default=60)
    p.add_argument("--one", nargs=2, metavar=("PRODUCT", "TILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(probe_one(args.one[0], tuple(map(int, args.one[1].split(","))))))
        return 0
    rows = []
    for product in args.products.split(","):
        for tile in args.tiles.split(";"):
            cmd = [sys.executable, __file__, "--one", product, tile]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit_s)
                row = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else
                       dict(product=product, tile=tile, status=f"exit {done.returncode}: {done.stderr[-300:]}"))
            except subprocess.TimeoutExpired:
                row = dict(product=product, tile=tile, status=f"timeout after {args.limit_s} s")
            print(row, flush=True)
            rows.append(row)
    write_rows(rows, args.out, "ws_gemm.csv")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # moe_lab, from a checkout
    raise SystemExit(main())
