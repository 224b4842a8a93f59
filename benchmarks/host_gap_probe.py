"""Probe for the bench's slow cells (notes, "Run 22"): is a cell that takes twice its usual time slow on the GPU,
or is the GPU waiting for the host?

Runs the bench's uncompiled rows (`triton_gpu.py`: triton_fused and auto in alternating rounds, then transformers'
batched_mm and grouped_mm) over the given token counts, `--passes` times in one process, with the bench's timer
(L2 flushed by a 256 MiB write, then CUDA events around the call) and, per timed call, also:
- `host_ms`: the host's wall time of the call itself (the Python call, its launches, no synchronisation);
- `flush_ms`: the GPU time of the flush before it, the head start the host has before the GPU runs dry.
A call whose event time is far above its usual one while the GPU's own work has not changed points at the host
when `host_ms` exceeds `flush_ms` plus the call's GPU time, and at the GPU otherwise.

    PYTHONPATH=.:benchmarks python benchmarks/host_gap_probe.py --models olmoe-1b-7b --dtype float16 \\
        --tokens 16,32,64,128,256 --passes 4 --out $OUT

Writes host_gap_samples.csv (one row per timed call) and host_gap_probe.log.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import triton_gpu as bench
from bench_rows import versions, write_rows
from transformers.integrations.moe import batched_mm_experts_forward, grouped_mm_experts_forward

from moe_lab.backends.auto import auto_experts
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.shapes import build_hf_experts, get_shape
from moe_lab.tune import FLUSH_BYTES


def timed_calls(fn, reps: int, warmup: int = 2) -> list[dict]:
    """`reps` calls of `fn`, each after a flush: event time, host time and the flush's GPU time, in ms."""
    for _ in range(warmup):
        fn()
    buf = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    ev = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(reps)]
    host_ms = []
    for flush_start, start, end in ev:
        flush_start.record()
        buf.zero_()
        start.record()
        t0 = time.perf_counter()
        fn()
        host_ms.append((time.perf_counter() - t0) * 1e3)
        end.record()
    torch.cuda.synchronize()
    return [dict(event_ms=s.elapsed_time(e), host_ms=h, flush_ms=f.elapsed_time(s))
            for (f, s, e), h in zip(ev, host_ms)]


def probe_pass(p: int, model: str, tokens: list[int]) -> list[dict]:
    shape = get_shape(model)
    ex = build_hf_experts(model, device="cuda", dtype=bench.DTYPE)
    N, H, I = 2 * shape.intermediate, shape.hidden, shape.intermediate
    rows = []
    for T in tokens:
        x, ids, w = bench.inputs(shape, T)
        ours = {"triton_fused": triton_fused_experts, "auto": auto_experts}
        theirs = {"transformers:batched_mm": batched_mm_experts_forward,
                  "transformers:grouped_mm": grouped_mm_experts_forward}
        with torch.no_grad():
            for r in range(4):  # the bench's alternating rounds of 5 calls
                for name in (list(ours) if r % 2 == 0 else list(ours)[::-1]):
                    rows += [dict(pass_=p, model=model, T=T, backend=name, round=r, **s)
                             for s in timed_calls(lambda fn=ours[name]: fn(ex, x, ids, w), reps=5)]
            for name, fn in theirs.items():
                if name.endswith("batched_mm") and T * shape.top_k * (N * H + I * H) * 2 > 8e9:
                    continue  # the bench's limit on batched_mm's gathered weights
                rows += [dict(pass_=p, model=model, T=T, backend=name, round=0, **s)
                         for s in timed_calls(lambda fn=fn: fn(ex, x, ids, w), reps=20)]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="olmoe-1b-7b")
    p.add_argument("--tokens", default="16,32,64,128,256")
    p.add_argument("--dtype", default="float16", choices=["bfloat16", "float16"])
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    bench.DTYPE = getattr(torch, args.dtype)
    out = Path(args.out)
    tokens = [int(t) for t in args.tokens.split(",")]
    rows, log = [], []
    for i in range(args.passes):
        for model in args.models.split(","):
            rows += probe_pass(i, model, tokens)
        log.append(f"pass {i} done at {time.strftime('%H:%M:%S')}")
    v = versions()
    write_rows([{**r, "dtype": args.dtype, **v} for r in rows], out, "host_gap_samples.csv")
    (out / "host_gap_probe.log").write_text("\n".join(log + [str(v)]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
