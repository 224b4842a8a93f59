"""`triton_fused` against the float64 reference, on both kernel paths, forced by explicit tile configs.

On a CUDA machine the kernels run on the GPU (every case, three dtypes, CUDA-graph capture). Without
one, `test_interpreter_suite` runs this file again in a subprocess with TRITON_INTERPRET=1 (which
must be set before triton is first imported, and the test session has already imported it), so the
same kernel code runs under Triton's CPU interpreter on the same tiny shapes, bf16 and fp32, in CI.
Without triton installed, everything here skips. The real-size shapes and the timings are in
benchmarks/triton_gpu.py. Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_backends import CASES, LAYOUTS, make_experts, make_inputs

from moe_lab import ExpertsLayout, reference_experts, relative_error, synthetic_routing
from moe_lab.backends.triton_fused import UnsupportedLayoutError, triton_fused_experts

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
INNER = os.environ.get("MOE_LAB_INTERPRETER_RUN") == "1"  # the subprocess run under the interpreter
INTERPRETED = False
if HAS_TRITON and (HAS_CUDA or INNER):
    import moe_lab.kernels.fused_moe  # noqa: F401  (builds the kernels now, interpreted or not)
    from moe_lab.kernels import INTERPRETED
DEVICE = "cuda" if HAS_CUDA else "cpu"
RUNS_HERE = HAS_TRITON and (HAS_CUDA or INTERPRETED)


@pytest.fixture(autouse=True)
def _kernels_run_here(request):
    if request.node.originalname != "test_interpreter_suite" and not RUNS_HERE:
        pytest.skip("no CUDA: these run under the interpreter, in test_interpreter_suite's subprocess"
                    if HAS_TRITON else "needs triton (pip install 'moe-lab[triton]')")


def test_interpreter_suite():
    """Without CUDA: this file under Triton's interpreter, in a subprocess with TRITON_INTERPRET=1."""
    if HAS_CUDA or INNER or not HAS_TRITON:
        pytest.skip("runs on CPU-only machines with triton installed, from the outer test session")
    env = {**os.environ, "TRITON_INTERPRET": "1", "MOE_LAB_INTERPRETER_RUN": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                          timeout=900)
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"interpreter run failed:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail, tail


TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.bfloat16, torch.float32] + ([torch.float16] if HAS_CUDA else [])
TILE = dict(num_warps=4, num_stages=2)
CONFIGS = {  # each kernel path forced, with small tiles so that tiny shapes still span several tiles
    "decode": {"path": "decode", "up": dict(BLOCK_N=16 if HAS_CUDA else 32, BLOCK_K=32, **TILE),
               "down": dict(BLOCK_N=16 if HAS_CUDA else 32, BLOCK_K=32, **TILE)},
    # one warp and wide tiles: more weight values per thread than an unrolled decode kernel holds (loops kept)
    "decode_rolled": {"path": "decode", "up": dict(BLOCK_N=64, BLOCK_K=128, num_warps=1, num_stages=2),
                      "down": dict(BLOCK_N=64, BLOCK_K=128, num_warps=1, num_stages=2)},
    "grouped16": {"path": "grouped", "BLOCK_M": 16, "up": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, **TILE),
                  "down": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, **TILE)},
    "grouped16_one_dot": {"path": "grouped", "BLOCK_M": 16,
                          "up": dict(BLOCK_N=16, BLOCK_K=32, GROUP_M=1, ONE_DOT=1, **TILE),
                          "down": dict(BLOCK_N=16, BLOCK_K=64, GROUP_M=1, **TILE)},
    "grouped64": {"path": "grouped", "BLOCK_M": 64, "up": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=4, **TILE),
                  "down": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=4, **TILE)},
}
CASE_NAMES = ["one_token", "no_tokens", "experts_without_tokens", "hot_expert", "top1", "single_expert",
              "unaligned_odd", "strided_hidden", "noncontiguous_routing"]  # the interpreter's share, for CI time
CASE_CONFIGS = ["decode", "grouped16", "grouped16_one_dot"]
LAYOUT_CONFIGS = ["decode", "grouped16_one_dot"]
if HAS_CUDA:
    CASE_NAMES, CASE_CONFIGS, LAYOUT_CONFIGS = list(CASES), ["decode", "grouped16_one_dot", "grouped64"], \
        ["decode", "grouped16", "grouped16_one_dot"]


def check(experts, x_TH, ids_TK, weights_TK, config, tol, what, ref_device="cpu"):
    with torch.no_grad():
        out_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=config)
        again_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=config)  # the cached plan
    ref_TH = reference_experts(experts, x_TH, ids_TK, weights_TK, device=ref_device)
    assert out_TH.shape == x_TH.shape and out_TH.dtype == x_TH.dtype, what
    for out in (out_TH, again_TH):
        err = relative_error(out, ref_TH) if x_TH.shape[0] else float(out.abs().sum())
        assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("config", CASE_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASE_NAMES)
def test_cases_match_reference(case, dtype, config, seed):
    c = CASES[case]
    experts = make_experts(c, LAYOUTS["gated_silu"], dtype, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, dtype, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, CONFIGS[config], TOL[dtype], f"{case}/{config}")


