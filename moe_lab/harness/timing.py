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


def warm_up(fn: Callable[[], object], warmup: int, device: str | torch.device) -> float:
    """Call `fn` `warmup` times (compiling, autotuning, recording CUDA graphs); return the wall seconds."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    return time.perf_counter() - start


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
