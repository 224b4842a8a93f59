"""Every `triton_fused` kernel built by Triton's real compiler for an H100 (sm90), on a CPU-only machine.

Triton's interpreter (tests/test_triton_fused.py without CUDA) runs the kernels as Python and never
compiles them, so code that only the compiler refuses passes there: both returns of an early return
inside a constexpr `if` built and their shapes refused; the gate/up kernel's path not taken built all
the same, on weight tiles that do not fit it. Here each call goes through the NVIDIA backend down to
ptxas for sm90, with a stand-in driver (no GPU) and every launch turned into a warm-up (compile, no
launch): outputs are uninitialised memory and not checked; correctness is tests/test_triton_fused.py's.
Skipped on CUDA machines (the GPU tests compile and run everything there), under TRITON_INTERPRET=1,
and without triton's NVIDIA backend and ptxas. Legend: T tokens, H hidden, I expert intermediate, E experts,
K top-k.
"""

from __future__ import annotations

import os
import weakref
from collections import defaultdict

import pytest
import torch
from test_backends import LAYOUTS, Case, make_experts, make_inputs
from test_triton_fused import CONFIGS, TILE, half_tail_config, row_block_config, tma_config

import moe_lab.backends.triton_fused as triton_fused
from moe_lab.kernels.align import ONE_LAUNCH_MAX_PAIRS
from moe_lab.kernels.configs import decode_evicts_first


def _why_not_here() -> str | None:
    """The reason this module cannot run on this machine, or None."""
    if torch.cuda.is_available():
        return "CUDA here: tests/test_triton_fused.py compiles and runs every kernel on the GPU"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: the kernels are interpreted, not compiled"
    try:
        from triton import knobs
        from triton.backends import backends
    except ImportError as err:
        return f"needs triton (pip install 'moe-lab[triton]'): {err}"
    if "nvidia" not in backends:
        return "needs triton's NVIDIA backend"
    try:
        knobs.nvidia.ptxas  # finds the tool: RuntimeError where there is none
    except RuntimeError as err:
        return f"needs ptxas (triton's NVIDIA backend ships one): {err}"
    from moe_lab.kernels import INTERPRETED

    if INTERPRETED:
        return "moe_lab.kernels was imported under TRITON_INTERPRET=1: the kernels are interpreted, not compiled"
    return None


SKIP_REASON = _why_not_here()
if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)

SM90 = 90
SHAPES = {  # H, I multiples of TMA's 16-wide K tiles; H != I, so that a swapped coordinate shows in a shape
    "k_tail": Case(E=6, H=80, I=48, K=2, T=21, routing="skewed"),  # a K tail on the 32- and 64-wide K tiles
    "even_k": Case(E=6, H=96, I=64, K=2, T=21, routing="skewed"),  # none (EVEN_K) on any tile used here
}
GEMMS = ["_gate_up_grouped_kernel", "_down_grouped_kernel"]
KERNELS = {  # config -> the kernels one call compiles, in launch order (K=2: the top-k sum after the GEMMs)
    "tma": ["_align_kernel", *GEMMS, "_topk_sum_kernel"],
    "grouped16": ["_align_kernel", *GEMMS, "_topk_sum_kernel"],
    "grouped16_one_dot": ["_align_kernel", *GEMMS, "_topk_sum_kernel"],
    "decode": ["_gate_up_decode_kernel", "_down_decode_kernel"],
    "decode_rolled": ["_gate_up_decode_kernel", "_down_decode_kernel"],
    "a_tma": ["_align_kernel", "_gather_rows_kernel", *GEMMS, "_topk_sum_kernel"],
    "half_tail": ["_align_kernel", "_gather_rows_kernel", *GEMMS, "_topk_sum_kernel"],
}