@pytest.mark.parametrize("config", LAYOUT_CONFIGS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_every_layout_matches_reference(layout, config, seed):
    c = CASES["unaligned"]
    dtype = torch.float32
    experts = make_experts(c, LAYOUTS[layout], dtype, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, dtype, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, CONFIGS[config], TOL[dtype], f"{layout}/{config}")


def test_tuned_configs_and_plan_cache(seed):
    """No explicit config (the package's table or the heuristic), token counts changing call to call."""
    c = CASES["skewed"]
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    for T in (1, 5, 40, 3, 40):
        x_TH, ids_TK, weights_TK = make_inputs(type(c)(**{**c.__dict__, "T": T}), torch.bfloat16, DEVICE, seed + T)
        check(experts, x_TH, ids_TK, weights_TK, None, TOL[torch.bfloat16], f"T={T}")


def tma_config(layout: ExpertsLayout) -> dict:
    """Weights through TMA (one box per tile: one dot for an interleaved gate/up); tiles that cross experts' rows."""
    one_dot = int(layout.has_gate and not layout.is_concatenated)
    return {"path": "grouped", "BLOCK_M": 16,
            "up": dict(BLOCK_N=32, BLOCK_K=16, GROUP_M=2, ONE_DOT=one_dot, TMA=1, **TILE),
            "down": dict(BLOCK_N=32, BLOCK_K=16, GROUP_M=2, TMA=1, **TILE)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_tma_weight_loads_match_reference(layout, dtype, seed):
    """H = 80, I = 48 with 32-row tiles: an expert's last row tile reaches into the next one's rows (masked);
    H != I, so a swapped coordinate of the transposed views shows."""
    from test_backends import Case

    c = Case(E=6, H=80, I=48, K=2, T=21, routing="skewed")
    experts = make_experts(c, LAYOUTS[layout], dtype, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, dtype, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, tma_config(LAYOUTS[layout]), TOL[dtype], f"{layout}/tma")


@pytest.mark.parametrize("case", ["unaligned_odd", "experts_without_tokens", "one_token", "top1"])
def test_decode_loops_kept_where_unrolled_loads_would_not_fit(case, seed):
    from moe_lab.kernels.ops import _unrolls

    rolled = CONFIGS["decode_rolled"]
    assert not _unrolls(2, rolled["up"]) and not _unrolls(2, rolled["down"]) and _unrolls(2, CONFIGS["decode"]["up"])
    c = CASES[case]
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, rolled, TOL[torch.bfloat16], f"{case}/decode_rolled")


def row_block_config(layout: ExpertsLayout, weights_tma: bool) -> dict:
    """Tokens gathered into the aligned order and both GEMMs' activations loaded through TMA (A_TMA), the
    weights through TMA too or by pointers."""
    cfg = tma_config(layout) if weights_tma else {
        "path": "grouped", "BLOCK_M": 16, "up": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, **TILE),
        "down": dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2, **TILE)}
    cfg["up"]["A_TMA"] = cfg["down"]["A_TMA"] = 1
    return cfg


@pytest.mark.parametrize("weights_tma", [False, True], ids=["weights_by_pointer", "weights_tma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32] if HAS_CUDA else [torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_tma_row_blocks_match_reference(layout, dtype, weights_tma, seed):
    """H = 80, I = 48: 32-wide K tiles by pointer leave a tail that TMA fills with zeros; skewed routing leaves
    experts without tokens and padding rows in most blocks."""
    from test_backends import Case

    c = Case(E=6, H=80, I=48, K=2, T=21, routing="skewed")
    experts = make_experts(c, LAYOUTS[layout], dtype, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, dtype, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, row_block_config(LAYOUTS[layout], weights_tma), TOL[dtype],
          f"{layout}/a_tma")


@pytest.mark.parametrize("case", ["hot_expert", "one_token", "noncontiguous_routing"])
def test_tma_row_blocks_cases(case, seed):
    c = CASES[case]
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    check(experts, x_TH, ids_TK, weights_TK, row_block_config(LAYOUTS["gated_silu"], False), TOL[torch.bfloat16],
          f"{case}/a_tma")


def half_tail_config(layout: ExpertsLayout, a_tma: bool) -> dict:
    """Row blocks of 32 whose last block per expert runs as a 16-row tile where its real rows fit (HALF_TAIL);
    activations by pointer or through TMA (then half-height boxes), weights through TMA."""
    cfg = {**tma_config(layout), "BLOCK_M": 32, "HALF_TAIL": 1}
    if a_tma:
        cfg["up"] = {**cfg["up"], "A_TMA": 1}
        cfg["down"] = {**cfg["down"], "A_TMA": 1}
    return cfg


@pytest.mark.parametrize("a_tma", [False, True], ids=["rows_by_pointer", "rows_tma"])
@pytest.mark.parametrize("layout", ["gated_silu", "interleaved", "gpt_oss", "everything"])
def test_half_tail_blocks_match_reference(layout, a_tma, seed):
    """Skewed routing leaves last blocks with at most 16 real rows (half tiles) and with more (full tiles) and
    experts without tokens; the alignment is checked to hold both kinds of block before the output is."""
    from test_backends import Case

    from moe_lab.kernels.align import align_by_expert

    c = Case(E=6, H=80, I=48, K=2, T=45, routing="skewed")
    dtype = torch.bfloat16 if a_tma else torch.float32
    experts = make_experts(c, LAYOUTS[layout], dtype, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, dtype, DEVICE, seed)
    sorted_P, block_expert_B, _ = align_by_expert(ids_TK.reshape(-1).contiguous(), c.E, 32)
    used = block_expert_B >= 0
    half = sorted_P.view(-1, 32)[:, 16] >= c.T * c.K
    assert bool((used & half).any()) and bool((used & ~half).any()), "the routing must give both kinds of block"
    check(experts, x_TH, ids_TK, weights_TK, half_tail_config(LAYOUTS[layout], a_tma), TOL[dtype],
          f"{layout}/half_tail")


@pytest.mark.parametrize("config", ["grouped16", "half_tail_rows_tma"])
@pytest.mark.parametrize("routing", ["uniform", "skewed"])
def test_split_parts_equal_the_whole_call(config, routing, seed):
    """`"SPLIT": 1` runs down in two parts of the row blocks after one gate/up launch, ordered by `ready`
    counters: the same bits as the whole launches, on routing that leaves one part nearly without rows too."""
    from test_backends import Case

    from moe_lab.backends.triton_fused import _PLANS

    c = Case(E=6, H=80, I=48, K=2, T=45, routing=routing)
    cfg = CONFIGS["grouped16"] if config == "grouped16" else half_tail_config(LAYOUTS["gated_silu"], True)
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    with torch.no_grad():
        whole_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config={**cfg, "SPLIT": 0})
        split_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config={**cfg, "SPLIT": 1})
    assert [len(p.parts) for p in _PLANS[experts].values()] == [1, 2]
    assert torch.equal(split_TH, whole_TH)
    assert relative_error(split_TH, reference_experts(experts, x_TH, ids_TK, weights_TK)) <= TOL[torch.bfloat16]


