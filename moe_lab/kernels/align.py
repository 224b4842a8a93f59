"""Token alignment by expert on the device: pairs sorted by expert, each expert padded to BLOCK_M.

Legend: T tokens, K top-k, S = T*K (token, expert) pairs numbered s = t*K + k, E experts,
BM the GEMM row block. Output, all int32 and all on the device (no host round trip):

- `sorted_ids_P` (P = max_blocks*BM): pair ids grouped by expert, each expert's group padded to a
  multiple of BM with the sentinel S; stable (ascending pair id within an expert), so deterministic;
- `block_expert_B` (B = max_blocks): the expert of each row block, -1 for blocks past the end.

max_blocks = cdiv(S, BM) + min(E, S) bounds sum_e cdiv(count_e, BM) whatever the routing, so every
launch size comes from shapes alone. Pairs whose expert id lies outside [0, E) are dropped (the
sentinel convention of expert parallelism): they get no row and contribute nothing.

Two modes: one program does everything when S <= SINGLE_MAX_PAIRS (one launch, the decode and
mid-size case); otherwise three launches: per-chunk counts, one scan program, per-chunk scatter.
Ranks inside an expert come from a one-hot cumulative sum, so there are no atomics and nothing to zero.
`_gather_rows_kernel` copies the tokens into that order (P, H) for GEMMs that load plain row blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUB = 128  # pairs handled per inner step (one-hot matrix SUB x E_PAD)
CHUNK = 1024  # pairs per program in the multi-program mode
SINGLE_MAX_PAIRS = 1024  # one program up to here; beyond, three launches are faster (benchmarks/align_threshold.py)
BLOCKS_PER_STEP = 16  # row blocks labelled per inner step


@triton.jit
def _onehot(e_vec, E_PAD: tl.constexpr):
    return e_vec[:, None] == tl.arange(0, E_PAD)[None, :]


@triton.jit
def _load_experts(ids_ptr, offs, S, E):
    """Expert of each pair in offs; E_PAD-sized sentinel (never matches) for masked or out-of-range ids."""
    e = tl.load(ids_ptr + offs, mask=offs < S, other=-1).to(tl.int32)
    return tl.where((e >= 0) & (e < E), e, -1)


@triton.jit
def _count_range(ids_ptr, start, stop, S, E, E_PAD: tl.constexpr, SUB: tl.constexpr):
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for s0 in range(start, stop, SUB):
        offs = s0 + tl.arange(0, SUB)
        e = _load_experts(ids_ptr, offs, tl.minimum(S, stop), E)
        counts += tl.sum(_onehot(e, E_PAD).to(tl.int32), axis=0)
    return counts


@triton.jit
def _scatter_range(ids_ptr, sorted_ptr, base, start, stop, S, E, E_PAD: tl.constexpr, SUB: tl.constexpr):
    """sorted[base[e] + rank] = s for the pairs s in [start, stop), rank = earlier pairs of the same expert."""
    seen = tl.zeros([E_PAD], dtype=tl.int32)
    for s0 in range(start, stop, SUB):
        offs = s0 + tl.arange(0, SUB)
        e = _load_experts(ids_ptr, offs, tl.minimum(S, stop), E)
        hot = _onehot(e, E_PAD)
        hot_i = hot.to(tl.int32)
        incl = tl.cumsum(hot_i, axis=0)  # (SUB, E_PAD): pairs of expert e so far in this step
        pos = tl.sum(tl.where(hot, incl - 1 + seen[None, :] + base[None, :], 0), axis=1)
        tl.store(sorted_ptr + pos, offs.to(tl.int32), mask=e >= 0)
        seen += tl.sum(hot_i, axis=0)


@triton.jit
def _label_blocks(block_expert_ptr, sorted_ptr, starts, counts, b_start, b_stop, S,
                  E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr):
    """block_expert[b] for b in [b_start, b_stop), and the sentinel S in every padding row of those blocks."""
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = starts + padded
    total = tl.sum(padded, axis=0)
    has = counts > 0
    for b0 in range(b_start, b_stop, BLOCKS_PER_STEP):
        b = b0 + tl.arange(0, BLOCKS_PER_STEP)
        row0 = b * BLOCK_M
        # the owner of a block: the one non-empty expert whose [start, end) holds its first row
        own = has[None, :] & (starts[None, :] <= row0[:, None]) & (row0[:, None] < ends[None, :])
        expert = tl.sum(tl.where(own, tl.arange(0, E_PAD)[None, :], 0), axis=1)
        live = row0 < total
        expert = tl.where(live, expert, -1)
        tl.store(block_expert_ptr + b, expert, mask=b < b_stop)
        e_start = tl.sum(tl.where(own, starts[None, :], 0), axis=1)
        e_count = tl.sum(tl.where(own, counts[None, :], 0), axis=1)
        rows = row0[:, None] + tl.arange(0, BLOCK_M)[None, :]
        pad = (rows - e_start[:, None]) >= e_count[:, None]
        tl.store(sorted_ptr + rows, tl.full(rows.shape, 0, tl.int32) + S,
                 mask=pad & live[:, None] & (b < b_stop)[:, None])


@triton.jit
def _align_single_kernel(ids_ptr, sorted_ptr, block_expert_ptr, S, E, max_blocks,
                         E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, SUB: tl.constexpr,
                         BLOCKS_PER_STEP: tl.constexpr):
    counts = _count_range(ids_ptr, 0, S, S, E, E_PAD, SUB)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    _label_blocks(block_expert_ptr, sorted_ptr, starts, counts, 0, max_blocks, S, E_PAD, BLOCK_M, BLOCKS_PER_STEP)
    _scatter_range(ids_ptr, sorted_ptr, starts, 0, S, S, E, E_PAD, SUB)


@triton.jit
def _align_count_kernel(ids_ptr, partial_ptr, S, E, E_PAD: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr):
    g = tl.program_id(0)
    counts = _count_range(ids_ptr, g * CHUNK, g * CHUNK + CHUNK, S, E, E_PAD, SUB)
    tl.store(partial_ptr + g * E_PAD + tl.arange(0, E_PAD), counts)


@triton.jit
def _align_scan_kernel(partial_ptr, meta_ptr, G, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, ROWS: tl.constexpr):
    """partial[g, e] (counts) -> base row of chunk g's first pair of expert e; meta = (starts, counts)."""
    cols = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for g0 in range(0, G, ROWS):
        r = g0 + tl.arange(0, ROWS)
        part = tl.load(partial_ptr + r[:, None] * E_PAD + cols[None, :], mask=(r < G)[:, None], other=0)
        counts += tl.sum(part, axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    tl.store(meta_ptr + cols, starts)
    tl.store(meta_ptr + E_PAD + cols, counts)
    carry = starts
    for g0 in range(0, G, ROWS):
        r = g0 + tl.arange(0, ROWS)
        m = (r < G)[:, None]
        part = tl.load(partial_ptr + r[:, None] * E_PAD + cols[None, :], mask=m, other=0)
        excl = tl.cumsum(part, axis=0) - part
        tl.store(partial_ptr + r[:, None] * E_PAD + cols[None, :], excl + carry[None, :], mask=m)
        carry += tl.sum(part, axis=0)


@triton.jit
def _align_scatter_kernel(ids_ptr, partial_ptr, meta_ptr, sorted_ptr, block_expert_ptr, S, E, max_blocks,
                          blocks_per_prog, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
                          SUB: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr):
    g = tl.program_id(0)
    cols = tl.arange(0, E_PAD)
    base = tl.load(partial_ptr + g * E_PAD + cols)
    _scatter_range(ids_ptr, sorted_ptr, base, g * CHUNK, g * CHUNK + CHUNK, S, E, E_PAD, SUB)
    starts = tl.load(meta_ptr + cols)
    counts = tl.load(meta_ptr + E_PAD + cols)
    b_start = g * blocks_per_prog
    b_stop = tl.minimum(b_start + blocks_per_prog, max_blocks)
    _label_blocks(block_expert_ptr, sorted_ptr, starts, counts, b_start, b_stop, S, E_PAD, BLOCK_M, BLOCKS_PER_STEP)


@triton.jit
def _gather_rows_kernel(x_ptr, sorted_ptr, block_expert_ptr, out_ptr, S, TOPK, H, stride_xt, stride_xh,
                        BLOCK_M: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[p] = x[sorted[p] // K] for ROWS padded positions p (zeros on padding rows); blocks past the end
    (expert -1) are left unwritten, as nothing reads them."""
    row0 = tl.program_id(0) * ROWS
    if tl.load(block_expert_ptr + row0 // BLOCK_M) < 0:
        return
    offs_p = row0 + tl.arange(0, ROWS)
    pair = tl.load(sorted_ptr + offs_p)
    ok = pair < S
    token = tl.where(ok, pair // TOPK, 0).to(tl.int64)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < H
        rows = tl.load(x_ptr + token[:, None] * stride_xt + offs_h[None, :] * stride_xh,
                       mask=ok[:, None] & h_ok[None, :], other=0.0)
        tl.store(out_ptr + offs_p.to(tl.int64)[:, None] * H + offs_h[None, :], rows, mask=h_ok[None, :])


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of sum_e cdiv(count_e, block_m) over every routing of num_pairs pairs."""
    return triton.cdiv(num_pairs, block_m) + min(num_experts, num_pairs)


def align_by_expert(topk_ids_S: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_ids_P, block_expert_B) for the flattened expert ids of S pairs; see the module doc."""
    S = topk_ids_S.numel()
    E = num_experts
    E_PAD = max(16, triton.next_power_of_2(E))
    B = max_blocks(S, E, block_m)
    dev = topk_ids_S.device
    sorted_P = torch.empty(B * block_m, dtype=torch.int32, device=dev)
    block_expert_B = torch.empty(B, dtype=torch.int32, device=dev)
    if S <= SINGLE_MAX_PAIRS:
        _align_single_kernel[(1,)](topk_ids_S, sorted_P, block_expert_B, S, E, B, E_PAD=E_PAD, BLOCK_M=block_m,
                                   SUB=SUB, BLOCKS_PER_STEP=BLOCKS_PER_STEP, num_warps=4)
        return sorted_P, block_expert_B
    G = triton.cdiv(S, CHUNK)
    partial_GE = torch.empty(G, E_PAD, dtype=torch.int32, device=dev)
    meta = torch.empty(2 * E_PAD, dtype=torch.int32, device=dev)
    _align_count_kernel[(G,)](topk_ids_S, partial_GE, S, E, E_PAD=E_PAD, CHUNK=CHUNK, SUB=SUB, num_warps=4)
    _align_scan_kernel[(1,)](partial_GE, meta, G, E_PAD=E_PAD, BLOCK_M=block_m, ROWS=16, num_warps=4)
    _align_scatter_kernel[(G,)](topk_ids_S, partial_GE, meta, sorted_P, block_expert_B, S, E, B, triton.cdiv(B, G),
                                E_PAD=E_PAD, BLOCK_M=block_m, CHUNK=CHUNK, SUB=SUB,
                                BLOCKS_PER_STEP=BLOCKS_PER_STEP, num_warps=4)
    return sorted_P, block_expert_B
