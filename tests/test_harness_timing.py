"""The timer against torch.utils.benchmark, peak memory that sees torch's allocations, the roofline arithmetic.

No test here asserts a speed: only that two timers agree on a call of known cost.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.utils.benchmark as tub

from moe_lab.harness import Cell, PeakMemory, benchmark, estimate_cell_bytes, experts_cost, floor_ms, time_calls
from moe_lab.harness.memory import cpu_skip_reason
from moe_lab.harness.roofline import ExpertsCost, Roofline, measure_roofline
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import get_shape

KNOWN_COST_S = 0.004  # a call that sleeps 4 ms
AGREEMENT = 0.15  # the two medians within 15% of each other


def test_timer_agrees_with_torch_utils_benchmark():
    call = lambda: time.sleep(KNOWN_COST_S)  # noqa: E731
    ours = benchmark(call, warmup=1, iters=15, device="cpu")
    theirs = tub.Timer("call()", globals={"call": call}).blocked_autorange(min_run_time=0.1)  # median of blocks
    assert ours.timer == "wall_clock" and len(ours.samples_ms) == 15
    assert ours.median_ms >= KNOWN_COST_S * 1e3
    assert abs(ours.median_ms - theirs.median * 1e3) <= AGREEMENT * theirs.median * 1e3
    assert ours.min_ms <= ours.median_ms <= ours.p90_ms


def test_warmup_is_kept_out_of_the_samples():
    calls = []

    def call():
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.05)  # a slow first call, like a compilation

    timing = benchmark(call, warmup=1, iters=5, device="cpu")
    assert len(calls) == 6 and timing.warmup_s >= 0.05 and max(timing.samples_ms) < 50


def test_time_calls_needs_a_call():
    with pytest.raises(ValueError):
        time_calls(lambda: None, 0, "cpu")


def test_cpu_peak_memory_sees_torch_allocations():
    """200 MB allocated and freed inside the block shows in the peak (tracemalloc would see nothing)."""
    nbytes = 200 * 2**20
    with PeakMemory("cpu") as mem:
        t = torch.ones(nbytes // 4)
        del t
    assert mem.method in ("rss_vmhwm", "rss_sampled")
    assert mem.extra_mb >= 0.75 * nbytes / 2**20
    assert mem.peak_mb >= mem.baseline_mb + mem.extra_mb - 1


def test_roofline_floor_of_the_reference_layer():
    """Qwen1.5-MoE, one token, bf16, 3.01 TB/s: the floor is the 4 experts' weights over the bandwidth (0.023 ms)."""
    shape = get_shape("qwen1.5-moe-a2.7b")
    ids, _ = synthetic_routing("uniform", 1, shape.experts, shape.top_k)
    cost = experts_cost(shape, ids, elem_bytes=2)
    assert cost.experts_hit == 4
    assert cost.flops == 2 * 4 * (2048 * 2816 + 1408 * 2048)
    roof = Roofline(bandwidth_gbps=3010, peak_tflops=733, dtype="bfloat16", method="given")
    assert floor_ms(cost, roof) == pytest.approx(0.023, abs=0.0005)
    train = experts_cost(shape, ids, elem_bytes=2, train=True)
    assert train.flops == 3 * cost.flops and train.bytes > 2.9 * cost.bytes


def test_floor_is_the_larger_of_memory_and_compute():
    roof = Roofline(bandwidth_gbps=1000, peak_tflops=100, dtype="bfloat16", method="given")
    assert floor_ms(ExpertsCost(flops=1e9, bytes=1e9, experts_hit=1), roof) == pytest.approx(1.0)  # memory-bound
    assert floor_ms(ExpertsCost(flops=1e12, bytes=1e6, experts_hit=1), roof) == pytest.approx(10.0)  # compute-bound


def test_cpu_roofline_is_measured_once():
    roof = measure_roofline("cpu", torch.float32)
    assert roof.bandwidth_gbps > 0 and roof.peak_tflops > 0 and roof.method.startswith("measured")
    assert measure_roofline("cpu", torch.float32) is roof


def test_a_given_timer_times_the_copy_and_the_matmul_and_is_not_cached():
    timed = []

    def two_ms(fn):
        fn()
        timed.append(fn)
        return 2.0

    roof = measure_roofline("cpu", torch.float32, timer=two_ms)
    assert len(timed) == 2 and "timed by" in roof.method
    assert roof.bandwidth_gbps == pytest.approx(2 * 2**26 / 2e-3 / 1e9)  # 64 MiB read + written in 2 ms
    assert roof.peak_tflops == pytest.approx(2 * 1024**3 / 2e-3 / 1e12)  # a 1024^3 float32 matmul in 2 ms
    assert measure_roofline("cpu", torch.float32) is not roof


def test_memory_estimate_of_batched_mm_copies():
    """batched_mm materialises T*K weight copies: the Qwen1.5 shape at 2048 tokens in bf16 needs about 140 GB."""
    big = Cell("layer", "qwen1.5-moe-a2.7b", "batched_mm", dtype="bfloat16", batch_size=1, seq_len=2048)
    assert 130e9 < estimate_cell_bytes(big) < 160e9
    small = Cell("layer", "qwen1.5-moe-a2.7b", "grouped_mm", dtype="bfloat16", batch_size=1, seq_len=2048)
    assert estimate_cell_bytes(small) < 5e9
    reason = cpu_skip_reason(big, budget_bytes=64 * 2**30)
    assert reason.startswith("skipped: needs ") and reason.endswith(", 64.0 GiB available")
    assert cpu_skip_reason(Cell("layer", "tiny", "batched_mm"), budget_bytes=64 * 2**30) is None
    model = Cell("model", "qwen1.5-moe-a2.7b", "grouped_mm", dtype="bfloat16", num_layers=24)
    assert estimate_cell_bytes(model) > 2 * 14e9  # 14.3B parameters in bf16