def test_half_tail_refused_below_32_rows(seed):
    c = CASES["small"]
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    with pytest.raises(ValueError, match="HALF_TAIL needs BLOCK_M >= 32"):
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config={**CONFIGS["grouped16"], "HALF_TAIL": 1})


def test_tma_row_blocks_refused_on_unaligned_rows(seed):
    from test_backends import Case

    c = Case(E=4, H=44, I=48, K=2, T=9)  # a bf16 row of 44 is 88 bytes: not a TMA row stride
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    with pytest.raises(ValueError, match="A_TMA on the gathered tokens needs rows of a multiple of 16 bytes"):
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK,
                             config=row_block_config(LAYOUTS["gated_silu"], False))


def test_tma_is_refused_where_it_does_not_apply(seed):
    from test_backends import Case

    c = Case(E=4, H=48, I=40, K=2, T=9)  # I = 40: a 16-wide K tile of down would cross experts
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.float32, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.float32, DEVICE, seed)
    with pytest.raises(ValueError, match="reduction size 40 to be a multiple of BLOCK_K 16"):
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=tma_config(LAYOUTS["gated_silu"]))
    c = Case(E=4, H=48, I=48, K=2, T=9)
    experts = make_experts(c, LAYOUTS["interleaved"], torch.float32, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.float32, DEVICE, seed)
    two_dots = tma_config(LAYOUTS["interleaved"])
    two_dots["up"]["ONE_DOT"] = 0
    with pytest.raises(ValueError, match="ONE_DOT=1 for an interleaved layout"):
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=two_dots)


def test_tune_kernels_merges_configs_that_run(tmp_path, monkeypatch, seed):
    """`moe-lab tune-kernels`' search on the real kernels (a shrunk space, the tiny shape): each bucket's winner
    lands in the file MOE_LAB_KERNEL_CONFIGS names, and calls without a config then run it, correctly."""
    from moe_lab.kernels import configs, search
    from moe_lab.shapes import build_experts

    monkeypatch.setattr(search, "DECODE_UP", [(32, 128, 4), (64, 128, 4)])  # few programs: the interpreter is slow
    monkeypatch.setattr(search, "DECODE_DOWN", [(64, 128, 4), (128, 128, 4)])
    monkeypatch.setattr(search, "GROUPED", {16: ([(64, 32, 1, 4, 2)], [(64, 32, 1, 4, 2), (128, 32, 1, 4, 2)])})
    path = tmp_path / "tuned.json"
    monkeypatch.setenv(configs.CONFIG_ENV, str(path))
    table, rows = search.search(["tiny"], [1, 24], torch.bfloat16, DEVICE, reps=1, log=lambda m: None)
    search.merge_table(path, table)
    kind = next(iter(table))
    tuned = json.loads(path.read_text())[kind]["bfloat16"]["E8_H128_I96_K2"]
    assert set(tuned) == {"1", "24"} and sum(r["chosen"] for r in rows) == 2
    assert all(math.isfinite(r["ms"]) for r in rows)  # every config ran, the TMA ones (H, I multiples of 32) too
    has_tma = DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9
    assert any('"TMA": 1' in r["config"] for r in rows) == has_tma
    experts = build_experts("tiny", device=DEVICE, dtype=torch.bfloat16, seed=seed)
    for T in (1, 24, 50):  # 50 falls in bucket 24
        cfg = configs.get_config(kind, "bfloat16", T, 8, 128, 96, 2)
        assert cfg == tuned["24" if T >= 24 else "1"]
        ids_TK, w_TK = synthetic_routing("uniform", T, 8, 2, seed=seed + T, device=DEVICE)
        x_TH = torch.randn(T, 128, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16)
        check(experts, x_TH, ids_TK, w_TK, None, TOL[torch.bfloat16], f"tuned T={T}")


