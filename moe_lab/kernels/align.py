"""Token alignment by expert on the device: pairs grouped by expert, each expert padded to BLOCK_M.

Legend: T tokens, K top-k, S = T*K (token, expert) pairs numbered s = t*K + k, E experts,
BM the GEMM row block, G programs of CHUNK pairs. Output, all int32 and all on the device (no host
round trip):

- `sorted_ids_P` (P = max_blocks*BM): pair ids grouped by expert in expert order, each expert's group
  padded to a multiple of BM with the sentinel S;
- `block_expert_B` (B = max_blocks): the expert of each row block, -1 for blocks past the end;
- `expert_block_E1`: the first row block of each expert's group, then (at E) the number of blocks in use, so
  expert e's blocks are [expert_block[e], expert_block[e + 1]).

max_blocks = cdiv(S, BM) + min(E, S) bounds sum_e cdiv(count_e, BM) whatever the routing, so every
launch size comes from shapes alone. Pairs whose expert id lies outside [0, E) are dropped (the
sentinel convention of expert parallelism): they get no row and contribute nothing.

Counts come from `tl.histogram`; a pair's row inside its expert's group from an atomically bumped
per-expert cursor. So the order of the pairs inside a group varies from call to call, but nothing
downstream depends on it: every GEMM row is computed on its own and written back to its pair's (t, k)
slot, so the experts' output is the same bit for bit (a GPU test checks it).

Two modes, G = cdiv(S, CHUNK) programs each placing one chunk of pairs:
- one launch (S <= ONE_LAUNCH_MAX_PAIRS): every program counts all S pairs itself, so none waits for another
  (at S <= CHUNK a single program does everything);
- two launches beyond: per-chunk counts, then the placing (each program sums the counts of the chunks), as
  counting every pair in every program grows as S^2 / CHUNK.
`_gather_rows_kernel` copies the tokens into that order (P, H) for GEMMs that load plain row blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moe_lab.kernels.pdl import pdl_enter

CHUNK = 1024  # pairs placed per program, and counted per step of the two-launch mode
ONE_LAUNCH_MAX_PAIRS = 2048  # one launch up to here, two beyond: measured crossover (align_threshold.py)
COUNT_MAX = 4096  # most pairs the one-launch mode counts per step
LABEL_BLOCKS = 32  # row blocks labelled per step
SCAN_ROWS = 16  # per-chunk count rows summed per step


def count_block(num_pairs: int) -> int:
    """Pairs the one-launch mode counts per step: a power of two from CHUNK to COUNT_MAX, all of them in one
    step where they fit."""
    return min(COUNT_MAX, max(CHUNK, triton.next_power_of_2(num_pairs)))


@triton.jit
def _load_experts(ids_ptr, offs, stop, E):
    """(expert of each pair in offs, clamped into [0, E); whether it is a real pair of an expert in [0, E))."""
    e = tl.load(ids_ptr + offs, mask=offs < stop, other=-1).to(tl.int32)
    ok = (e >= 0) & (e < E)
    return tl.where(ok, e, 0), ok


@triton.jit
def _count_range(ids_ptr, start, stop, E, E_PAD: tl.constexpr, CHUNK: tl.constexpr):
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for s0 in range(start, stop, CHUNK):
        e, ok = _load_experts(ids_ptr, s0 + tl.arange(0, CHUNK), stop, E)
        counts += tl.histogram(e, E_PAD, mask=ok)
    return counts


@triton.jit
def _scatter_range(ids_ptr, sorted_ptr, cursor_ptr, base, start, stop, E, E_PAD: tl.constexpr,
                   CHUNK: tl.constexpr):
    """sorted[pos] = s for the pairs s in [start, stop); pos from this program's cursor per expert, set to
    base[e] (the group's first free row) and bumped atomically once per pair."""
    tl.store(cursor_ptr + tl.arange(0, E_PAD), base)
    tl.debug_barrier()  # every thread of the program sees the cursors before bumping them
    for s0 in range(start, stop, CHUNK):
        offs = s0 + tl.arange(0, CHUNK)
        e, ok = _load_experts(ids_ptr, offs, stop, E)
        pos = tl.atomic_add(cursor_ptr + e, 1, mask=ok, sem="relaxed")
        tl.store(sorted_ptr + pos, offs.to(tl.int32), mask=ok)


@triton.jit
def _label_blocks(block_expert_ptr, starts, padded, b_start, b_stop, BLOCK_M: tl.constexpr,
                  LABEL_BLOCKS: tl.constexpr):
    """block_expert[b] for b in [b_start, b_stop): the first expert whose padded group ends past the block's
    first row (empty groups end where the one before does, so they never own a block); -1 past the end."""
    ends = starts + padded
    total = tl.sum(padded, axis=0)
    for b0 in range(b_start, b_stop, LABEL_BLOCKS):
        b = b0 + tl.arange(0, LABEL_BLOCKS)
        row0 = b * BLOCK_M
        expert = tl.sum((ends[None, :] <= row0[:, None]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + b, tl.where(row0 < total, expert, -1), mask=b < b_stop)


@triton.jit
def _pad_groups(sorted_ptr, expert_block_ptr, starts, counts, padded, S, E, E_PAD: tl.constexpr,
                BLOCK_M: tl.constexpr, COUNTERS: tl.constexpr):
    """The sentinel S in every padding row: [start + count, start + padded) of each expert; each group's
    first block, and the blocks in use; then COUNTERS zeros (a SPLIT call's `ready` counters)."""
    j = tl.arange(0, BLOCK_M)[None, :]
    rows = (starts + counts)[:, None] + j
    tl.store(sorted_ptr + rows, tl.full(rows.shape, 0, tl.int32) + S, mask=j < (padded - counts)[:, None])
    e = tl.arange(0, E_PAD)
    tl.store(expert_block_ptr + e, starts // BLOCK_M, mask=e < E)
    tl.store(expert_block_ptr + E, tl.sum(padded, axis=0) // BLOCK_M)
    if COUNTERS > 0:
        c = tl.arange(0, 4)
        tl.store(expert_block_ptr + E + 1 + c, tl.zeros_like(c), mask=c < COUNTERS)


@triton.jit
def _place(ids_ptr, sorted_ptr, block_expert_ptr, expert_block_ptr, cursor_ptr, counts, before, g, S, E, max_blocks,
           blocks_per_prog, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
           LABEL_BLOCKS: tl.constexpr, COUNTERS: tl.constexpr):
    """Program g's share of the output, given every expert's count and its count in the chunks before g's:
    its chunk's pairs scattered (its cursors in row g of cursor_ptr), its share of the block labels, and
    (g = 0) the padding and each group's first block."""
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    _scatter_range(ids_ptr, sorted_ptr, cursor_ptr + g * E_PAD, starts + before, g * CHUNK,
                   tl.minimum(S, g * CHUNK + CHUNK), E, E_PAD, CHUNK)
    if g == 0:
        _pad_groups(sorted_ptr, expert_block_ptr, starts, counts, padded, S, E, E_PAD, BLOCK_M, COUNTERS)
    b_start = g * blocks_per_prog
    _label_blocks(block_expert_ptr, starts, padded, b_start, tl.minimum(b_start + blocks_per_prog, max_blocks),
                  BLOCK_M, LABEL_BLOCKS)


@triton.jit
def _align_kernel(ids_ptr, sorted_ptr, block_expert_ptr, expert_block_ptr, cursor_ptr, S, E, max_blocks,
                  blocks_per_prog, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
                  COUNT_BLOCK: tl.constexpr, LABEL_BLOCKS: tl.constexpr, PDL: tl.constexpr = False,
                  COUNTERS: tl.constexpr = 0):
    """The one-launch mode: G programs of CHUNK pairs, each counting every pair itself, COUNT_BLOCK at a time
    (so no program waits for another's counts), then placing its chunk (`_place`). cursor_ptr: (G, E_PAD)
    scratch."""
    pdl_enter(PDL)
    g = tl.program_id(0)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    before = tl.zeros([E_PAD], dtype=tl.int32)  # pairs of each expert in the chunks before this one
    for s0 in range(0, S, COUNT_BLOCK):
        offs = s0 + tl.arange(0, COUNT_BLOCK)
        e, ok = _load_experts(ids_ptr, offs, S, E)
        counts += tl.histogram(e, E_PAD, mask=ok)
        before += tl.histogram(e, E_PAD, mask=ok & (offs < g * CHUNK))
    _place(ids_ptr, sorted_ptr, block_expert_ptr, expert_block_ptr, cursor_ptr, counts, before, g, S, E, max_blocks,
           blocks_per_prog, E_PAD, BLOCK_M, CHUNK, LABEL_BLOCKS, COUNTERS)


@triton.jit
def _align_count_kernel(ids_ptr, partial_ptr, S, E, E_PAD: tl.constexpr, CHUNK: tl.constexpr,
                        PDL: tl.constexpr = False):
    pdl_enter(PDL)
    g = tl.program_id(0)
    counts = _count_range(ids_ptr, g * CHUNK, tl.minimum(S, g * CHUNK + CHUNK), E, E_PAD, CHUNK)
    tl.store(partial_ptr + g * E_PAD + tl.arange(0, E_PAD), counts)


@triton.jit
def _align_scatter_kernel(ids_ptr, partial_ptr, sorted_ptr, block_expert_ptr, expert_block_ptr, S, E, G, max_blocks,
                          blocks_per_prog, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
                          SCAN_ROWS: tl.constexpr, LABEL_BLOCKS: tl.constexpr, PDL: tl.constexpr = False,
                          COUNTERS: tl.constexpr = 0):
    """The two-launch mode's second launch. partial (2G, E_PAD): rows [0, G) the per-chunk counts, rows
    [G, 2G) each program's cursors."""
    pdl_enter(PDL)
    g = tl.program_id(0)
    cols = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    before = tl.zeros([E_PAD], dtype=tl.int32)  # pairs of each expert in the chunks before this one
    for g0 in range(0, G, SCAN_ROWS):
        r = g0 + tl.arange(0, SCAN_ROWS)
        part = tl.load(partial_ptr + r[:, None] * E_PAD + cols[None, :], mask=(r < G)[:, None], other=0)
        counts += tl.sum(part, axis=0)
        before += tl.sum(tl.where((r < g)[:, None], part, 0), axis=0)
    _place(ids_ptr, sorted_ptr, block_expert_ptr, expert_block_ptr, partial_ptr + G * E_PAD, counts, before, g, S, E,
           max_blocks, blocks_per_prog, E_PAD, BLOCK_M, CHUNK, LABEL_BLOCKS, COUNTERS)


@triton.jit
def _gather_rows_kernel(x_ptr, sorted_ptr, block_expert_ptr, out_ptr, S, TOPK, H, stride_xt, stride_xh,
                        BLOCK_M: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
                        PDL: tl.constexpr = False):
    """out[p] = x[sorted[p] // K] for ROWS padded positions p (zeros on padding rows); blocks past the end
    (expert -1) are left unwritten, as nothing reads them."""
    pdl_enter(PDL)
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


def e_pad(num_experts: int) -> int:
    """Histogram width: a power of two of at least 16 that holds every expert."""
    return max(16, triton.next_power_of_2(num_experts))


def align_by_expert(topk_ids_S: torch.Tensor, num_experts: int,
                    block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids_P, block_expert_B, expert_block_E1) for the flattened expert ids of S pairs; see the
    module doc."""
    S = topk_ids_S.numel()
    E = num_experts
    EP = e_pad(E)
    B = max_blocks(S, E, block_m)
    dev = topk_ids_S.device
    sorted_P = torch.empty(B * block_m, dtype=torch.int32, device=dev)
    block_expert_B = torch.empty(B, dtype=torch.int32, device=dev)
    expert_block_E1 = torch.empty(E + 1, dtype=torch.int32, device=dev)
    G = triton.cdiv(S, CHUNK)
    if S <= ONE_LAUNCH_MAX_PAIRS:
        cursor = torch.empty(G, EP, dtype=torch.int32, device=dev)
        _align_kernel[(G,)](topk_ids_S, sorted_P, block_expert_B, expert_block_E1, cursor, S, E, B, triton.cdiv(B, G),
                            E_PAD=EP, BLOCK_M=block_m, CHUNK=CHUNK, COUNT_BLOCK=count_block(S),
                            LABEL_BLOCKS=LABEL_BLOCKS, num_warps=4)
        return sorted_P, block_expert_B, expert_block_E1
    partial = torch.empty(2 * G, EP, dtype=torch.int32, device=dev)
    _align_count_kernel[(G,)](topk_ids_S, partial, S, E, E_PAD=EP, CHUNK=CHUNK, num_warps=4)
    _align_scatter_kernel[(G,)](topk_ids_S, partial, sorted_P, block_expert_B, expert_block_E1, S, E, G, B,
                                triton.cdiv(B, G), E_PAD=EP, BLOCK_M=block_m, CHUNK=CHUNK, SCAN_ROWS=SCAN_ROWS,
                                LABEL_BLOCKS=LABEL_BLOCKS, num_warps=4)
    return sorted_P, block_expert_B, expert_block_E1
