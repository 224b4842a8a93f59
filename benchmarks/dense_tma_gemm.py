"""A plain Triton batched GEMM with both operands through TMA: what Triton itself reaches on the experts' products.

`triton_fused`'s grouped GEMMs gather token rows, follow ragged groups and run an epilogue. This is the
simplest fast Hopper GEMM Triton 3.6 builds without warp specialization (as `benchmarks/warp_spec_probe.py`'s
plain variant, 676 TFLOP/s at 4096^3): one (BM, BN) tile per program, every group the same number of rows,
no gather, a bf16 store. `benchmarks/triton_profile.py` times it over `TILES` on balanced groups, beside
cuBLAS's batched GEMM on the same tensors, to tell how much of the gap between our GEMMs and cuBLAS's is
Triton's own (no warp-specialized, persistent, cooperative kernels) and how much is our design's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import moe_lab.kernels  # noqa: F401  (under TRITON_INTERPRET, its patch of the interpreter for numpy 2.4)

# (BM, BN, BK, num_warps, num_stages): the warp_spec probe's 676 TFLOP/s tile, deeper pipelines, wider tiles
TILES = [(128, 128, 64, 4, 3), (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3),
         (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (64, 256, 64, 4, 4)]


@triton.jit
def _batched_tma_matmul_kernel(a_desc, w_desc, c_ptr, M, N, K, stride_ce, stride_cm,
                               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """c[e] = a[e] @ w[e].T for every group e; a is (E*M, K) and w (E*N, K), both loaded as TMA boxes.
    A group's tiles run column tile by column tile, its row blocks adjacent, so they share the weight tile
    in L2. Rows and columns past a group's edge are computed from the next group's and masked at the store."""
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    pid = tl.program_id(0)
    e, tile = pid // (tiles_m * tiles_n), pid % (tiles_m * tiles_n)
    pid_m, pid_n = tile % tiles_m, tile // tiles_m
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = a_desc.load([e * M + pid_m * BM, k])
        w = w_desc.load([e * N + pid_n * BN, k])
        acc = tl.dot(a, w.T, acc)
    offs_m, offs_n = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
    c_ptrs = c_ptr + e * stride_ce + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def batched_operands(name: str, a_EMK: torch.Tensor, w_EKN: torch.Tensor, out_EMN: torch.Tensor):
    """(E, M, N, K, w_ENK) of a batched product whose weight is stored (E, N, K), K contiguous (the experts'
    weights are: `w_EKN` is their transposed view); ValueError unless that storage, `a` and `out` are contiguous."""
    E, M, K = a_EMK.shape
    w_ENK = w_EKN.transpose(1, 2)
    if not (w_ENK.is_contiguous() and a_EMK.is_contiguous() and out_EMN.is_contiguous()):
        raise ValueError(f"{name}: a, out and the (E, N, K) weight storage must be contiguous")
    return E, M, w_EKN.shape[2], K, w_ENK


def dense_bmm(a_EMK: torch.Tensor, w_EKN: torch.Tensor, out_EMN: torch.Tensor, tile: tuple) -> torch.Tensor:
    """out = a @ w per group, like `torch.bmm(a, w, out=out)`, operands as `batched_operands` takes them."""
    BM, BN, BK, warps, stages = tile
    E, M, N, K, w_ENK = batched_operands("dense_bmm", a_EMK, w_EKN, out_EMN)
    from triton.tools.tensor_descriptor import TensorDescriptor

    a_desc = TensorDescriptor(a_EMK, [E * M, K], [K, 1], [BM, BK])
    w_desc = TensorDescriptor(w_ENK, [E * N, K], [K, 1], [BN, BK])
    grid = (E * triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _batched_tma_matmul_kernel[grid](a_desc, w_desc, out_EMN, M, N, K, out_EMN.stride(0), out_EMN.stride(1),
                                     BM, BN, BK, num_warps=warps, num_stages=stages)
    return out_EMN
