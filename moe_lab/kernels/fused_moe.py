"""Fused experts kernels: a gathered gate/up grouped GEMM with the gating in its epilogue, a down GEMM
with the routing weight in its epilogue, and a two-kernel decode path with no padding at all.

Legend: T tokens, H hidden, I intermediate, E experts, K top-k, S = T*K pairs (s = t*K + k),
N = 2I (gated) or I, P = padded rows of the expert-aligned order (see `align`).

Weights are read through strides, so every stored orientation works unchanged: the up weight as an
(E, N, H) view with `stride_wn`, `stride_wh` (transposed storage just swaps them), the down weight as
(E, H, I). Gate and up rows are `n` and `I + n` (concatenated) or `2n` and `2n + 1` (interleaved).

Prefill path (`gate_up_grouped` then `down_grouped`): one program per (row block, column tile); the
row block's expert comes from `block_expert`, its rows from `sorted_ids` (token = pair // K), so the
tokens are gathered while loading and never copied. Accumulation in float32. With `W_TMA` the weight
tiles come through a TMA descriptor of the weight's 2D view (`_w_tile`) instead of pointer loads. With
`HALF_TAIL` a row block whose real rows fit in its top half (an expert's last block) is computed as a
half-height tile: an expert of 136 rows costs 128 + 64 rows of MMA work instead of 256.

Decode path (`gate_up_decode` then `down_decode`): one program per (pair, column tile) for gate/up,
one per (token, hidden tile) for down, which loops over the token's K pairs and so also does the
top-k reduction: two launches, nothing sorted, nothing padded, each pair's weights read once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels.pdl import pdl_enter, pdl_launch, pdl_wait_then_launch
from moe_lab.kernels.ready import signal_done, wait_done

# activation codes (constexpr)
ACT_SILU, ACT_GELU, ACT_RELU, ACT_GELU_TANH, ACT_CLAMPED_SWIGLU = 0, 1, 2, 3, 4
# gate modes (constexpr)
GATE_NONE, GATE_CONCAT, GATE_INTERLEAVED = 0, 1, 2


@triton.jit
def _act(g, ACT: tl.constexpr, alpha):
    if ACT == 0:  # silu
        return g / (1.0 + tl.exp(-g))
    elif ACT == 1:  # gelu (erf)
        return 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    elif ACT == 2:  # relu
        return tl.maximum(g, 0.0)
    elif ACT == 3:  # gelu (tanh approximation)
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return 0.5 * g * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))
    else:  # gpt-oss's clamped swiglu, gate part: g * sigmoid(alpha * g) on the clamped gate
        return g / (1.0 + tl.exp(-alpha * g))


@triton.jit
def _gate(g, u, ACT: tl.constexpr, limit, alpha):
    """act(gate) * up in float32, or gpt-oss's (clamp(up) + 1) * swish_alpha(clamp(gate))."""
    if ACT == 4:
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
        return (u + 1.0) * _act(g, ACT, alpha)
    else:
        return _act(g, ACT, alpha) * u


@triton.jit
def _dot(a, b, acc, DOT_MODE: tl.constexpr):
    """0: tensor-core default; 1: exact float32 (ieee); 2: upcast first (Triton's interpreter mishandles bf16 dots)."""
    if DOT_MODE == 0:
        return tl.dot(a, b, acc)
    elif DOT_MODE == 1:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _gate_up_rows(n, I, GATE_MODE: tl.constexpr):
    """Rows of the (2I, H) gate/up weight holding the gate and up halves of intermediate columns n:
    interleaved (GATE_MODE 2: gate0, up0, gate1, ...) or concatenated ([gate; up])."""
    if GATE_MODE == 2:
        return 2 * n, 2 * n + 1
    return n, n + I