def test_tune_kernels_ws_only_times_the_entries_on_the_config_in_force(seed):
    """`--ws-only`: the config in force, then it with each warp-specialized entry, whole-height and with
    half-height last blocks, then the fastest of those with expert-aligned groups in gate/up, down and both,
    then the fastest with gate and up as one wgmma, then the fastest with the token rows kept in L2 (they run
    where they apply, else the config's own tiles: under the interpreter, and here I = 96 is no multiple of
    their K tile)."""
    from moe_lab.kernels import search
    from moe_lab.shapes import build_experts

    experts = build_experts("tiny", device=DEVICE, dtype=torch.bfloat16, seed=seed)
    ids_TK, w_TK = synthetic_routing("uniform", 24, 8, 2, seed=seed, device=DEVICE)
    x_TH = torch.randn(24, 128, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16)
    results = search.search_bucket(experts, (x_TH, ids_TK, w_TK), CONFIGS["grouped16"], False, 1, lambda m: None,
                                   ws=True, ws_only=True)
    ws_of = [(ms, json.loads(k).get("ws")) for ms, k in results]
    x_l2_last = [ws for _, ws in ws_of if ws and ws["up"].get("X_L2_LAST")]
    ws_of = [(ms, ws) for ms, ws in ws_of if not (ws and ws["up"].get("X_L2_LAST"))]
    fastest = min((ms, json.dumps(ws, sort_keys=True)) for ms, ws in ws_of if ws)[1]
    assert len(x_l2_last) == 1 and x_l2_last[0]["up"].pop("X_L2_LAST") == search.x_l2_eighths(24 * 128 * 2) == 8
    assert json.dumps(x_l2_last[0], sort_keys=True) == fastest, "the fastest entry so far, token rows kept in L2"
    one_mma = [ws for _, ws in ws_of if ws and ws["up"].get("ONE_MMA")]
    ws_of = [(ms, ws) for ms, ws in ws_of if not (ws and ws["up"].get("ONE_MMA"))]
    fastest = min((ms, json.dumps(ws, sort_keys=True)) for ms, ws in ws_of if ws)[1]
    assert len(one_mma) == 1 and one_mma[0]["up"].pop("ONE_MMA") == 1
    assert json.dumps(one_mma[0], sort_keys=True) == fastest, "the fastest entry so far, gate and up as one wgmma"
    expert_groups = [ws for _, ws in ws_of if ws and any("EXPERT_GROUPS" in ws[g] for g in ("up", "down"))]
    plain = [(ms, ws) for ms, ws in ws_of if ws not in expert_groups]
    entries = [None, *search.WS_SPACE, *({**e, "HALF_TAIL": 1} for e in search.WS_SPACE)]
    assert sorted(json.dumps(ws, sort_keys=True) for _, ws in plain) == sorted(json.dumps(e, sort_keys=True)
                                                                              for e in entries)
    best = min((ms, json.dumps(ws, sort_keys=True)) for ms, ws in plain if ws)[1]
    assert sorted(tuple(g for g in ("up", "down") if ws[g].pop("EXPERT_GROUPS", 0)) for ws in expert_groups) == \
        [("down",), ("up",), ("up", "down")]
    assert all(json.dumps(ws, sort_keys=True) == best for ws in expert_groups), "the fastest entry, with EXPERT_GROUPS"
    assert all(math.isfinite(ms) for ms, _ in results)


@pytest.mark.parametrize("mode", ["one_launch", "two_launches"])
def test_multi_program_alignment(mode, seed):
    """More pairs than one alignment program takes, in a whole call: one launch of programs that each count
    every pair, and (more than one launch takes) the two-launch path."""
    from test_backends import Case

    from moe_lab.kernels.align import CHUNK, ONE_LAUNCH_MAX_PAIRS

    pairs = {"one_launch": CHUNK, "two_launches": ONE_LAUNCH_MAX_PAIRS}[mode] + 100
    c = Case(E=5, H=16, I=16, K=2, T=pairs // 2, routing="skewed")
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.float32, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.float32, DEVICE, seed)
    cfg = {"path": "grouped", "BLOCK_M": 64, "up": dict(BLOCK_N=16, BLOCK_K=16, GROUP_M=8, **TILE),
           "down": dict(BLOCK_N=16, BLOCK_K=16, GROUP_M=8, **TILE)}
    check(experts, x_TH, ids_TK, weights_TK, cfg, TOL[torch.float32], "multi-program alignment")


@pytest.mark.parametrize("key,launches", [(None, 1), (0, 2)])
def test_one_launch_align_key_takes_two_launches(key, launches):
    """Up to ONE_LAUNCH_MAX_PAIRS pairs the plan aligns in one launch; a config's `"ONE_LAUNCH_ALIGN": 0` takes
    the two-launch path there too (for A/Bs); no launch here."""
    from moe_lab.kernels.ops import GateSpec, Plan

    E, H, I, K, T = 4, 64, 32, 2, 300
    config = {**CONFIGS["grouped16"], **({} if key is None else {"ONE_LAUNCH_ALIGN": key})}
    plan = Plan(T, K, E, H, I, torch.float32, GateSpec(1, 0), config, (2 * I * H, H, 1), (H * I, I, 1), None,
                (H, 1), True)
    assert len(plan.align) == launches


