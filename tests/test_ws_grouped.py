"""The warp-specialized GEMMs (`moe_lab.kernels.ws_grouped`): where a config's `"ws"` entry applies, and on an
H100 (sm90) that `triton_fused` with it equals the float64 reference on the shape set of the other backends.

Gluon kernels have no interpreter: the GPU tests skip without an sm90 GPU (tests/test_triton_compile_sm90.py
builds them for sm90 on CPU); `ws_refusal` runs everywhere. Legend as in `moe_lab.kernels.fused_moe`.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_backends import CASES, LAYOUTS, Case, make_experts, make_inputs

from moe_lab import reference_experts, relative_error

HAS_TRITON = importlib.util.find_spec("triton") is not None
SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
if not HAS_TRITON:
    pytest.skip("needs triton (pip install 'moe-lab[triton]')", allow_module_level=True)

from moe_lab.kernels.ops import GateSpec, ws_refusal  # noqa: E402  (after the skip: ops imports triton)

TOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2}
WS = {"BLOCK_M": 128, "up": dict(BLOCK_N=128, BLOCK_K=64, STAGES=4, num_warps=8, GROUP_M=8),
      "down": dict(BLOCK_N=128, BLOCK_K=64, STAGES=4, num_warps=8, GROUP_M=8)}
SMALL_WS = {"BLOCK_M": 64, "up": dict(BLOCK_N=32, BLOCK_K=16, STAGES=3, num_warps=4, GROUP_M=2),
            "down": dict(BLOCK_N=32, BLOCK_K=16, STAGES=2, num_warps=4, GROUP_M=2)}  # many tiles on tiny shapes
TRITON_TILES = {"path": "grouped", "BLOCK_M": 16, "up": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4,
                                                              num_stages=2),
                "down": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)}
SILU_CONCAT = GateSpec(gate_mode=1, act=0)
SILU_NOGATE = GateSpec(gate_mode=0, act=0)
E, H, I = 8, 256, 128
CONTIGUOUS = dict(up_strides=(2 * I * H, H, 1), down_strides=(H * I, I, 1), x_strides=(H, 1))


def one_mma(ws: dict) -> dict:
    """`ws` with gate/up's gate and up tiles run as one wgmma of 2 x BLOCK_N columns."""
    return {**ws, "up": {**ws["up"], "ONE_MMA": 1}}


def refusal(**changes) -> str | None:
    args = dict(ws=WS, sms=132, dtype=torch.bfloat16, spec=SILU_CONCAT, has_bias=False, reduce=True, **CONTIGUOUS,
                E=E, H=H, I=I)
    return ws_refusal(**{**args, **changes})


def test_ws_applies_to_a_contiguous_concatenated_bf16_layout():
    assert refusal() is None
    assert refusal(dtype=torch.float16) is None
    assert refusal(up_strides=(2 * I * H, 1, 2 * I), down_strides=(H * I, 1, H)) is None  # transposed storage


@pytest.mark.parametrize("changes, reason", [
    (dict(sms=0), "sm90"),
    (dict(dtype=torch.float32), "bf16 or fp16"),
    (dict(spec=GateSpec(gate_mode=2, act=0)), "interleaved"),
    (dict(has_bias=True), "no bias"),
    (dict(reduce=False), "top-k sum"),
    (dict(ws={**WS, "BLOCK_M": 64}), "16 rows per consumer warp"),
    (dict(ws={**WS, "up": {**WS["up"], "STAGES": 5}}), "shared memory"),
    (dict(ws={**WS, "down": {**WS["down"], "STAGES": 6, "PINGPONG": 1, "num_warps": 4}}), "shared memory"),
    (dict(ws={**WS, "down": {**WS["down"], "PINGPONG": 1}}), "one warp group"),
    (dict(ws={**WS, "down": {**WS["down"], "ONE_MMA": 1}}), "one weight tile"),
    (dict(ws={**WS, "up": {**WS["up"], "ONE_MMA": 1, "BLOCK_N": 256, "STAGES": 2}}), "at most 256"),
    (dict(ws=one_mma(WS), spec=SILU_NOGATE), "one weight tile"),
    (dict(ws={**WS, "down": {**WS["down"], "X_L2_LAST": 1}}), "down reads no token rows"),
    (dict(ws={**WS, "up": {**WS["up"], "X_L2_LAST": 9}}), "0 to 8"),
    (dict(ws=one_mma(WS), up_strides=(2 * I * H, 1, 2 * I)), "untransposed"),
    (dict(ws={**WS, "BLOCK_M": 64, "HALF_TAIL": 1, "up": {**WS["up"], "num_warps": 4},
              "down": {**WS["down"], "num_warps": 4}}), "HALF_TAIL needs BLOCK_M >= 128"),
    (dict(up_strides=(2 * I * H + 8, H, 1)), "contiguous"),
    (dict(H=200, up_strides=(2 * I * 200, 200, 1), down_strides=(200 * I, I, 1)), "multiple of BLOCK_K"),
    (dict(x_strides=(2 * H, 2)), "contiguous"),
])
def test_ws_refusal_names_why(changes, reason):
    why = refusal(**changes)
    assert why is not None and reason in why, why


