"""Does an L2 eviction-priority mark keep a buffer in the H100's L2 while a larger stream goes through it?

    PYTHONPATH=. python benchmarks/l2_residency.py --out $OUT [--mib 16,32] [--stream-mib 1024]

The question behind it: our gate/up GEMM reads the token rows (T, H) again from DRAM after the weight stream
has pushed them out of L2 (run 15's Nsight Compute: 1.30x the DRAM bytes it needs at Qwen3 T=8192). Per mode,
a buffer A of --mib MiB is marked line by line (128 bytes), a stream of --stream-mib MiB is read, then A is
read and timed (CUDA events); L2 flushed (a 256 MiB write, as the bench does) before each round:
- `cold`: no mark (A comes from DRAM); `hot`: A read just before, no stream (A from L2 as far as it fits);
- `prefetch`: `prefetch.global.L2` (normal priority); `evict_last`: `prefetch.global.L2::evict_last`;
- `evict_last_flushed`: evict_last, then a second 256 MiB flush instead of the stream: whether a mark survives
  the bench's flush (then every timed call would have to drop its marks);
- `evict_last_dropped`: evict_last, then `applypriority.global.L2::evict_normal` on A before the stream;
- `evict_last_read`: evict_last, then A read once with the default policy before the stream (whether a plain
  access, such as the GEMM's cp.async, takes the mark off);
- `load_evict_last`: A read by `tl.load(..., eviction_policy="evict_last")` as the mark.
Writes `l2_residency.csv` (median and min us per mode and size, the GB/s of A's read) under --out.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
import torch
import triton
import triton.language as tl
from bench_rows import versions, write_rows

from moe_lab.tune import FLUSH_BYTES

LINE = 128  # bytes per L2 line
BLOCK = 1024

ASM = {
    "prefetch": "prefetch.global.L2 [$1];",
    "evict_last": "prefetch.global.L2::evict_last [$1];",
    "evict_normal": "applypriority.global.L2::evict_normal [$1], 128;",
}


@triton.jit
def _mark_lines(ptr, n_lines, ASM_TEXT: tl.constexpr, BLOCK: tl.constexpr):
    """One instruction of ASM_TEXT per 128-byte line of ptr (uint8)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    addr = ptr + tl.where(i < n_lines, i, 0).to(tl.int64) * 128
    tl.inline_asm_elementwise(ASM_TEXT + "\n\tmov.u32 $0, 0;", "=r,l", [addr], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def _read_sum(ptr, n, out_ptr, EVICT_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Each program sums BLOCK int32 words of ptr into out[pid] (so nothing is dead code)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if EVICT_LAST:
        v = tl.load(ptr + i, mask=i < n, other=0, eviction_policy="evict_last")
    else:
        v = tl.load(ptr + i, mask=i < n, other=0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(v, axis=0))


def read(buf_W: torch.Tensor, out: torch.Tensor, evict_last: bool = False) -> None:
    n = buf_W.numel()
    _read_sum[(triton.cdiv(n, BLOCK),)](buf_W, n, out, EVICT_LAST=evict_last, BLOCK=BLOCK, num_warps=4)


def mark(buf_W: torch.Tensor, what: str) -> None:
    n_lines = buf_W.numel() * 4 // LINE
    _mark_lines[(triton.cdiv(n_lines, BLOCK),)](buf_W.view(torch.uint8), n_lines, ASM_TEXT=ASM[what], BLOCK=BLOCK,
                                                num_warps=4)


def round_us(mode: str, a_W, stream_W, flush, out) -> float:
    flush.zero_()
    if mode == "hot":
        read(a_W, out)
    elif mode == "load_evict_last":
        read(a_W, out, evict_last=True)
    elif mode != "cold":
        mark(a_W, "prefetch" if mode == "prefetch" else "evict_last")
    if mode == "evict_last_dropped":
        mark(a_W, "evict_normal")
    if mode == "evict_last_read":
        read(a_W, out)
    if mode == "evict_last_flushed":
        flush.zero_()
    elif mode != "hot":
        read(stream_W, out)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    read(a_W, out)
    end.record()
    mark(a_W, "evict_normal")  # leave no mark behind for the next round
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3


MODES = ("cold", "hot", "prefetch", "evict_last", "evict_last_flushed", "evict_last_dropped", "evict_last_read",
         "load_evict_last")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--mib", default="16,32")
    p.add_argument("--stream-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=dev)
    stream_W = torch.ones(args.stream_mib * 2**18, dtype=torch.int32, device=dev)
    out = torch.empty(triton.cdiv(stream_W.numel(), BLOCK), dtype=torch.int32, device=dev)
    rows = []
    for mib in (int(m) for m in args.mib.split(",")):
        a_W = torch.ones(mib * 2**18, dtype=torch.int32, device=dev)
        for mode in MODES:
            round_us(mode, a_W, stream_W, flush, out)  # compile and warm
            us = [round_us(mode, a_W, stream_W, flush, out) for _ in range(args.rounds)]
            s = pd.Series(us)
            rows.append(dict(mib=mib, stream_mib=args.stream_mib, mode=mode, median_us=round(s.median(), 2),
                             min_us=round(s.min(), 2), gbps=round(mib * 2**20 / s.median() / 1e3, 1), **versions()))
            print(rows[-1], flush=True)
    write_rows(rows, args.out, "l2_residency.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