class _SM90Driver:
    """What the JIT and the backend ask of the active driver when nothing is launched: device, stream, target."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@pytest.fixture
def compiled(monkeypatch) -> list:
    """Every kernel launch compiles for sm90 and returns before launching; the CompiledKernels, in launch order.

    The fake driver, the JIT's `run`, the backend's device check, its plan cache and the kernels' per-device
    caches are all swapped through monkeypatch: a plan or a cached kernel built here (sm90, never loadable on
    this machine) never reaches another test. The on-disk cache (TRITON_CACHE_DIR) stays: its entries are the
    compiler's output for the exact source, so a warm cache is still this source compiled for sm90, only faster.
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from moe_lab.kernels import align, fused_moe, pdl, topk_sum

    kernels = []
    jit_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = jit_run(self, *args, grid=grid, warmup=True, **kwargs)
        kernels.append(kernel)
        return kernel

    # the attribute, not set_active(): teardown puts back None (no driver chosen yet), which reset_active() cannot
    monkeypatch.setattr(driver, "_active", _SM90Driver(GPUTarget("cuda", SM90, 32)))
    monkeypatch.setattr(JITFunction, "run", compile_only)
    monkeypatch.setattr(triton_fused, "_runnable", lambda device: None)
    monkeypatch.setattr(pdl, "pdl_available", lambda device: True)  # as on an H100: sm90 has PDL
    monkeypatch.setattr(triton_fused, "_PLANS", weakref.WeakKeyDictionary())
    for fn in [*vars(align).values(), *vars(fused_moe).values(), *vars(topk_sum).values()]:
        if isinstance(fn, JITFunction):
            monkeypatch.setattr(fn, "device_caches", defaultdict(fn.create_binder))
    return kernels


def compile_call(experts, x_TH, ids_TK, weights_TK, config, compiled, names: list[str]) -> None:
    """One call with `config`: an output of x's shape and dtype, and `names` compiled for sm90 by ptxas."""
    with torch.no_grad():
        out_TH = triton_fused.triton_fused_experts(experts, x_TH, ids_TK, weights_TK, config=config)
    assert out_TH.shape == x_TH.shape and out_TH.dtype == x_TH.dtype
    assert [k.name for k in compiled] == names
    pdl_on = config.get("PDL", 1) == 1
    evict_first = decode_evicts_first(config, x_TH.shape[0])
    for kernel in compiled:
        assert kernel.metadata.target.backend == "cuda" and kernel.metadata.target.arch == SM90, kernel.name
        assert kernel.asm.get("cubin"), f"{kernel.name}: no cubin"
        # programmatic dependent launch: launched with the attribute, and waiting on the kernel before it
        assert kernel.metadata.launch_pdl == pdl_on, kernel.name
        assert ("griddepcontrol.wait" in kernel.asm["ptx"]) == pdl_on, kernel.name
        # the decode path streams its weights with an evict-first L2 policy at T = 1 or where the config says so
        assert ("L2::evict_first" in kernel.asm["ptx"]) == ("decode" in kernel.name and evict_first), kernel.name
    with_tma = [k.name for k in compiled if k.metadata.tensordesc_meta]  # operands loaded through TMA descriptors
    assert with_tma == (GEMMS if config["up"].get("TMA") or config["up"].get("A_TMA") else [])


def matrix():
    """Every layout with TMA, the decode path and two dots (one dot too where there is a gate), in bf16 and fp32
    with K tails; again without K tails in bf16 (TMA has none either way: its K tiles divide K)."""
    pairs = [(layout, config) for layout in LAYOUTS for config in KERNELS
             if config != "grouped16_one_dot" or LAYOUTS[layout].has_gate]
    runs = [(torch.bfloat16, "k_tail"), (torch.float32, "k_tail"), (torch.bfloat16, "even_k")]
    return [pytest.param(layout, config, dtype, shape,
                         id=f"{layout}-{config}-{str(dtype).removeprefix('torch.')}-{shape}")
            for dtype, shape in runs for layout, config in pairs
            if config not in ("tma", "a_tma", "half_tail") or shape == "k_tail"]


