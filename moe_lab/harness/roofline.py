"""Roofline: what the experts computation must move and compute, and the fastest it could then run.

Counted per experts call (T tokens, K top-k, S = T*K pairs, H hidden, I intermediate, N = 2I gated):
- flops: 2*S*(H*N + I*H), the two projections of every routed pair (gating, weighting and routing
  not counted); training adds the two backward GEMMs: 3x.
- bytes: the weights of the experts hit (each read once), the input read and the output written;
  training reads the hit weights again, writes their gradients and moves the output and input
  gradients: 3x the hit weights + 4 activations.
floor_ms = max(bytes / bandwidth, flops / matmul peak), with bandwidth and peak measured once per
process, device and dtype: on a GPU a 1 GiB device-to-device copy and an 8192^3 matmul; on a CPU a
64 MiB copy and a 1024^3 (float32) or 512^3 (16-bit) matmul with the threads torch uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moe_lab.harness.timing import synchronize


@dataclass(frozen=True)
class Roofline:
    bandwidth_gbps: float  # GB/s (1e9 bytes)
    peak_tflops: float  # TFLOP/s (1e12) of a dense matmul in `dtype`
    dtype: str
    method: str


_CACHE: dict[tuple[str, str], Roofline] = {}


def _median_ms(fn, device: torch.device, reps: int) -> float:
    fn()
    synchronize(device)
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples))


def _copy_ms(time_ms, nbytes: int, device: torch.device) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return time_ms(lambda: dst.copy_(src))


def _matmul_ms(time_ms, n: int, dtype: torch.dtype, device: torch.device) -> float:
    a_NN, b_NN = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return time_ms(lambda: a_NN @ b_NN)


def measure_roofline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                     timer: Callable[[Callable[[], object]], float] | None = None) -> Roofline:
    """Copy bandwidth and matmul peak of `device` in `dtype`, measured once per process and cached.
    `timer(fn) -> ms` times each of the two instead of a median of synchronized calls (the GPU benchmarks
    pass `moe_lab.tune.median_ms`, L2 flushed before each call, as they time everything); not cached."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), str(dtype))
    if timer is None and key in _CACHE:
        return _CACHE[key]
    gpu = device.type == "cuda"
    time_ms = timer or (lambda fn: _median_ms(fn, device, reps=20 if gpu else 5))
    copy_bytes = 2**30 if gpu else 2**26
    copy_ms = _copy_ms(time_ms, copy_bytes, device)
    n = 8192 if gpu else (1024 if dtype == torch.float32 else 512)
    mm_ms = _matmul_ms(time_ms, n, dtype, device)
    if gpu:
        torch.cuda.empty_cache()
    threads = "" if gpu else f", {torch.get_num_threads()} threads"
    roof = Roofline(
        bandwidth_gbps=2 * copy_bytes / (copy_ms * 1e-3) / 1e9,
        peak_tflops=2 * n**3 / (mm_ms * 1e-3) / 1e12,
        dtype=str(dtype).removeprefix("torch."),
        method=f"measured: {copy_bytes // 2**20} MiB copy, {n}^3 {str(dtype).removeprefix('torch.')} matmul{threads}"
               + (f", timed by {getattr(timer, '__qualname__', 'a given timer')}" if timer else ""),
    )
    if timer is None:
        _CACHE[key] = roof
    return roof


@dataclass(frozen=True)
class ExpertsCost:
    flops: float
    bytes: float
    experts_hit: float  # mean over the experts layers called

    def __add__(self, other: ExpertsCost) -> ExpertsCost:
        return ExpertsCost(self.flops + other.flops, self.bytes + other.bytes, self.experts_hit + other.experts_hit)


def experts_cost(shape, topk_ids_TK: torch.Tensor, elem_bytes: int, *, train: bool = False) -> ExpertsCost:
    """flops and bytes of one experts call of `shape` on this routing, counting only the experts hit."""
    T, K = topk_ids_TK.shape
    H, I = shape.hidden, shape.intermediate
    N = 2 * I if shape.layout.has_gate else I
    S = T * K
    hit = int(torch.unique(topk_ids_TK).numel()) if topk_ids_TK.numel() else 0
    w_hit = hit * (H * N + I * H + ((N + H) if shape.layout.has_bias else 0)) * elem_bytes
    act = T * H * elem_bytes
    flops = 2.0 * S * (H * N + I * H)
    if train:
        return ExpertsCost(3 * flops, 3 * w_hit + 4 * act, hit)
    return ExpertsCost(flops, w_hit + 2 * act, hit)


def floor_ms(cost: ExpertsCost, roof: Roofline) -> float:
    """max(bytes / bandwidth, flops / peak), in milliseconds."""
    return max(cost.bytes / (roof.bandwidth_gbps * 1e9), cost.flops / (roof.peak_tflops * 1e12)) * 1e3
