"""`moe-lab tune`: time moe_lab's backends per (model shape, token count) and write auto's dispatch table.

For each model and token count, every candidate backend runs the model's experts layer on uniform
routing; the median time (CUDA events around each call, L2 flushed before it, on CUDA; wall clock on
CPU) goes into a long-format CSV, and the fastest is marked `chosen`. Rows of other keys already in
the file are kept, so sweeps on different devices or dtypes add up in one table.
"""

from __future__ import annotations

import csv
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from moe_lab.backends.auto import CANDIDATES, layout_tag, reload_dispatch_table, table_path
from moe_lab.devices import device_kind
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape

COLUMNS = ["device", "dtype", "E", "H", "I", "K", "layout", "tokens", "backend", "ms", "chosen"]
DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_BACKENDS = ("triton_fused", "grouped_mm", "batched_mm")
BATCHED_MM_MAX_BYTES = 8 * 2**30  # batched_mm gathers S full weight matrices: skip it beyond this
FLUSH_BYTES = 256 * 2**20  # the buffer a timer writes (or reads) before each call: 5x the H100's 50 MB L2


def median_ms(fn, device: torch.device, reps: int = 20, warmup: int = 3, flush: str = "write") -> float:
    """Median of `reps` calls (`sample_ms`)."""
    return float(np.median(sample_ms(fn, device, reps, warmup, flush)))


def sample_ms(fn, device: torch.device, reps: int = 20, warmup: int = 3, flush: str = "write") -> list[float]:
    """`reps` timings of `fn` in ms; on CUDA each timed by events with the L2 cache flushed before it: by writing
    a 256 MiB buffer (`flush="write"`, L2 left full of dirty lines that must be written back as a call's reads
    evict them: every timer in moe_lab), or by reading one (`"read"`, L2 left full of clean lines)."""
    if flush not in ("write", "read"):
        raise ValueError(f"flush must be 'write' or 'read', not {flush!r}")
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return samples
    buf = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush == "write":
            buf.zero_()
        else:
            buf.sum()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def tune(models: list[str], tokens: list[int] = list(DEFAULT_TOKENS), dtype: torch.dtype = torch.bfloat16,
         device: str = "cuda", backends: list[str] = list(DEFAULT_BACKENDS), out: str | Path | None = None,
         reps: int = 20, log=print) -> list[dict]:
    """Measure, mark the fastest per (key, tokens), merge into the CSV at `out` (auto's table by default)."""
    out = Path(out) if out else table_path()
    dev = torch.device(device)
    dtype_name = str(dtype).removeprefix("torch.")
    new_rows: list[dict] = []
    for model in models:
        shape = get_shape(model)
        experts = build_experts(model, device=dev, dtype=dtype)
        E, H, I, K = shape.experts, shape.hidden, shape.intermediate, shape.top_k
        base = dict(device=device_kind(dev), dtype=dtype_name, E=E, H=H, I=I, K=K, layout=layout_tag(experts))
        for T in tokens:
            ids_TK, w_TK = synthetic_routing("uniform", T, E, K, seed=T, device=dev)
            x_TH = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to(dev, dtype)
            timed = []
            for name in backends:
                N = 2 * I if shape.layout.has_gate else I
                if name == "batched_mm" and T * K * (N * H + I * H) * x_TH.element_size() > BATCHED_MM_MAX_BYTES:
                    continue
                if name == "triton_fused" and dev.type != "cuda":
                    continue
                fn = CANDIDATES[name]
                try:
                    with torch.no_grad():
                        ms = median_ms(partial(fn, experts, x_TH, ids_TK, w_TK), dev, reps=reps)
                except (RuntimeError, NotImplementedError) as err:  # out of memory, unsupported layout
                    log(f"tune: {model} T={T} {name}: skipped ({str(err).splitlines()[0][:120]})")
                    continue
                timed.append((ms, name))
            if not timed:
                continue
            best = min(timed)[1]
            for ms, name in timed:
                new_rows.append({**base, "tokens": T, "backend": name, "ms": round(ms, 5), "chosen": int(name == best)})
            log(f"tune: {model} T={T}: " + ", ".join(f"{n} {ms:.4f} ms" for ms, n in sorted(timed)))
        del experts
    _merge(out, new_rows)
    reload_dispatch_table()
    return new_rows


def _merge(path: Path, rows: list[dict]) -> None:
    def key(r):
        return (r["device"], r["dtype"], str(r["E"]), str(r["H"]), str(r["I"]), str(r["K"]), r["layout"],
                str(r["tokens"]))

    replaced = {key(r) for r in rows}
    old = []
    if path.exists():
        with path.open() as f:
            old = [r for r in csv.DictReader(f) if key(r) not in replaced]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in old + rows:
            w.writerow({c: r[c] for c in COLUMNS})


def add_tune_parser(sub) -> None:
    """Register `moe-lab tune` on the CLI's subparsers."""
    p = sub.add_parser("tune", help="time moe_lab's backends per shape and token count; write auto's dispatch table")
    p.add_argument("--models", default="qwen1.5-moe-a2.7b,qwen3-30b-a3b,olmoe-1b-7b",
                   help="comma-separated model shape names (data/model_shapes.yaml)")
    p.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)), help="comma-separated token counts")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help=f"from {', '.join(CANDIDATES)}")
    p.add_argument("--out", default=None, help="CSV to merge into (default: auto's table)")
    p.add_argument("--reps", type=int, default=20)
    p.set_defaults(func=_tune_command)


def _tune_command(args) -> int:
    tune(args.models.split(","), [int(t) for t in args.tokens.split(",")], getattr(torch, args.dtype), args.device,
         args.backends.split(","), args.out, args.reps)
    return 0