gpu = pytest.mark.skipif(not SM90, reason="the warp-specialized GEMMs run on an sm90 GPU (wgmma)")


def run(experts, x_TH, ids_TK, w_TK, ws: dict) -> tuple[torch.Tensor, object]:
    """triton_fused with the Triton tiles and `ws`; the output and the plan that ran."""
    from moe_lab.backends import triton_fused

    with torch.no_grad():
        out_TH = triton_fused.triton_fused_experts(experts, x_TH, ids_TK, w_TK, config={**TRITON_TILES, "ws": ws})
    return out_TH, list(triton_fused._PLANS[experts].values())[-1]


PINGPONG = {"BLOCK_M": 128, "up": dict(BLOCK_N=64, BLOCK_K=64, STAGES=5, num_warps=4, GROUP_M=8, PINGPONG=1),
            "down": dict(BLOCK_N=128, BLOCK_K=64, STAGES=5, num_warps=4, GROUP_M=8, PINGPONG=1)}
SMALL_PINGPONG = {"BLOCK_M": 64, "up": dict(BLOCK_N=32, BLOCK_K=16, STAGES=3, num_warps=4, GROUP_M=2, PINGPONG=1),
                  "down": dict(BLOCK_N=32, BLOCK_K=16, STAGES=2, num_warps=4, GROUP_M=2, PINGPONG=1)}
HALF_TAIL = {**WS, "HALF_TAIL": 1}  # half-height last blocks: the cooperative warp groups split the columns
HALF_TAIL_PINGPONG = {**PINGPONG, "HALF_TAIL": 1}


def expert_groups(ws: dict) -> dict:
    """`ws` with its GROUP_M groups started again at each expert's first block, in both GEMMs."""
    return {**ws, **{gemm: {**ws[gemm], "EXPERT_GROUPS": 1} for gemm in ("up", "down")}}


SIZES = {"h100_tile": (WS, 256, 128), "small_tile": (SMALL_WS, 64, 48), "pingpong": (PINGPONG, 256, 128),
         "small_pingpong": (SMALL_PINGPONG, 64, 48), "half_tail": (HALF_TAIL, 256, 128),
         "half_tail_pingpong": (HALF_TAIL_PINGPONG, 256, 128),
         "small_expert_groups": (expert_groups(SMALL_WS), 64, 48),  # GROUP_M 2: an expert's blocks in groups
         "expert_groups_pingpong": (expert_groups(HALF_TAIL_PINGPONG), 256, 128),
         "one_mma_half_tail": (one_mma(HALF_TAIL), 256, 128),  # half tiles: gate and up as two wgmmas
         "small_one_mma_pingpong": (one_mma(SMALL_PINGPONG), 64, 48)}  # the config, and H, I


