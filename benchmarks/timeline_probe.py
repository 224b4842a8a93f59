"""Where `triton_fused`'s call leaves the GPU idle: every kernel's start and end inside a call.

    PYTHONPATH=.:benchmarks python benchmarks/timeline_probe.py --models olmoe-1b-7b --tokens 512 --out $OUT

Per (model, T), bf16, uniform routing, the config table in force: the call captured in a CUDA graph, --reps
replays profiled (torch.profiler, CUPTI's kernel records; L2 flushed by a 256 MiB write before each). With
`--eager` the call itself is profiled as the bench times it, launched on its streams with no graph: behind a
sleeping kernel (`--sleep-ms`), so that the host has queued every call before the GPU reaches it and no host
time shows. Per call, from the first kernel's start: each kernel's start and end, and the idle time, the part
of the span where no kernel of the call runs (launch gaps, stream waits); `lead_us` is the time from the
flush's end to the call's first kernel (the bench's start event fires at the flush's end). A kernel's span
includes any wait inside it (a dependent launch starts early and waits for the kernel before). Writes under
--out `timeline.csv` (one row per kernel per call) and `timeline_summary.csv` (per point: lead, span, busy
and idle medians over the calls, the graph's replay time from `gpu_ms` beside them). `--patch` (JSON) is
merged into the tuned config as `config_ab.py --patch` merges it, and recorded in the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_rows import versions, write_rows
from config_ab import patched

from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.devices import device_kind
from moe_lab.kernels.configs import get_config
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape
from moe_lab.tune import FLUSH_BYTES


def call_kernels(run, reps: int, sleep_ms: float) -> list[tuple[float, list[tuple[str, float, float]]]]:
    """Per call of `run`, the flush's end and the call's kernels as (name, start us, end us) in start order.
    With `sleep_ms`, a kernel that sleeps that long is queued before the calls (the host's head start)."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        if sleep_ms:
            torch.cuda._sleep(int(sleep_ms * 1e-3 * torch.cuda.clock_rate() * 1e6))
        for _ in range(reps):
            flush.zero_()
            run()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    calls: list[tuple[float, list[tuple[str, float, float]]]] = []
    for e in events:
        if "FillFunctor" in e.name:  # the flush: the next kernels belong to a new call
            calls.append((float(e.time_range.end), []))
        elif calls and e.time_range.elapsed_us() > 0:
            calls[-1][1].append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return [c for c in calls if c[1]]


def busy_us(kernels: list[tuple[str, float, float]]) -> float:
    """Length of the union of the kernels' [start, end) intervals."""
    total, reach = 0.0, -np.inf
    for _, start, end in sorted(kernels, key=lambda k: k[1]):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def probe_point(model: str, T: int, reps: int, patch: dict, eager: bool, sleep_ms: float
                ) -> tuple[list[dict], dict]:
    shape = get_shape(model)
    experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
    ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device="cuda")
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to("cuda", torch.bfloat16)
    dev = x_TH.device
    E, H, I, K = shape.experts, shape.hidden, shape.intermediate, shape.top_k
    config = patched(get_config(device_kind(dev), "bfloat16", T, E, H, I, K), patch)
    call = lambda: triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=config)  # noqa: E731
    with torch.no_grad():
        replay_us = gpu_ms(call, dev, reps=20) * 1e3
        call()
        torch.cuda.synchronize()
        if eager:
            calls = call_kernels(call, reps, sleep_ms)
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                call()
            calls = call_kernels(graph.replay, reps, 0)
    point = dict(model=model, T=T, patch=json.dumps(patch), launch="eager" if eager else "graph")
    rows, leads, spans, busies = [], [], [], []
    for i, (flush_end, kernels) in enumerate(calls):
        t0 = kernels[0][1]
        span = max(end for _, _, end in kernels) - t0
        leads.append(t0 - flush_end)
        spans.append(span)
        busies.append(busy_us(kernels))
        rows += [dict(point, replay=i, kernel=name.split("(")[0][:60], start_us=round(start - t0, 2),
                      end_us=round(end - t0, 2), us=round(end - start, 2), **versions())
                 for name, start, end in kernels]
    summary = dict(point, replays=len(calls), kernels=len(calls[0][1]) if calls else 0,
                   graph_replay_us=round(replay_us, 2), lead_us=round(float(np.median(leads)), 2),
                   span_us=round(float(np.median(spans)), 2),
                   busy_us=round(float(np.median(busies)), 2),
                   idle_us=round(float(np.median(np.subtract(spans, busies))), 2), **versions())
    return rows, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="olmoe-1b-7b")
    p.add_argument("--tokens", default="512")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--patch", default="{}", help="JSON merged into the tuned config (config_ab.py --patch)")
    p.add_argument("--out", default="out")
    p.add_argument("--name", default="", help="suffix of the CSVs' names")
    p.add_argument("--eager", action="store_true", help="profile the call itself, not its CUDA-graph replay")
    p.add_argument("--sleep-ms", type=float, default=50.0, help="with --eager: the host's head start (0: none)")
    args = p.parse_args(argv)
    rows, summaries = [], []
    for model in args.models.split(","):
        for T in (int(t) for t in args.tokens.split(",")):
            point_rows, summary = probe_point(model, T, args.reps, json.loads(args.patch), args.eager,
                                              args.sleep_ms)
            rows += point_rows
            summaries.append(summary)
            print(summary, flush=True)
            for r in (r for r in point_rows if r["replay"] == 1):  # replay 0 can carry the profiler's start
                print(f"  {r['kernel']:<48} {r['start_us']:9.2f} {r['end_us']:9.2f} {r['us']:8.2f}", flush=True)
    out = Path(args.out)
    name = args.name and f"_{args.name}"
    write_rows(rows, out, f"timeline{name}.csv")
    write_rows(summaries, out, f"timeline_summary{name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
