"""benchmarks/triton_gpu.py's alternating timer: both functions timed in every round, the order flipped each
round (CPU: perf_counter timings, no GPU needed)."""

from __future__ import annotations

import triton_gpu


def test_alternating_rounds_flip_the_order_and_pool_every_sample(monkeypatch):
    monkeypatch.setattr(triton_gpu, "DEV", "cpu")
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ms = triton_gpu.alternating_median_ms(fns, rounds=3, reps=2, warmup=1)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    per_round = 3  # warmup + reps calls of one function in a row
    blocks = [calls[i] for i in range(0, len(calls), per_round)]
    assert calls == [c for c in blocks for _ in range(per_round)]
    assert blocks == ["a", "b", "b", "a", "a", "b"]