@gpu
@pytest.mark.parametrize("tile", list(SIZES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_cases_match_reference(case, dtype, tile, seed):
    """Every case of the shape set (routing, experts without tokens, a hot expert, strided tokens...) with H
    and I that TMA takes; the warp-specialized GEMMs run on all of them but where the token rows are not
    contiguous (the transposed tokens: the entry's Triton tiles run there)."""
    ws, H_, I_ = SIZES[tile]
    c = CASES[case]
    c = type(c)(**{**c.__dict__, "H": H_, "I": I_})
    experts = make_experts(c, LAYOUTS["gated_silu"], dtype, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, dtype, "cuda", seed)
    out_TH, plan = run(experts, x_TH, ids_TK, w_TK, ws)
    ref_TH = reference_experts(experts, x_TH, ids_TK, w_TK)
    err = relative_error(out_TH, ref_TH) if c.T else float(out_TH.abs().sum())
    assert err <= TOL[dtype], f"{case}: relative error {err:.3g}"
    assert getattr(plan, "ws", False) == (c.T > 0 and x_TH.stride(1) == 1), "which GEMMs ran"


@gpu
def test_sizes_tma_cannot_take_run_the_triton_tiles(seed):
    """H = 37, I = 19: no K tile of 16 fits; the entry's Triton tiles run, exact all the same."""
    c = CASES["unaligned"]
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    out_TH, plan = run(experts, x_TH, ids_TK, w_TK, SMALL_WS)
    assert not plan.ws
    assert relative_error(out_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_every_layout_runs_or_is_refused_by_name(layout, seed):
    """Where they apply the warp-specialized GEMMs run; elsewhere the entry's Triton tiles, both exact."""
    c = type(CASES["unaligned"])(**{**CASES["unaligned"].__dict__, "H": 64, "I": 48})
    experts = make_experts(c, LAYOUTS[layout], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    out_TH, plan = run(experts, x_TH, ids_TK, w_TK, SMALL_WS)
    err = relative_error(out_TH, reference_experts(experts, x_TH, ids_TK, w_TK))
    assert err <= TOL[torch.bfloat16], f"{layout}: relative error {err:.3g}"
    lay = LAYOUTS[layout]
    applies = (lay.is_concatenated or not lay.has_gate) and not lay.has_bias and not lay.has_post_expert_norm
    assert plan.ws == applies, layout
    from moe_lab.backends.triton_fused import ran_warp_specialized

    assert ran_warp_specialized(experts, {**TRITON_TILES, "ws": SMALL_WS}) == applies, "what the tuner reads"


@gpu
@pytest.mark.parametrize("ws", [WS, PINGPONG, HALF_TAIL, HALF_TAIL_PINGPONG],
                         ids=["cooperative", "pingpong", "half_tail", "half_tail_pingpong"])
@pytest.mark.parametrize("T", [300, 4096])
def test_same_bits_every_call_and_under_a_cuda_graph(T, ws, seed):
    """Pairs change places inside their expert's group call to call; every row is computed on its own and
    summed in k order, so the output does not change; no host synchronisation: a CUDA graph replays it."""
    c = CASES["skewed"]
    c = type(c)(**{**c.__dict__, "T": T, "H": 256, "I": 128})
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    first, plan = run(experts, x_TH, ids_TK, w_TK, ws)
    assert plan.ws
    for _ in range(3):
        assert torch.equal(run(experts, x_TH, ids_TK, w_TK, ws)[0], first)
    assert plan.up.compiled is not None and plan.down.compiled is not None, "launched through Triton's JIT path"
    from moe_lab.backends import triton_fused

    config = {**TRITON_TILES, "ws": ws}
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out_TH = triton_fused.triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=config)
    x2_TH, ids2_TK, w2_TK = make_inputs(c, torch.bfloat16, "cuda", seed + 1)
    x_TH.copy_(x2_TH), ids_TK.copy_(ids2_TK), w_TK.copy_(w2_TK)
    graph.replay()
    torch.cuda.synchronize()
    assert relative_error(out_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("ws", [HALF_TAIL, HALF_TAIL_PINGPONG], ids=["cooperative", "pingpong"])
@pytest.mark.parametrize("last_rows", [1, 64, 65])
def test_half_height_last_blocks_change_no_bit(ws, last_rows, seed):
    """Every expert gets 128 + last_rows pairs: its last block runs half height where last_rows <= 64, whole
    past that; either way each row's sums are those of the whole-height tiles, bit for bit."""
    c = Case(E=8, H=256, I=128, K=2, T=8 * (128 + last_rows) // 2)
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    T, K, E_, H_ = c.T, c.K, c.E, c.H
    gen = torch.Generator().manual_seed(seed)
    x_TH = torch.randn(T, H_, generator=gen).to("cuda", torch.bfloat16)
    ids_TK = (torch.arange(T * K) % E_).view(T, K).cuda()  # distinct experts per token, 128 + last_rows each
    w_TK = torch.rand(T, K, generator=gen).to("cuda", torch.bfloat16)
    assert torch.equal(torch.bincount(ids_TK.flatten(), minlength=E_).cpu(), torch.full((E_,), 128 + last_rows))
    half_TH, plan = run(experts, x_TH, ids_TK, w_TK, ws)
    assert plan.ws and plan.half_tail
    whole_TH, _ = run(experts, x_TH, ids_TK, w_TK, {k: v for k, v in ws.items() if k != "HALF_TAIL"})
    assert torch.equal(half_TH, whole_TH)
    assert relative_error(half_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("ws", [SMALL_WS, HALF_TAIL_PINGPONG], ids=["small_tile", "half_tail_pingpong"])
@pytest.mark.parametrize("routing", ["uniform", "skewed", "hot"])
def test_expert_groups_change_no_bit(ws, routing, seed):
    """EXPERT_GROUPS only reorders the tiles (each still computed on its own): every tile of every expert
    runs once, and the output equals the one in the plain grouped order bit for bit."""
    c = Case(E=8, H=256, I=128, K=2, T=1000, routing=routing)
    H_, I_ = SIZES["small_tile" if ws is SMALL_WS else "half_tail_pingpong"][1:]
    c = type(c)(**{**c.__dict__, "H": H_, "I": I_})
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    grouped_TH, plan = run(experts, x_TH, ids_TK, w_TK, expert_groups(ws))
    assert plan.ws and plan.up.consts["EXPERT_GROUPS"] and plan.down.consts["EXPERT_GROUPS"]
    plain_TH, _ = run(experts, x_TH, ids_TK, w_TK, ws)
    assert torch.equal(grouped_TH, plain_TH)
    assert relative_error(grouped_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("ws", [WS, HALF_TAIL, SMALL_PINGPONG], ids=["cooperative", "half_tail", "small_pingpong"])
@pytest.mark.parametrize("routing", ["uniform", "skewed"])
def test_one_mma_changes_no_bit(ws, routing, seed):
    """ONE_MMA runs gate and up as one wgmma over both weight tiles: each output element is the same sum
    over the same K steps, so the output equals the two-wgmma one bit for bit."""
    c = Case(E=8, H=256, I=128, K=2, T=1000, routing=routing)
    H_, I_ = (64, 48) if ws is SMALL_PINGPONG else (256, 128)
    c = type(c)(**{**c.__dict__, "H": H_, "I": I_})
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    one_TH, plan = run(experts, x_TH, ids_TK, w_TK, one_mma(ws))
    assert plan.ws and plan.up.consts["ONE_MMA"] and not plan.down.consts["ONE_MMA"]
    two_TH, _ = run(experts, x_TH, ids_TK, w_TK, ws)
    assert torch.equal(one_TH, two_TH)
    assert relative_error(one_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("ws", [WS, one_mma(HALF_TAIL)], ids=["cooperative", "one_mma_half_tail"])
@pytest.mark.parametrize("routing", ["uniform", "skewed"])
@pytest.mark.parametrize("rows", ["contiguous", "row_slice"])
@pytest.mark.parametrize("eighths", [8, 3])
def test_x_l2_last_changes_no_bit(ws, routing, rows, eighths, seed):
    """X_L2_LAST only gives L2 hints about the token rows (evict-last, then normal again): the output equals
    the one without bit for bit, for all of them or some eighths, also where the rows are a slice of wider
    ones (the lines marked end at the last row's last element)."""
    c = Case(E=8, H=256, I=128, K=2, T=1000, routing=routing)
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cuda", seed)
    x_TH, ids_TK, w_TK = make_inputs(c, torch.bfloat16, "cuda", seed)
    if rows == "row_slice":
        x_TH = torch.cat([x_TH, x_TH[:, :64]], dim=1)[:, :c.H]
    marked_TH, plan = run(experts, x_TH, ids_TK, w_TK, {**ws, "up": {**ws["up"], "X_L2_LAST": eighths}})
    assert plan.ws and plan.up.consts["X_L2_LAST"] == eighths and not plan.down.consts["X_L2_LAST"]
    plain_TH, _ = run(experts, x_TH, ids_TK, w_TK, ws)
    assert torch.equal(marked_TH, plain_TH)
    assert relative_error(marked_TH, reference_experts(experts, x_TH, ids_TK, w_TK)) <= TOL[torch.bfloat16]
