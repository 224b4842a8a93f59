"""Where `triton_fused`'s call leaves the GPU idle: every kernel's start and end inside a CUDA-graph replay.

    PYTHONPATH=.:benchmarks python benchmarks/timeline_probe.py --models olmoe-1b-7b --tokens 512 --out $OUT

Per (model, T), bf16, uniform routing, the config table in force: the call captured in a CUDA graph, --reps
replays profiled (torch.profiler, CUPTI's kernel records; L2 flushed by a 256 MiB write before each). Per
replay, from the first kernel's start: each kernel's start and end, and the idle time, the part of the span
where no kernel of the call runs (launch gaps, stream waits). A kernel's span includes any wait inside it
(a dependent launch starts early and waits for the kernel before). Writes under --out `timeline.csv` (one
row per kernel per replay) and `timeline_summary.csv` (per point: span, busy and idle medians over the
replays, the graph's replay time from `gpu_ms` beside them). `--patch` (JSON) is merged into the tuned
config as `config_ab.py --patch` merges it, and recorded in the rows.
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


def replay_kernels(graph: torch.cuda.CUDAGraph, reps: int) -> list[list[tuple[str, float, float]]]:
    """Per replay, its kernels as (name, start us, end us) in start order, the flush's fill kernel left out."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            graph.replay()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    replays: list[list[tuple[str, float, float]]] = []
    for e in events:
        if "FillFunctor" in e.name:  # the flush: the next kernels belong to a new replay
            replays.append([])
        elif replays and e.time_range.elapsed_us() > 0:
            replays[-1].append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return [r for r in replays if r]


def busy_us(kernels: list[tuple[str, float, float]]) -> float:
    """Length of the union of the kernels' [start, end) intervals."""
    total, reach = 0.0, -np.inf
    for _, start, end in sorted(kernels, key=lambda k: k[1]):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def probe_point(model: str, T: int, reps: int, patch: dict) -> tuple[list[dict], dict]:
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
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        replays = replay_kernels(graph, reps)
    point = dict(model=model, T=T, patch=json.dumps(patch))
    rows, spans, busies = [], [], []
    for i, kernels in enumerate(replays):
        t0 = kernels[0][1]
        span = max(end for _, _, end in kernels) - t0
        spans.append(span)
        busies.append(busy_us(kernels))
        rows += [dict(point, replay=i, kernel=name.split("(")[0][:60], start_us=round(start - t0, 2),
                      end_us=round(end - t0, 2), us=round(end - start, 2), **versions())
                 for name, start, end in kernels]
    summary = dict(point, replays=len(replays), kernels=len(replays[0]) if replays else 0,
                   graph_replay_us=round(replay_us, 2), span_us=round(float(np.median(spans)), 2),
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
    args = p.parse_args(argv)
    rows, summaries = [], []
    for model in args.models.split(","):
        for T in (int(t) for t in args.tokens.split(",")):
            point_rows, summary = probe_point(model, T, args.reps, json.loads(args.patch))
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