@pytest.mark.parametrize("mode", ["one_program", "one_launch", "two_launches"])
def test_alignment_groups_and_pads_every_expert(mode):
    """Each expert's pairs (in any order) in its own group, padded with the sentinel S to a multiple of BM,
    groups in expert order, every block labelled and each group's first block recorded; ids outside [0, E)
    dropped, an expert without pairs takes no rows. In each mode of `align`: one program; one launch of
    several programs, each counting every pair; two launches."""
    from moe_lab.kernels.align import CHUNK, ONE_LAUNCH_MAX_PAIRS, align_by_expert, max_blocks

    E, BM = 7, 16
    pairs = {"one_program": 50, "one_launch": ONE_LAUNCH_MAX_PAIRS - 10,
             "two_launches": ONE_LAUNCH_MAX_PAIRS + 10}[mode]
    ids_S = torch.tensor([3, 0, 3, 6, 3, -1, 0, 2, 7, 3], device=DEVICE).repeat(pairs // 10)
    S = ids_S.numel()
    assert (S <= CHUNK, S <= ONE_LAUNCH_MAX_PAIRS) == {"one_program": (True, True), "one_launch": (False, True),
                                                       "two_launches": (False, False)}[mode]
    sorted_P, block_expert_B, expert_block_E1 = align_by_expert(ids_S, E, BM)
    assert sorted_P.numel() == max_blocks(S, E, BM) * BM
    row, blocks = 0, []
    for e in range(E):
        assert expert_block_E1[e] == row // BM, f"first block of expert {e}"
        pairs = (ids_S == e).nonzero().flatten().tolist()
        n = -(-len(pairs) // BM) * BM
        group = sorted_P[row:row + n].tolist()
        assert sorted(group[:len(pairs)]) == pairs, f"expert {e}"
        assert group[len(pairs):] == [S] * (n - len(pairs)), f"padding of expert {e}"
        blocks += [e] * (n // BM)
        row += n
    assert block_expert_B[:len(blocks)].tolist() == blocks
    assert (block_expert_B[len(blocks):] == -1).all()
    assert expert_block_E1[E] == len(blocks), "the blocks in use"


def test_unsupported_gate_is_refused_by_name():
    class CustomGateExperts(torch.nn.Module):
        has_gate, has_bias, is_transposed, is_concatenated = True, False, False, True

        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.randn(2, 8, 4, device=DEVICE))
            self.down_proj = torch.nn.Parameter(torch.randn(2, 4, 4, device=DEVICE))
            self.act_fn = torch.nn.SiLU()

        def _apply_gate(self, h):
            return h[..., :4] * h[..., 4:]

    with pytest.raises(UnsupportedLayoutError, match="CustomGateExperts"):
        triton_fused_experts(CustomGateExperts(), torch.randn(3, 4, device=DEVICE),
                             torch.zeros(3, 1, dtype=torch.long, device=DEVICE), torch.ones(3, 1, device=DEVICE))


def test_unsupported_dtype_is_refused():
    c = CASES["small"]
    experts = make_experts(c, ExpertsLayout(), torch.float64, DEVICE, 0)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.float64, DEVICE, 0)
    with pytest.raises(TypeError, match="float64"):
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("T,config", [(1, None), (300, None), (300, "split")])
def test_cuda_graph_capture_replays_new_inputs(T, config, seed):
    """A captured call replays on new inputs; with SPLIT its `ready` counters are zeroed again by each replay's
    alignment."""
    from test_backends import Case

    c = Case(E=16, H=128, I=96, K=4, T=T)
    cfg = {**CONFIGS["grouped16"], "SPLIT": 1} if config == "split" else None
    experts = make_experts(c, ExpertsLayout(), torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    with torch.no_grad():
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=cfg)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=cfg)
    x2, ids2, w2 = make_inputs(c, torch.bfloat16, DEVICE, seed + 1)
    x_TH.copy_(x2), ids_TK.copy_(ids2), weights_TK.copy_(w2)
    out_TH.fill_(float("nan"))
    graph.replay()
    err = relative_error(out_TH, reference_experts(experts, x_TH, ids_TK, weights_TK))
    assert err <= TOL[torch.bfloat16]


@pytest.mark.skipif(not HAS_CUDA, reason="streams are CUDA's")
@pytest.mark.parametrize("T,config", [(1, None), (300, None), (300, "split")])
def test_a_call_runs_on_the_callers_current_stream(T, config, seed):
    """Inputs written on a side stream behind a long GPU sleep: a call made on that stream sees them, which
    kernels launched on any other stream would not (they would run before the sleep ends), with SPLIT too."""
    from test_backends import Case

    from moe_lab.kernels.ops import current_stream

    c = Case(E=16, H=128, I=96, K=4, T=T)
    experts = make_experts(c, ExpertsLayout(), torch.bfloat16, DEVICE, seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, DEVICE, seed)
    x2, ids2, w2 = make_inputs(c, torch.bfloat16, DEVICE, seed + 1)
    cfg = {**CONFIGS["grouped16"], "SPLIT": 1} if config == "split" else None
    side = torch.cuda.Stream()
    with torch.no_grad():
        triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=cfg)  # plan and kernels built first
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            assert current_stream(x_TH.device) == current_stream(torch.device("cuda")) == side.cuda_stream
            torch.cuda._sleep(100_000_000)  # cycles: tens of milliseconds
            x_TH.copy_(x2), ids_TK.copy_(ids2), weights_TK.copy_(w2)
            out_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=cfg)
        side.synchronize()
    assert current_stream(x_TH.device) == torch.cuda.current_stream().cuda_stream
    assert current_stream(torch.device("cpu")) == 0
    err = relative_error(out_TH, reference_experts(experts, x2, ids2, w2))
    assert err <= TOL[torch.bfloat16]


@pytest.mark.skipif(not HAS_CUDA, reason="streams are CUDA's")
def test_split_calls_from_two_threads_at_once(seed):
    """SPLIT's `ready` counters are per call: calls queued at once from two threads, each on a stream of its own
    and without a sync, equal the same calls made one at a time."""
    import threading

    from test_backends import Case

    c = Case(E=16, H=128, I=96, K=4, T=300)
    cfg = {**CONFIGS["grouped16"], "SPLIT": 1}
    experts = make_experts(c, ExpertsLayout(), torch.bfloat16, DEVICE, seed)
    calls = [make_inputs(c, torch.bfloat16, DEVICE, seed + i) for i in range(8)]
    with torch.no_grad():
        want = [triton_fused_experts(experts, *call, config=cfg) for call in calls]
        torch.cuda.synchronize()
    got = [None] * len(calls)

    def run(part: int):
        stream = torch.cuda.Stream()
        with torch.no_grad(), torch.cuda.stream(stream):
            for i in range(part, len(calls), 2):
                got[i] = triton_fused_experts(experts, *calls[i], config=cfg)
        stream.synchronize()

    threads = [threading.Thread(target=run, args=(part,)) for part in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (got_TH, want_TH) in enumerate(zip(got, want)):
        assert torch.equal(got_TH, want_TH), f"call {i}"


@pytest.mark.skipif(not HAS_CUDA, reason="the family modules at full size on the GPU")
@pytest.mark.parametrize("model", ["qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b", "gpt-oss-20b"])
@pytest.mark.parametrize("T", [1, 4, 64])
def test_transformers_family_module(model, T, seed):
    from moe_lab import synthetic_routing
    from moe_lab.shapes import build_hf_experts, get_shape

    shape = get_shape(model)
    experts = build_hf_experts(model, device=DEVICE, dtype=torch.bfloat16, seed=seed)
    ids_TK, weights_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=seed, device=DEVICE)
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16)
    check(experts, x_TH, ids_TK, weights_TK, None, TOL[torch.bfloat16], f"{model} T={T}")


