"""What one experts call costs the host, against what it costs the GPU (notes, "Run 23").

At decode sizes the GPU finishes a call in tens of microseconds, so a model run without CUDA graphs waits for
the host's Python, allocations and launches. Per (model, T, backend) this times, on the same inputs:
- `loop_us`: calls back to back, a synchronisation every `--sync-every` calls: the wall time per call of an
  eager decode loop (host-bound when the host's time exceeds the GPU's);
- `host_us`, `host_min_us`: the host's time of one call with the GPU idle before it (median and least of
  `--reps`): the Python, the allocations and the launches, none of it waiting for the GPU;
- `graph_us`: the same call captured in a CUDA graph, replayed back to back: the GPU's time with next to no host.
`--profile` adds a cProfile of the loop per (model, T) for `triton_fused`, by own time. `--label` names the
code measured, so that two checkouts run in one session make one A/B table.

    PYTHONPATH=.:benchmarks python benchmarks/host_cost.py --models olmoe-1b-7b,qwen1.5-moe-a2.7b \\
        --tokens 1,4,64 --label after --out $OUT

Writes host_cost_<label>.csv (one row per point) and, with --profile, host_cost_profile_<label>.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from pathlib import Path

import torch
import triton_gpu as bench
from bench_rows import versions, write_rows
from transformers.integrations.moe import batched_mm_experts_forward

from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.shapes import build_hf_experts, get_shape

BACKENDS = {"triton_fused": triton_fused_experts, "transformers:batched_mm": batched_mm_experts_forward}


def loop_us(fn, calls: int, sync_every: int) -> float:
    """Wall time per call of `calls` calls back to back, synchronising every `sync_every` (the launch queue
    never fills)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(calls):
        fn()
        if i % sync_every == sync_every - 1:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def host_us(fn, reps: int) -> tuple[float, float]:
    """Median and least host time of one call, the GPU idle before each (the least is the call's own cost, the
    median what it takes on a host that also stalls now and then)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6, min(times) * 1e6


def graph_us(fn, replays: int) -> float:
    """GPU time per call: the call captured in a CUDA graph, replayed back to back."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / replays * 1e6


def profile_text(fn, calls: int, sync_every: int, title: str) -> str:
    """cProfile of the loop, the 20 functions with the most own time."""
    pr = cProfile.Profile()
    pr.enable()
    loop_us(fn, calls, sync_every)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(20)
    return f"{title}\n{s.getvalue()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="olmoe-1b-7b,qwen1.5-moe-a2.7b")
    p.add_argument("--tokens", default="1,4,64")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--passes", type=int, default=2, help="times over every point (the first pass warms up)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--sync-every", type=int, default=50)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--baseline-max-tokens", type=int, default=4,
                   help="transformers' batched_mm (the fastest of its backends at decode) up to this many tokens")
    p.add_argument("--label", required=True, help="names the code measured (e.g. a commit)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    bench.DTYPE = getattr(torch, args.dtype)
    out = Path(args.out)
    v = versions()
    rows, profiles = [], []
    points = [(model, T) for model in args.models.split(",") for T in map(int, args.tokens.split(","))]
    experts = {model: build_hf_experts(model, device="cuda", dtype=bench.DTYPE) for model in args.models.split(",")}
    for pass_ in range(args.passes):
        for model, T in points:
            shape, ex = get_shape(model), experts[model]
            x, ids, w = bench.inputs(shape, T)
            with torch.no_grad():
                for name, forward in BACKENDS.items():
                    if name != "triton_fused" and T > args.baseline_max_tokens:
                        continue

                    def fn(forward=forward):
                        return forward(ex, x, ids, w)

                    for _ in range(20):
                        fn()
                    loop = loop_us(fn, args.calls, args.sync_every)
                    host, host_min = host_us(fn, args.reps)
                    row = dict(label=args.label, pass_=pass_, model=model, T=T, backend=name, dtype=args.dtype,
                               loop_us=loop, host_us=host, host_min_us=host_min, graph_us=graph_us(fn, args.calls))
                    rows.append({**row, **v})
                    print({k: round(x, 2) if isinstance(x, float) else x for k, x in row.items()}, flush=True)
                    if args.profile and name == "triton_fused" and pass_ == args.passes - 1:
                        profiles.append(profile_text(fn, args.calls, args.sync_every,
                                                     f"{model} T={T} {name} ({args.label}), {args.calls} calls"))
    write_rows(rows, out, f"host_cost_{args.label}.csv")
    if profiles:
        (out / f"host_cost_profile_{args.label}.txt").write_text(f"{v}\n\n" + "\n".join(profiles))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