@pytest.mark.parametrize("layout,config,dtype,shape", matrix())
def test_kernels_compile_for_sm90(layout, config, dtype, shape, compiled, seed):
    experts = make_experts(SHAPES[shape], LAYOUTS[layout], dtype, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(SHAPES[shape], dtype, "cpu", seed)
    cfg = {"tma": lambda: tma_config(LAYOUTS[layout]), "a_tma": lambda: row_block_config(LAYOUTS[layout], True),
           "half_tail": lambda: half_tail_config(LAYOUTS[layout], True)}.get(config, lambda: CONFIGS[config])()
    names = KERNELS[config]
    if LAYOUTS[layout].has_post_expert_norm:  # per-pair outputs, normed and summed by the caller: no top-k sum
        names = [n for n in names if n != "_topk_sum_kernel"]
    compile_call(experts, x_TH, ids_TK, weights_TK, cfg, compiled, names)


@pytest.mark.parametrize("pdl_on", [1, 0], ids=["pdl", "no_pdl"])
def test_multi_program_alignment_compiles_for_sm90(pdl_on, compiled, seed):
    """More pairs than one alignment launch takes (align.ONE_LAUNCH_MAX_PAIRS): its two launches; with programmatic
    dependent launch (as every call on sm90) and with it turned off by the config."""
    c = Case(E=5, H=16, I=16, K=2, T=ONE_LAUNCH_MAX_PAIRS // 2 + 50, routing="skewed")
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, "cpu", seed)
    cfg = {"path": "grouped", "BLOCK_M": 64, "up": dict(BLOCK_N=16, BLOCK_K=16, GROUP_M=8, **TILE),
           "down": dict(BLOCK_N=16, BLOCK_K=16, GROUP_M=8, **TILE), "PDL": pdl_on}
    compile_call(experts, x_TH, ids_TK, weights_TK, cfg, compiled,
                 ["_align_count_kernel", "_align_scatter_kernel", *GEMMS, "_topk_sum_kernel"])


@pytest.mark.parametrize("layout, tile", [("gated_silu", "cooperative"), ("gated_gelu", "cooperative"),
                                          ("transposed", "cooperative"), ("plain_relu", "cooperative"),
                                          ("gated_silu", "half_tail"), ("transposed", "half_tail"),
                                          ("gated_silu", "half_tail_pingpong"), ("plain_relu", "half_tail_pingpong"),
                                          ("gated_silu", "expert_groups"), ("gated_silu", "one_mma"),
                                          ("gated_silu", "one_mma_half_tail"), ("gated_silu", "x_l2_last")])
def test_warp_specialized_gemms_compile_for_sm90(layout, tile, compiled, monkeypatch, seed):
    """A config's "ws" entry (`moe_lab.kernels.ws_grouped`): the two persistent Gluon GEMMs, warp-specialized
    (the producer warps' registers lowered, the consumers' raised), weights by TMA into wgmma, gate/up's token
    rows gathered by cp.async, TMA stores, launched without PDL; the top-k sum through the pairs' rows. With
    HALF_TAIL the cooperative consumers' half-height tiles split the columns between their two warp groups.
    With ONE_MMA gate/up's whole-height tiles run one wgmma of 2 x BLOCK_N columns (its half-height ones two
    of BLOCK_N / 2, each warp group half of each weight tile's columns). With X_L2_LAST gate/up marks the token
    rows evict-last in L2 first and normal again after its loads; down reads no token rows and marks nothing."""
    from test_ws_grouped import PINGPONG, WS, expert_groups, one_mma

    ws = {"cooperative": WS, "half_tail": {**WS, "HALF_TAIL": 1},
          "half_tail_pingpong": {**PINGPONG, "HALF_TAIL": 1}, "expert_groups": expert_groups(WS),
          "one_mma": one_mma(WS), "one_mma_half_tail": one_mma({**WS, "HALF_TAIL": 1}),
          "x_l2_last": {**WS, "up": {**WS["up"], "X_L2_LAST": 1}}}[tile]

    from moe_lab.kernels import ops, ws_grouped

    monkeypatch.setattr(ops, "ws_available", lambda device: 132)  # as on an H100
    kernel = ws_grouped._ws_grouped_kernel
    monkeypatch.setattr(kernel, "device_caches", defaultdict(kernel.create_binder))
    c = Case(E=6, H=256, I=128, K=2, T=300, routing="skewed")
    experts = make_experts(c, LAYOUTS[layout], torch.bfloat16, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, "cpu", seed)
    with torch.no_grad():
        out_TH = triton_fused.triton_fused_experts(experts, x_TH, ids_TK, weights_TK,
                                                   config={**CONFIGS["grouped64"], "ws": ws})
    assert out_TH.shape == x_TH.shape
    assert [k.name for k in compiled] == ["_align_kernel", "_ws_grouped_kernel", "_ws_grouped_kernel",
                                          "_topk_sum_kernel"]
    for k, gathers in zip(compiled[1:3], (True, False)):
        ptx = k.asm["ptx"]
        assert "setmaxnreg.dec" in ptx and "setmaxnreg.inc" in ptx, "not warp-specialized"
        assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor" in ptx, "no TMA or wgmma"
        assert ("cp.async.cg.shared.global" in ptx) == gathers, "gate/up gathers its rows, down loads them by TMA"
        marks = gathers and bool(ws["up"].get("X_L2_LAST"))
        assert ("prefetch.global.L2::evict_last" in ptx) == marks
        assert ("applypriority.global.L2::evict_normal" in ptx) == marks
        assert not k.metadata.launch_pdl
        gemm = ws["down" if k is compiled[2] else "up"]
        n = gemm["BLOCK_N"]

        def wgmma_n(rows: int) -> int:  # warps side by side along the columns: 16 rows per warp along the rows
            wn = max(1, 16 * gemm["num_warps"] // rows)
            return 2 * n if gemm.get("ONE_MMA") and wn == 1 else n // wn

        heights = [ws["BLOCK_M"]] + ([ws["BLOCK_M"] // 2] if ws.get("HALF_TAIL") else [])
        assert {s for s in (f"m64n{w}k16" for w in (2 * n, n, n // 2)) if s in ptx} == \
            {f"m64n{wgmma_n(rows)}k16" for rows in heights}, \
            "whole tiles n = BLOCK_N (2 x BLOCK_N with ONE_MMA); half-height: each warp group half the columns"


@pytest.mark.parametrize("T,evict_first", [(1, None), (1, 0), (21, 1)], ids=["one_token", "one_token_off", "on"])
def test_decode_weights_evict_first_as_the_config_says(T, evict_first, compiled, seed):
    """The decode kernels' weights under an evict-first L2 policy: by default at T = 1, else as `"EVICT_FIRST"`
    says (compile_call checks the PTX)."""
    c = Case(E=6, H=80, I=48, K=2, T=T, routing="skewed")
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, "cpu", seed)
    extra = {} if evict_first is None else {"EVICT_FIRST": evict_first}
    compile_call(experts, x_TH, ids_TK, weights_TK, {**CONFIGS["decode"], **extra}, compiled, KERNELS["decode"])


@pytest.mark.parametrize("what", ["prefetch", "evict_last", "evict_normal"])
def test_l2_residency_probe_marks_every_line_with_its_instruction(what, compiled):
    """benchmarks/l2_residency.py: its mark kernel emits the PTX of each mode (one per 128-byte line) and its
    read kernel loads with the L2 evict-last policy only where asked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "l2_residency.py"
    spec = importlib.util.spec_from_file_location("l2_residency", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    buf_W, out = torch.ones(4096, dtype=torch.int32), torch.empty(4, dtype=torch.int32)
    probe.mark(buf_W, what)
    probe.read(buf_W, out, evict_last=True)
    probe.read(buf_W, out)
    mark_ptx, last_ptx, plain_ptx = (k.asm["ptx"] for k in compiled)
    assert probe.ASM[what].split(" [")[0] in mark_ptx
    assert "L2::evict_last" in last_ptx and "L2::cache_hint" in last_ptx
    assert "L2::evict_last" not in plain_ptx


@pytest.mark.parametrize("temps", [1, 0], ids=["temps_l2", "without"])
def test_temps_l2_marks_the_gemm_outputs_and_the_sum_discards_them(temps, compiled, monkeypatch, seed):
    """`"TEMPS_L2": 1` (`moe_lab.kernels.l2_temps`): both GEMMs store evict-last, the top-k sum discards L2 lines
    (y's and the intermediate's) and nothing else does; without the key no kernel carries either."""
    from moe_lab.kernels import l2_temps

    monkeypatch.setattr(l2_temps, "l2_hints_available", lambda device: True)  # as on an H100
    c = Case(E=6, H=128, I=96, K=2, T=21, routing="skewed")
    experts = make_experts(c, LAYOUTS["gated_silu"], torch.bfloat16, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.bfloat16, "cpu", seed)
    compile_call(experts, x_TH, ids_TK, weights_TK, {**CONFIGS["grouped16"], "TEMPS_L2": temps}, compiled,
                 KERNELS["grouped16"])
    for k in compiled:
        ptx = k.asm["ptx"]
        assert ("st.global.L1::evict_last.L2::cache_hint" in ptx) == bool(temps and k.name in GEMMS), k.name
        assert ("discard.global.L2" in ptx) == bool(temps and k.name == "_topk_sum_kernel"), k.name