FAMILIES = ["qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b", "gpt-oss-20b"]
BUCKETS = [2**i for i in range(15)]  # every token bucket the package's table holds, 1 to 16384


@functools.lru_cache(maxsize=1)  # the tests run model by model, dtype by dtype: one full-size module at a time
def _family_experts(model: str, dtype: torch.dtype):
    from moe_lab.shapes import build_hf_experts

    return build_hf_experts(model, device=DEVICE, dtype=dtype, seed=0)


@pytest.mark.skipif(not HAS_CUDA, reason="the package's tuned configs at full size on the GPU")
@pytest.mark.parametrize("bucket", BUCKETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("model", FAMILIES)
def test_every_tuned_config_matches_reference(model, dtype, bucket, seed):
    """Each bucket's config of the package's table (float16 runs bfloat16's: `configs.SAME_TILES`), no config
    passed, at an unaligned token count inside the bucket, on skewed routing (a hot expert, idle ones)."""
    from moe_lab.devices import device_kind
    from moe_lab.kernels import configs
    from moe_lab.shapes import get_shape

    shape = get_shape(model)
    key = configs.shape_key(shape.experts, shape.hidden, shape.intermediate, shape.top_k)
    kind = device_kind(torch.device(DEVICE))
    if key not in configs.load_table(configs.CONFIG_FILE).get(kind, {}).get("bfloat16", {}):
        pytest.skip(f"the package's table has no {key} entry for {kind}")
    T = bucket + bucket // 3
    ids_TK, weights_TK = synthetic_routing("skewed", T, shape.experts, shape.top_k, seed=seed + T, device=DEVICE)
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(seed + T)).to(DEVICE, dtype)
    check(_family_experts(model, dtype), x_TH, ids_TK, weights_TK, None, TOL[dtype], f"{model} {dtype} T={T}",
          ref_device=DEVICE)  # the dense float64 reference on the GPU: on the CPU it takes minutes from 2048 tokens


@pytest.mark.skipif(not HAS_CUDA, reason="real-size shapes and real atomics: the GPU")
@pytest.mark.parametrize("T", [300, 2000], ids=["one_alignment_program", "two_alignment_launches"])
def test_output_is_the_same_bit_for_bit_every_call(T, seed):
    """The alignment's atomics reorder the pairs inside an expert's group from call to call; the output
    must not change by a single bit (every GEMM row is computed on its own)."""
    from moe_lab import synthetic_routing
    from moe_lab.shapes import build_hf_experts, get_shape

    shape = get_shape("qwen3-30b-a3b")
    experts = build_hf_experts("qwen3-30b-a3b", device=DEVICE, dtype=torch.bfloat16, seed=seed)
    ids_TK, weights_TK = synthetic_routing("skewed", T, shape.experts, shape.top_k, seed=seed, device=DEVICE)
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        first_TH = triton_fused_experts(experts, x_TH, ids_TK, weights_TK)
        for _ in range(5):
            assert torch.equal(triton_fused_experts(experts, x_TH, ids_TK, weights_TK), first_TH)


def _back_to_back_both_ways(model: str, T: int, n: int, key: str, seed: int, on: int = 1, up: dict | None = None):
    """`n` calls of `model`'s tuned config on fresh routing each (uniform and skewed in turn), queued back to back
    without a sync, once with the config's `key` = on and once 0: (experts, calls, {on: outputs, 0: outputs}).
    `up`: fields set in the config's gate/up tile."""
    from moe_lab.kernels.configs import get_config
    from moe_lab.shapes import build_hf_experts, get_shape

    shape = get_shape(model)
    experts = build_hf_experts(model, device=DEVICE, dtype=torch.bfloat16, seed=seed)
    calls = []
    for i in range(n):
        ids_TK, weights_TK = synthetic_routing("skewed" if i % 2 else "uniform", T, shape.experts, shape.top_k,
                                               seed=seed + i, device=DEVICE)
        x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(seed + i)).to(DEVICE,
                                                                                                 torch.bfloat16)
        calls.append((x_TH, ids_TK, weights_TK))
    tuned = get_config("h100", "bfloat16", T, shape.experts, shape.hidden, shape.intermediate, shape.top_k)
    if up:
        tuned = {**tuned, "up": {**tuned["up"], **up}}
    outs = {}
    with torch.no_grad():
        for value in (on, 0):
            outs[value] = [triton_fused_experts(experts, *call, config={**tuned, key: value}) for call in calls]
            torch.cuda.synchronize()
    return experts, calls, outs


@pytest.mark.skipif(not HAS_CUDA, reason="programmatic dependent launch: real launches on the GPU")
@pytest.mark.parametrize("T", [1, 100, 200, 2000, 8192], ids=["decode", "one_alignment_program", "one_alignment_launch",
                                                             "two_alignment_launches", "large"])
