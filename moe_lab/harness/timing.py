"""Timing a closure: warm-up calls (which include compilation), then N timed single calls.

On CUDA every timed call is bracketed by CUDA events on the current stream, synchronised once at the
end; on CPU a wall clock (`time.perf_counter`) brackets each call. The closure holds everything it
needs, built outside, so only the call itself is timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def synchronize(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """The per-call samples of one measurement, in milliseconds, and the wall time of the warm-up."""

    samples_ms: tuple[float, ...]
    warmup_s: float
    timer: str

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def min_ms(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def std_ms(self) -> float:
        return float(np.std(self.samples_ms)) if len(self.samples_ms) > 1 else math.nan


SETTLE_S = 0.05  # GPU kept busy after the warm-up, so that the timed calls do not start at idle clocks


def warm_up(fn: Callable[[], object], warmup: int, device: str | torch.device) -> float:
    """Call `fn` `warmup` times (compiling, autotuning, recording CUDA graphs); return the wall seconds.

    On CUDA the GPU is then kept busy for SETTLE_S with matmuls of its own (`fn` is not called again: some
    workloads size caches by the number of calls). A compile leaves the GPU idle for seconds, and its clocks
    drop: in the H100 layer sweep of 2026-11-22, the one triton_fused cell timed right after compiling a new
    tile config measured 0.83 ms median and 2.25 ms p90 where the same kernels, timed next as `auto`,
    took 0.44 ms (data/results/h100/layer-qwen3-30b-a3b.csv at commit be38c7a, T=256).
    """
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    if torch.device(device).type == "cuda":
        settle(device, SETTLE_S)
    return seconds


def settle(device: str | torch.device, seconds: float) -> None:
    """Keep the GPU busy with bf16 matmuls for about `seconds` of wall time."""
    a = torch.randn(2048, 2048, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            torch.mm(a, a)
        synchronize(device)
    del a


def time_calls(fn: Callable[[], object], iters: int, device: str | torch.device) -> Timing:
    """`iters` timed single calls of `fn` (already warmed up): CUDA events on a GPU, a wall clock on a CPU."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            torch.cuda.synchronize()
            for start, end in zip(starts, ends):
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            samples = tuple(s.elapsed_time(e) for s, e in zip(starts, ends))
        return Timing(samples, 0.0, "cuda_events")
    samples = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(tuple(samples), 0.0, "wall_clock")


def benchmark(fn: Callable[[], object], *, warmup: int, iters: int, device: str | torch.device) -> Timing:
    """Warm up, then time: the warm-up's wall time (compilation included) is kept apart from the samples."""
    warmup_s = warm_up(fn, warmup, device)
    timing = time_calls(fn, iters, device)
    return Timing(timing.samples_ms, warmup_s, timing.timer)