@triton.jit
def _w_tile(w_desc, expert, rows_per_expert, k_per_expert, row0, k0, W_T: tl.constexpr):
    """A (BLOCK_K, BLOCK_R) weight tile through TMA: output features row0.., reduction k0.. of one expert.
    Stored (E*rows, K), K contiguous: loaded (BLOCK_R, BLOCK_K) and transposed; stored transposed
    (E*K, rows): loaded as it is. Rows past the expert's end read the next expert's (or TMA's zero
    fill); the epilogue masks their columns, and K tiles never cross an expert (K % BLOCK_K == 0)."""
    if W_T:  # if/else, not an early return: the compiler would build both returns and refuse their shapes
        tile = w_desc.load([expert * k_per_expert + k0, row0])
    else:
        tile = w_desc.load([expert * rows_per_expert + row0, k0]).T
    return tile


@triton.jit
def _tile_ids(pid, num_blocks_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M consecutive row blocks (mostly one expert) share each weight tile in L2."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_m = group_id * GROUP_M
    group_size = tl.minimum(num_blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_pid_in_group) % group_size
    pid_n = (pid % num_pid_in_group) // group_size
    return pid_m, pid_n


@triton.jit
def _block_pairs(row0, sorted_ptr, S, TOPK, BLOCK_M: tl.constexpr):
    """A row block's padded positions from row0, their pairs, which rows are real (pair < S), their tokens."""
    offs_p = row0 + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ptr + offs_p)
    row_ok = pair < S
    token = tl.where(row_ok, pair // TOPK, 0).to(tl.int64)
    return offs_p, pair, row_ok, token


@triton.jit
def _x_tile(x_ptrs, row_ok, offs_k, k, H, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The gathered (BLOCK_M, BLOCK_K) token tile of reduction step k: zero on padding rows and past H."""
    if EVEN_K:
        return tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
    k_ok = offs_k < H - k * BLOCK_K
    return tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _gate_up_one_dot(
    x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap, limit, alpha,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr, OUT_EVICT: tl.constexpr,
):
    """Gate and up in one (BLOCK_M, 2*BLOCK_N) dot: weight-tile column 2j is gate row n_j, column 2j+1 up row n_j
    (contiguous rows for an interleaved layout, so W_TMA loads them as one box); the epilogue splits the
    accumulator into its two halves."""
    offs_p, pair, row_ok, token = _block_pairs(row0, sorted_ptr, S, TOPK, BLOCK_M)
    offs_c = tl.arange(0, 2 * BLOCK_N)  # weight-tile columns
    n_c = pid_n * BLOCK_N + offs_c // 2
    n_c = tl.where(n_c < I, n_c, 0)
    is_up = (offs_c % 2) == 1
    gate_rows_c, up_rows_c = _gate_up_rows(n_c, I, GATE_MODE)
    rows_c = tl.where(is_up, up_rows_c, gate_rows_c)
    offs_k = tl.arange(0, BLOCK_K)
    if not A_TMA:
        x_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :] * stride_xh
    if not W_TMA:
        w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_k[:, None] * stride_wh + rows_c[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(H, BLOCK_K)):
        if A_TMA:
            xa = x_ptr.load([row0, k * BLOCK_K])
        else:
            xa = _x_tile(x_ptrs, row_ok, offs_k, k, H, BLOCK_K, EVEN_K)
            x_ptrs += BLOCK_K * stride_xh
        if W_TMA:  # interleaved only (the Plan checks): rows 2n, 2n+1 of the tile are contiguous
            wt = _w_tile(w_ptr, expert, 2 * I, H, 2 * pid_n * BLOCK_N, k * BLOCK_K, W_T)
        elif EVEN_K:
            wt = tl.load(w_ptrs)
        else:
            wt = tl.load(w_ptrs, mask=(offs_k < H - k * BLOCK_K)[:, None], other=0.0)
        acc = _dot(xa, wt, acc, DOT_MODE)
        if not W_TMA:
            w_ptrs += BLOCK_K * stride_wh
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert.to(tl.int64) * stride_be + rows_c * stride_bn).to(tl.float32)[None, :]
    g, u = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    out = _gate(g, u, ACT, limit, alpha)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a_ptrs = a_ptr + offs_p.to(tl.int64)[:, None] * stride_ap + offs_n[None, :]
    tl.store(a_ptrs, out.to(a_ptr.dtype.element_ty), mask=(offs_n < I)[None, :], eviction_policy=OUT_EVICT)


@triton.jit
def _gate_up_two_dots(
    x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap, limit, alpha,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr, OUT_EVICT: tl.constexpr,
):
    """Gate and up as two (BLOCK_M, BLOCK_N) dots (one without a gate): weight rows n.. and their up rows."""
    offs_p, pair, row_ok, token = _block_pairs(row0, sorted_ptr, S, TOPK, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(tl.where(n_ok, offs_n, 0), I, GATE_MODE)
    offs_k = tl.arange(0, BLOCK_K)
    if not A_TMA:
        x_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :] * stride_xh
    if W_TMA:  # concatenated or no gate (the Plan checks): gate rows n.., up rows I + n..
        if GATE_MODE != 0:
            n_rows = 2 * I
        else:
            n_rows = I
    else:
        w_base = w_ptr + expert.to(tl.int64) * stride_we
        wg_ptrs = w_base + offs_k[:, None] * stride_wh + gate_rows[None, :] * stride_wn  # (BLOCK_K, BLOCK_N)
        wu_ptrs = w_base + offs_k[:, None] * stride_wh + up_rows[None, :] * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(H, BLOCK_K)):
        if A_TMA:
            xa = x_ptr.load([row0, k * BLOCK_K])
        else:
            xa = _x_tile(x_ptrs, row_ok, offs_k, k, H, BLOCK_K, EVEN_K)
            x_ptrs += BLOCK_K * stride_xh
        if W_TMA:
            wg = _w_tile(w_ptr, expert, n_rows, H, pid_n * BLOCK_N, k * BLOCK_K, W_T)
        elif EVEN_K:
            wg = tl.load(wg_ptrs)
        else:
            k_ok = offs_k < H - k * BLOCK_K
            wg = tl.load(wg_ptrs, mask=k_ok[:, None], other=0.0)
        acc_g = _dot(xa, wg, acc_g, DOT_MODE)
        if GATE_MODE != 0:
            if W_TMA:
                wu = _w_tile(w_ptr, expert, n_rows, H, I + pid_n * BLOCK_N, k * BLOCK_K, W_T)
            elif EVEN_K:
                wu = tl.load(wu_ptrs)
            else:
                wu = tl.load(wu_ptrs, mask=k_ok[:, None], other=0.0)
            acc_u = _dot(xa, wu, acc_u, DOT_MODE)
        if not W_TMA:
            wg_ptrs += BLOCK_K * stride_wh
            wu_ptrs += BLOCK_K * stride_wh
    if HAS_BIAS:
        b_base = b_ptr + expert.to(tl.int64) * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATE_MODE != 0:
            acc_u += tl.load(b_base + up_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GATE_MODE != 0:
        out = _gate(acc_g, acc_u, ACT, limit, alpha)
    else:
        out = _act(acc_g, ACT, alpha)
    a_ptrs = a_ptr + offs_p.to(tl.int64)[:, None] * stride_ap + offs_n[None, :]
    tl.store(a_ptrs, out.to(a_ptr.dtype.element_ty), mask=n_ok[None, :], eviction_policy=OUT_EVICT)


@triton.jit
def _gate_up_tile(
    x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap, limit, alpha,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    ONE_DOT: tl.constexpr, W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr, OUT_EVICT: tl.constexpr,
):
    """The (BLOCK_M rows from row0, column tile pid_n) output tile of `expert`, one dot or two, stored with the
    L2 eviction policy OUT_EVICT (`l2_temps`)."""
    if ONE_DOT and GATE_MODE != 0:
        _gate_up_one_dot(x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                         stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap,
                         limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                         W_TMA, W_T, A_TMA, OUT_EVICT)
    else:
        _gate_up_two_dots(x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                          stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap,
                          limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                          W_TMA, W_T, A_TMA, OUT_EVICT)


@triton.jit
def _row_block(block_expert_ptr, num_blocks_m, num_pid_n, ready_ptr, wait_programs, BLOCK_M: tl.constexpr,
               GROUP_M: tl.constexpr, PDL: tl.constexpr, READY_SIGNALS: tl.constexpr, READY_WAIT: tl.constexpr,
               A_TMA: tl.constexpr):
    """A grouped GEMM program's start: its wait on the kernel before (PDL), then its row block's first row,
    its column tile and its expert (-1 past the last expert's blocks). Under SPLIT (`ready`): READY_SIGNALS
    (gate/up) lets the next launch go only after its wait; READY_WAIT >= 0 (down) waits instead for counter
    ready_ptr[READY_WAIT] to reach wait_programs, A_TMA whether down then loads the intermediate through TMA."""
    if READY_SIGNALS:
        pdl_wait_then_launch(PDL)
    elif READY_WAIT >= 0:
        pdl_launch(PDL)
    else:
        pdl_enter(PDL)
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_blocks_m, num_pid_n, GROUP_M)
    if READY_WAIT >= 0:
        wait_done(ready_ptr + READY_WAIT, wait_programs, A_TMA)
    return pid_m * BLOCK_M, pid_n, tl.load(block_expert_ptr + pid_m)


@triton.jit
def _half_full(sorted_ptr, row0, S, BLOCK_M: tl.constexpr):
    """Whether the row block from row0 has at most BLOCK_M // 2 real rows: an expert's real rows come first
    in its group, padding (the sentinel S) after, so that is whether its middle row is padding."""
    return tl.load(sorted_ptr + row0 + BLOCK_M // 2) >= S


@triton.jit
def _prefetch_lines(addr):
    """`prefetch.global.L2` of the 128-byte line holding each address in `addr` (a tensor of pointers)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [addr], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _prefetch_guessed_tile(w_ptr, num_blocks_m, num_pid_n, E, guess_blocks, prefetch_programs, I, H, stride_we,
                           stride_wn, GATE_MODE: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
                           LINES: tl.constexpr):
    """Before the wait on the alignment: each of the first prefetch_programs programs pulls into L2 the first
    LINES 128-byte lines of its column tile's weight rows, for the expert its row block would have were every
    expert given guess_blocks / E blocks (the weights stored contiguous along H): the first K steps it will
    read. A hint only: a wrong guess costs bandwidth, never a result."""
    pid = tl.program_id(0)
    if pid < prefetch_programs:
        pid_m, pid_n = _tile_ids(pid, num_blocks_m, num_pid_n, GROUP_M)
        e = pid_m * E // guess_blocks
        if e < E:
            n = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), I - 1)
            cols = tl.minimum(tl.arange(0, LINES) * (1024 // w_ptr.dtype.element_ty.primitive_bitwidth), H - 1)
            base = w_ptr + e.to(tl.int64) * stride_we + cols[None, :]
            if GATE_MODE == 2:  # interleaved: rows 2n, 2n + 1
                _prefetch_lines(base + (2 * n)[:, None].to(tl.int64) * stride_wn)
                _prefetch_lines(base + (2 * n + 1)[:, None].to(tl.int64) * stride_wn)
            else:
                _prefetch_lines(base + n[:, None].to(tl.int64) * stride_wn)
                if GATE_MODE == 1:  # concatenated: rows n, I + n
                    _prefetch_lines(base + (I + n)[:, None].to(tl.int64) * stride_wn)


@triton.jit
def _gate_up_grouped_kernel(
    x_ptr, x_half_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, block_expert_ptr,
    S, TOPK, H, I, num_blocks_m,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap,
    limit, alpha, E, guess_blocks, prefetch_programs, ready_ptr, split_m,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, ONE_DOT: tl.constexpr, W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr,
    HALF_TAIL: tl.constexpr, PDL: tl.constexpr = False, OUT_EVICT: tl.constexpr = "",
    W_PREFETCH_LINES: tl.constexpr = 0, READY: tl.constexpr = False,
):
    """W_TMA: `w_ptr` is a TMA descriptor of the weight's 2D view (see `_w_tile`), W_T its transposed storage.
    A_TMA: `x_ptr` is a TMA descriptor of the tokens already gathered in the aligned order, (P, H) (see
    `align.gather_rows`): row blocks loaded whole instead of gathered row by row.
    HALF_TAIL: a block with at most BLOCK_M // 2 real rows (an expert's last) computes only its top half
    (rows past it are never read: the down kernel decides the same way); `x_half_ptr` is `x_ptr` again, or
    with A_TMA a descriptor of half-height boxes.
    W_PREFETCH_LINES > 0: the first wave prefetches weights while it waits (`_prefetch_guessed_tile`).
    READY (SPLIT): each program then bumps ready_ptr[0] if its row block is before split_m, else ready_ptr[1].
    One path is compiled: the other's weight tiles would not match this layout's TMA box."""
    if W_PREFETCH_LINES > 0:
        _prefetch_guessed_tile(w_ptr, num_blocks_m, tl.cdiv(I, BLOCK_N), E, guess_blocks, prefetch_programs, I, H,
                               stride_we, stride_wn, GATE_MODE, BLOCK_N, GROUP_M, W_PREFETCH_LINES)
    row0, pid_n, expert = _row_block(block_expert_ptr, num_blocks_m, tl.cdiv(I, BLOCK_N), ready_ptr, 0, BLOCK_M,
                                     GROUP_M, PDL, READY, -1, False)
    part_counter = ready_ptr + (row0 // BLOCK_M >= split_m).to(tl.int32)
    if expert < 0:  # a block past the last expert's (an early return: a helper's would not end the kernel)
        if READY:
            signal_done(part_counter)
        return
    if HALF_TAIL and _half_full(sorted_ptr, row0, S, BLOCK_M):
        _gate_up_tile(x_half_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                      stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap,
                      limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M // 2, BLOCK_N, BLOCK_K, EVEN_K,
                      ONE_DOT, W_TMA, W_T, A_TMA, OUT_EVICT)
    else:
        _gate_up_tile(x_ptr, w_ptr, b_ptr, a_ptr, sorted_ptr, row0, pid_n, expert, S, TOPK, H, I,
                      stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn, stride_ap,
                      limit, alpha, GATE_MODE, ACT, HAS_BIAS, DOT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                      ONE_DOT, W_TMA, W_T, A_TMA, OUT_EVICT)
    if READY:
        signal_done(part_counter)


@triton.jit
def _down_tile(
    a_ptr, w_ptr, b_ptr, y_ptr, topk_w_ptr, sorted_ptr, row0, pid_n, expert, S, H, I,
    stride_ap, stride_we, stride_wh, stride_wi, stride_be, stride_bh, stride_ys,
    MUL_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr, OUT_EVICT: tl.constexpr,
):
    """y[pair] for the BLOCK_M rows from row0 and column tile pid_n of `expert`, routing weight applied, stored
    with the L2 eviction policy OUT_EVICT."""
    offs_p, pair, row_ok, _ = _block_pairs(row0, sorted_ptr, S, 1, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_n_safe = tl.where(n_ok, offs_n, 0)
    offs_k = tl.arange(0, BLOCK_K)
    if not A_TMA:
        a_ptrs = a_ptr + offs_p.to(tl.int64)[:, None] * stride_ap + offs_k[None, :]
    if not W_TMA:
        w_base = w_ptr + expert.to(tl.int64) * stride_we
        w_ptrs = w_base + offs_k[:, None] * stride_wi + offs_n_safe[None, :] * stride_wh
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(I, BLOCK_K)):
        k_ok = offs_k < I - k * BLOCK_K
        if A_TMA:
            a = a_ptr.load([row0, k * BLOCK_K])
        elif EVEN_K:
            a = tl.load(a_ptrs)
        else:
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        if not A_TMA:
            a_ptrs += BLOCK_K
        if W_TMA:
            w = _w_tile(w_ptr, expert, H, I, pid_n * BLOCK_N, k * BLOCK_K, W_T)
        elif EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = _dot(a, w, acc, DOT_MODE)
        if not W_TMA:
            w_ptrs += BLOCK_K * stride_wi
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert.to(tl.int64) * stride_be + offs_n_safe * stride_bh).to(tl.float32)[None, :]
    if MUL_WEIGHT:
        rw = tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * rw[:, None]
    y_ptrs = y_ptr + tl.where(row_ok, pair, 0).to(tl.int64)[:, None] * stride_ys + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :], eviction_policy=OUT_EVICT)


@triton.jit
def _down_grouped_kernel(
    a_ptr, a_half_ptr, w_ptr, b_ptr, y_ptr, topk_w_ptr, sorted_ptr, block_expert_ptr,
    S, H, I, num_blocks_m,
    stride_ap, stride_we, stride_wh, stride_wi, stride_be, stride_bh, stride_ys, ready_ptr, wait_programs,
    MUL_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, W_TMA: tl.constexpr, W_T: tl.constexpr, A_TMA: tl.constexpr,
    HALF_TAIL: tl.constexpr, PDL: tl.constexpr = False, OUT_EVICT: tl.constexpr = "",
    READY_WAIT: tl.constexpr = -1, READY_SIGNAL: tl.constexpr = -1,
):
    """W_TMA: `w_ptr` is a TMA descriptor of the weight's 2D view (see `_w_tile`), W_T its transposed storage.
    A_TMA: `a_ptr` is a TMA descriptor of the (P, I) intermediate. HALF_TAIL as in the gate/up kernel
    (`a_half_ptr`: `a_ptr` again, or the half-height-box descriptor). SPLIT (`ready`): READY_WAIT >= 0, each
    program waits for counter ready_ptr[READY_WAIT] to reach wait_programs instead of on the launch before;
    READY_SIGNAL >= 0, it then bumps ready_ptr[READY_SIGNAL]."""
    row0, pid_n, expert = _row_block(block_expert_ptr, num_blocks_m, tl.cdiv(H, BLOCK_N), ready_ptr, wait_programs,
                                     BLOCK_M, GROUP_M, PDL, False, READY_WAIT, A_TMA)
    if expert < 0:  # a block past the last expert's (an early return: a helper's would not end the kernel)
        if READY_SIGNAL >= 0:
            signal_done(ready_ptr + READY_SIGNAL)
        return
    if HALF_TAIL and _half_full(sorted_ptr, row0, S, BLOCK_M):
        _down_tile(a_half_ptr, w_ptr, b_ptr, y_ptr, topk_w_ptr, sorted_ptr, row0, pid_n, expert, S, H, I,
                   stride_ap, stride_we, stride_wh, stride_wi, stride_be, stride_bh, stride_ys,
                   MUL_WEIGHT, HAS_BIAS, DOT_MODE, BLOCK_M // 2, BLOCK_N, BLOCK_K, EVEN_K, W_TMA, W_T, A_TMA,
                   OUT_EVICT)
    else:
        _down_tile(a_ptr, w_ptr, b_ptr, y_ptr, topk_w_ptr, sorted_ptr, row0, pid_n, expert, S, H, I,
                   stride_ap, stride_we, stride_wh, stride_wi, stride_be, stride_bh, stride_ys,
                   MUL_WEIGHT, HAS_BIAS, DOT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, W_TMA, W_T, A_TMA, OUT_EVICT)
    if READY_SIGNAL >= 0:
        signal_done(ready_ptr + READY_SIGNAL)


@triton.jit
def _gate_up_decode_step(x_ptrs, wg_ptrs, wu_ptrs, acc_g, acc_u, offs_k, k, H, stride_xh, stride_wh,
                         GATE_MODE: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, W_EVICT: tl.constexpr):
    """Reduction step k of `_gate_up_decode_kernel`: the gate and up partial products, elementwise in float32."""
    if EVEN_K:
        xk = tl.load(x_ptrs + k * BLOCK_K * stride_xh).to(tl.float32)
        wg = tl.load(wg_ptrs + k * BLOCK_K * stride_wh, eviction_policy=W_EVICT)
    else:
        k_ok = offs_k < H - k * BLOCK_K
        xk = tl.load(x_ptrs + k * BLOCK_K * stride_xh, mask=k_ok, other=0.0).to(tl.float32)
        wg = tl.load(wg_ptrs + k * BLOCK_K * stride_wh, mask=k_ok[None, :], other=0.0, eviction_policy=W_EVICT)
    acc_g += wg.to(tl.float32) * xk[None, :]
    if GATE_MODE != 0:
        if EVEN_K:
            wu = tl.load(wu_ptrs + k * BLOCK_K * stride_wh, eviction_policy=W_EVICT)
        else:
            wu = tl.load(wu_ptrs + k * BLOCK_K * stride_wh, mask=k_ok[None, :], other=0.0, eviction_policy=W_EVICT)
        acc_u += wu.to(tl.float32) * xk[None, :]
    return acc_g, acc_u


@triton.jit
def _gate_up_decode_kernel(
    x_ptr, ids_ptr, w_ptr, b_ptr, a_ptr,
    TOPK, H, I, E,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_be, stride_bn,
    limit, alpha,
    GATE_MODE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, EVEN_K: tl.constexpr, UNROLL: tl.constexpr,
    W_EVICT: tl.constexpr = "", PDL: tl.constexpr = False,
):
    """a[s, n-tile] = gate(x[t] @ W_up[e]^T) for one pair s = (t, k), e its expert; float32 out (S, I).
    UNROLL: the NUM_K = cdiv(H, BLOCK_K) reduction steps unrolled, so no step waits on another's loads
    (the plan unrolls only where those loads fit in registers). W_EVICT: the weights' L2 eviction policy,
    "evict_first" by default: each is read once, so they leave L2 before lines that may be read again
    (the tokens, whatever the kernels before this one left there)."""
    pdl_enter(PDL)
    s = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = s // TOPK
    e = tl.load(ids_ptr + s).to(tl.int32)
    e = tl.where((e >= 0) & (e < E), e, 0)  # an out-of-range pair is computed on expert 0, then dropped in down
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(tl.where(n_ok, offs_n, 0), I, GATE_MODE)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + e.to(tl.int64) * stride_we
    x_ptrs = x_ptr + t.to(tl.int64) * stride_xt + offs_k * stride_xh
    wg_ptrs = w_base + gate_rows[:, None] * stride_wn + offs_k[None, :] * stride_wh  # (BLOCK_N, BLOCK_K)
    wu_ptrs = w_base + up_rows[:, None] * stride_wn + offs_k[None, :] * stride_wh
    acc_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if UNROLL:
        for k in tl.static_range(NUM_K):
            acc_g, acc_u = _gate_up_decode_step(x_ptrs, wg_ptrs, wu_ptrs, acc_g, acc_u, offs_k, k, H, stride_xh,
                                                stride_wh, GATE_MODE, BLOCK_K, EVEN_K, W_EVICT)
    else:
        for k in range(NUM_K):
            acc_g, acc_u = _gate_up_decode_step(x_ptrs, wg_ptrs, wu_ptrs, acc_g, acc_u, offs_k, k, H, stride_xh,
                                                stride_wh, GATE_MODE, BLOCK_K, EVEN_K, W_EVICT)
    g = tl.sum(acc_g, axis=1)
    if HAS_BIAS:
        b_base = b_ptr + e.to(tl.int64) * stride_be
        g += tl.load(b_base + gate_rows * stride_bn).to(tl.float32)
    if GATE_MODE != 0:
        u = tl.sum(acc_u, axis=1)
        if HAS_BIAS:
            u += tl.load(b_base + up_rows * stride_bn).to(tl.float32)
        out = _gate(g, u, ACT, limit, alpha)
    else:
        out = _act(g, ACT, alpha)
    tl.store(a_ptr + s.to(tl.int64) * I + offs_n, out, mask=n_ok)


@triton.jit
def _down_decode_pair(a_ptr, ids_ptr, topk_w_ptr, w_ptr, b_ptr, acc, bias, s, offs_n_safe, n_ok, offs_k, I, E,
                      stride_we, stride_wh, stride_wi, stride_be, stride_bh,
                      REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
                      EVEN_K: tl.constexpr, UNROLL: tl.constexpr, W_EVICT: tl.constexpr):
    """Pair s's share of `_down_decode_kernel`: rw * a[s] @ W_down[e]^T into acc, rw * b[e] into bias; an
    invalid pair is masked (no loads), not branched around."""
    e = tl.load(ids_ptr + s).to(tl.int32)
    valid = (e >= 0) & (e < E)
    e = tl.where(valid, e, 0)
    if REDUCE:
        rw = tl.load(topk_w_ptr + s).to(tl.float32)
    else:
        rw = 1.0
    w_ptrs = w_ptr + e.to(tl.int64) * stride_we + offs_n_safe[:, None] * stride_wh + offs_k[None, :] * stride_wi
    a_ptrs = a_ptr + s.to(tl.int64) * I + offs_k
    if UNROLL:
        for k in tl.static_range(NUM_K):
            acc = _down_decode_step(a_ptrs, w_ptrs, acc, rw, valid, offs_k, k, I, stride_wi, BLOCK_K, EVEN_K,
                                    W_EVICT)
    else:
        for k in range(NUM_K):
            acc = _down_decode_step(a_ptrs, w_ptrs, acc, rw, valid, offs_k, k, I, stride_wi, BLOCK_K, EVEN_K,
                                    W_EVICT)
    if HAS_BIAS:
        b = tl.load(b_ptr + e.to(tl.int64) * stride_be + offs_n_safe * stride_bh, mask=valid & n_ok, other=0.0)
        bias += rw * b.to(tl.float32)
    return acc, bias


@triton.jit
def _down_decode_step(a_ptrs, w_ptrs, acc, rw, valid, offs_k, k, I, stride_wi,
                      BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, W_EVICT: tl.constexpr):
    if EVEN_K:
        ak = tl.load(a_ptrs + k * BLOCK_K, mask=valid, other=0.0)
        wd = tl.load(w_ptrs + k * BLOCK_K * stride_wi, mask=valid, other=0.0, eviction_policy=W_EVICT)
    else:
        k_ok = (offs_k < I - k * BLOCK_K) & valid
        ak = tl.load(a_ptrs + k * BLOCK_K, mask=k_ok, other=0.0)
        wd = tl.load(w_ptrs + k * BLOCK_K * stride_wi, mask=k_ok[None, :], other=0.0, eviction_policy=W_EVICT)
    return acc + wd.to(tl.float32) * (ak * rw)[None, :]


@triton.jit
def _down_decode_kernel(
    a_ptr, ids_ptr, topk_w_ptr, w_ptr, b_ptr, out_ptr,
    H, I, E,
    stride_we, stride_wh, stride_wi, stride_be, stride_bh, stride_ot,
    PAIRS: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, EVEN_K: tl.constexpr, UNROLL: tl.constexpr,
    W_EVICT: tl.constexpr = "", PDL: tl.constexpr = False,
):
    """REDUCE: out[t, h-tile] = sum_k w[t,k] * (a[t*K+k] @ W_down[e]^T + b[e]), one program per (t, tile),
    PAIRS = K. Otherwise (PAIRS = 1) out[s, h-tile] = a[s] @ W_down[e]^T + b[e] per pair (for a post-expert
    norm). UNROLL: pairs and reduction steps unrolled, so every pair's loads are in flight together (the
    plan unrolls only where they fit in registers). W_EVICT as in `_gate_up_decode_kernel`."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_n_safe = tl.where(n_ok, offs_n, 0)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if UNROLL:
        for j in tl.static_range(PAIRS):
            acc, bias = _down_decode_pair(a_ptr, ids_ptr, topk_w_ptr, w_ptr, b_ptr, acc, bias, row * PAIRS + j,
                                          offs_n_safe, n_ok, offs_k, I, E, stride_we, stride_wh, stride_wi, stride_be,
                                          stride_bh, REDUCE, HAS_BIAS, BLOCK_K, NUM_K, EVEN_K, UNROLL, W_EVICT)
    else:
        for j in range(PAIRS):
            acc, bias = _down_decode_pair(a_ptr, ids_ptr, topk_w_ptr, w_ptr, b_ptr, acc, bias, row * PAIRS + j,
                                          offs_n_safe, n_ok, offs_k, I, E, stride_we, stride_wh, stride_wi, stride_be,
                                          stride_bh, REDUCE, HAS_BIAS, BLOCK_K, NUM_K, EVEN_K, UNROLL, W_EVICT)
    out = tl.sum(acc, axis=1) + bias
    tl.store(out_ptr + row.to(tl.int64) * stride_ot + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_ok)