def test_dependent_launch_gives_the_same_bits_as_serial_launch(T, seed):
    """With PDL each kernel may start before the one it reads from has finished (moe_lab.kernels.pdl). Calls on
    fresh routing each, queued back to back without a sync (so a read of the previous call's alignment or a
    half-written intermediate would show), must equal the same calls with PDL off, bit for bit."""
    from moe_lab.backends.triton_fused import _PLANS
    from moe_lab.kernels.pdl import pdl_available

    if not pdl_available(torch.device(DEVICE)):
        pytest.skip("this GPU has no programmatic dependent launch (compute capability < 9)")
    experts, _, outs = _back_to_back_both_ways("qwen3-30b-a3b", T, 6, "PDL", seed)
    plans = list(_PLANS[experts].values())
    assert [p.pdl for p in plans] == [True, False]
    if T in (100, 200, 2000):  # qwen3's top 8: 800 pairs (one program), 1600 (one launch of two), 16000 (two)
        assert (len(plans[0].align), plans[0].G) == {100: (1, 1), 200: (1, 2), 2000: (2, 16)}[T]
    for i, (on_TH, off_TH) in enumerate(zip(outs[1], outs[0])):
        assert torch.equal(on_TH, off_TH), f"call {i}"


@pytest.mark.skipif(not HAS_CUDA, reason="programmatic dependent launch: real launches on the GPU")
@pytest.mark.parametrize("model,T", [("olmoe-1b-7b", 512), ("qwen3-30b-a3b", 300), ("qwen1.5-moe-a2.7b", 1000),
                                     ("qwen1.5-moe-a2.7b", 256), ("qwen1.5-moe-a2.7b", 1024), ("olmoe-1b-7b", 16)])
def test_split_changes_no_bit(model, T, seed):
    """`"SPLIT": 1` on the tuned tiles, calls on fresh routing queued back to back without a sync (a launch
    reading before its `ready` counter is full, or a counter left from the call before, would show; the two-stream
    SPLIT before run 28 failed here at qwen1.5 T=256): the same bits as without it, and the reference. At T=16
    gate/up is a single wave, so down's launch can go while the alignment runs."""
    from moe_lab.backends.triton_fused import _PLANS

    experts, calls, outs = _back_to_back_both_ways(model, T, 8, "SPLIT", seed)
    assert [(len(p.parts), p.split) for p in _PLANS[experts].values()] == [(2, 1), (1, 0)]
    for i, (on_TH, off_TH) in enumerate(zip(outs[1], outs[0])):
        assert torch.equal(on_TH, off_TH), f"call {i}"
    assert relative_error(outs[1][0], reference_experts(experts, *calls[0])) <= TOL[torch.bfloat16]


def test_split_plan():
    """SPLIT (`ready`): one gate/up launch over all B blocks told where part two starts, each part's down
    waiting on its part's gate/up programs (part one's then counted for the sum), the sum waiting on part one's
    down programs, three counters after expert_block; any other value than 0 or 1 is refused (no launch here)."""
    from moe_lab.kernels.ops import GateSpec, Plan

    E, H, I, K, T = 4, 128, 64, 2, 40
    make = functools.partial(Plan, T, K, E, H, I, torch.bfloat16, GateSpec(1, 0))
    args = ((2 * I * H, H, 1), (H * I, I, 1), None, (H, 1), True)
    plan = make({**CONFIGS["grouped16"], "SPLIT": 1}, *args)
    B, m1 = plan.B, plan.B // 2
    cols_up, cols_down = plan.up.grid[0] // B, plan.down.grid[0] // B
    (m0a, up_a, up_scalars, down_a, down_a_scalars), (m0b, up_b, _, down_b, down_b_scalars) = plan.parts
    assert (m0a, m0b, up_a, up_b) == (0, m1, plan.up, None) and plan.up.consts["READY"]
    assert up_scalars[-1] == m1 and up_scalars[4] == B
    assert (down_a.grid[0], down_b.grid[0]) == (m1 * cols_down, (B - m1) * cols_down)
    assert (down_a.consts["READY_WAIT"], down_a.consts["READY_SIGNAL"]) == (0, 2)
    assert (down_b.consts["READY_WAIT"], down_b.consts["READY_SIGNAL"]) == (1, -1)
    assert (down_a_scalars[3], down_a_scalars[-1]) == (m1, m1 * cols_up)
    assert (down_b_scalars[3], down_b_scalars[-1]) == (B - m1, (B - m1) * cols_up)
    assert plan.sum.consts["READY_WAIT"] and plan.sum_waits_for == m1 * cols_down and plan.counters == 3
    whole = make({**CONFIGS["grouped16"], "SPLIT": 0}, *args)
    assert not whole.up.consts["READY"] and not whole.sum.consts["READY_WAIT"] and whole.counters == 0
    assert [(m0, up is whole.up, down is whole.down) for m0, up, _, down, _ in whole.parts] == [(0, True, True)]
    with pytest.raises(ValueError, match="SPLIT is 0"):
        make({**CONFIGS["grouped16"], "SPLIT": 2}, *args)


@pytest.mark.skipif(not HAS_CUDA, reason="L2 hints and discards: compiled kernels on the GPU")
@pytest.mark.parametrize("model,T", [("olmoe-1b-7b", 512), ("qwen1.5-moe-a2.7b", 300), ("qwen3-30b-a3b", 1000),
                                     ("gpt-oss-20b", 200)])
def test_temps_l2_changes_no_bit(model, T, seed):
    """`"TEMPS_L2": 1` (moe_lab.kernels.l2_temps) only hints L2 and drops the call's dead lines: calls on fresh
    routing queued back to back without a sync (a discard reaching a live line of the next call, whose buffers
    reuse the same memory, would show) equal the same calls without it bit for bit, and the reference."""
    from moe_lab.backends.triton_fused import _PLANS

    experts, calls, outs = _back_to_back_both_ways(model, T, 4, "TEMPS_L2", seed)
    assert [p.temps_l2 for p in _PLANS[experts].values()] == [True, False]
    for i, (on_TH, off_TH) in enumerate(zip(outs[1], outs[0])):
        assert torch.equal(on_TH, off_TH), f"call {i}"
    want_TH = reference_experts(experts, *calls[0])
    assert relative_error(outs[1][0], want_TH) <= TOL[torch.bfloat16]


@pytest.mark.skipif(not HAS_CUDA, reason="L2 prefetch: compiled kernels on the GPU")
@pytest.mark.parametrize("model,T", [("olmoe-1b-7b", 512), ("qwen1.5-moe-a2.7b", 100), ("qwen3-30b-a3b", 300),
                                     ("qwen3-30b-a3b", 1000)])
def test_weight_prefetch_changes_no_bit(model, T, seed):
    """`"W_PREFETCH": 8` only pulls weight lines into L2 before gate/up's wait on the alignment: calls on fresh
    routing queued back to back without a sync equal the same calls without it bit for bit, and the reference.
    Gate/up's weight through pointer loads (W_PREFETCH does not apply to TMA ones), also at qwen3 T=1000, whose
    tuned tiles load it through TMA."""
    from moe_lab.backends.triton_fused import _PLANS
    from moe_lab.kernels.ops import ws_available

    if not ws_available(torch.device(DEVICE)):
        pytest.skip("W_PREFETCH runs on an sm90 GPU only")
    experts, calls, outs = _back_to_back_both_ways(model, T, 4, "W_PREFETCH", seed, on=8, up={"TMA": 0})
    assert [p.w_prefetch for p in _PLANS[experts].values()] == [8, 0]
    for i, (on_TH, off_TH) in enumerate(zip(outs[8], outs[0])):
        assert torch.equal(on_TH, off_TH), f"call {i}"
    assert relative_error(outs[8][0], reference_experts(experts, *calls[0])) <= TOL[torch.bfloat16]


@pytest.mark.parametrize("lines,pdl,sms,tma,up_t,want", [
    (8, True, 132, False, False, "ok"), (64, True, 132, False, False, "ok"),
    (8, False, 132, False, False, "programmatic dependent"), (8, True, 0, False, False, "sm90"),
    (8, True, 132, True, False, "TMA"), (8, True, 132, False, True, "not contiguous"),
    (3, True, 132, False, False, "power of two")])
def test_weight_prefetch_plan(lines, pdl, sms, tma, up_t, want, caplog, monkeypatch):
    """W_PREFETCH: gate/up (under SPLIT one launch, in the first part) prefetches from one program per SM;
    at most a weight row's lines (H = 128 bf16: 2); off with a log line without PDL, sm90, with TMA weights or
    with weight rows not contiguous along H (gpt-oss's (E, H, 2I) storage); a count that is not a power of two
    is refused (no launch here)."""
    from moe_lab.backends import common
    from moe_lab.kernels.ops import GateSpec, Plan

    monkeypatch.setattr(common, "_logged", set())
    E, H, I, K, T = 4, 128, 64, 2, 40
    config = {**CONFIGS["grouped16"], "SPLIT": 1, "W_PREFETCH": lines}
    if tma:
        config["up"] = {**config["up"], "TMA": 1}
    up_strides = (2 * I * H, 1, 2 * I) if up_t else (2 * I * H, H, 1)
    make = functools.partial(Plan, T, K, E, H, I, torch.bfloat16, GateSpec(1, 0), config, up_strides,
                             (H * I, I, 1), None, (H, 1), True, pdl=pdl, ws_sms=sms)
    if want == "power of two":
        with pytest.raises(ValueError, match=want):
            make()
        return
    with caplog.at_level("WARNING", logger="moe_lab"):
        plan = make()
    assert plan.up.consts["W_PREFETCH_LINES"] == plan.w_prefetch == (2 if want == "ok" else 0)
    (_, up, scalars, _, _), (_, no_up, _, _, _) = plan.parts
    assert (up, no_up, scalars[-2]) == (plan.up, None, sms)  # scalars[-1]: where SPLIT's part two starts
    assert (want in caplog.text) == (want != "ok")


@pytest.mark.parametrize("H,l2_hints,reduce,why", [
    (128, True, True, None), (128, False, True, "takes no L2 hints"), (128, True, False, "no top-k sum"),
    (72, True, True, "not whole 128-byte lines")])
def test_temps_l2_applies_only_where_its_marks_end(H, l2_hints, reduce, why, caplog, monkeypatch):
    """TEMPS_L2 needs the hints (a compiled sm80+ kernel), the top-k sum to end its marks, and y's rows in whole
    128-byte lines; elsewhere the plan runs without it and a log line says why (no launch here)."""
    from moe_lab.backends import common
    from moe_lab.kernels.ops import GateSpec, Plan

    monkeypatch.setattr(common, "_logged", set())
    E, I, K, T = 4, 64, 2, 9
    config = {**CONFIGS["grouped16"], "TEMPS_L2": 1}
    with caplog.at_level("WARNING", logger="moe_lab"):
        plan = Plan(T, K, E, H, I, torch.bfloat16, GateSpec(1, 0), config, (2 * I * H, H, 1), (H * I, I, 1), None,
                    (H, 1), reduce, l2_hints=l2_hints)
    assert plan.temps_l2 == (why is None)
    assert plan.up.consts["OUT_EVICT"] == plan.down.consts["OUT_EVICT"] == ("evict_last" if why is None else "")
    if reduce:
        assert plan.sum.consts["DISCARD"] == (why is None)
    if why:
        assert why in caplog.text
    else:
        assert "TEMPS_L2" not in caplog.text
