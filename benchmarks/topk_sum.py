"""GPU time of the top-k sum after the down GEMM: torch's `sum(dim=1)` over the (T, K, H) view against
`moe_lab.kernels.topk_sum` at every tile in a small grid, on the target models' (K, H), bf16.

    PYTHONPATH=. python benchmarks/topk_sum.py --out $OUT

Each call timed as a CUDA-graph replay with the L2 flushed (`moe_lab.kernels.search.gpu_ms`); GB/s counts
the S*H elements read and T*H written. Every kernel output is checked against torch's before it is timed.
Writes `topk_sum.csv` under --out.
"""

from __future__ import annotations

import argparse
import os

import torch
import triton
from bench_rows import versions, write_rows

from moe_lab.kernels.search import gpu_ms
from moe_lab.kernels.topk_sum import _topk_sum_kernel

KH = {"qwen1.5-moe-a2.7b": (4, 2048), "qwen3-30b-a3b": (8, 2048), "olmoe-1b-7b": (8, 2048)}
TOKENS = (128, 512, 2048, 8192, 16384)
TILES = [(bt, bh, w) for bt in (1, 2, 4, 8) for bh in (256, 512, 1024) for w in (4, 8)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    rows = []
    for model, (K, H) in KH.items():
        for T in TOKENS:
            y_SH = torch.randn(T * K, H, device=dev, dtype=torch.bfloat16)
            want = y_SH.view(T, K, H).sum(dim=1)
            gb = (T * K * H + T * H) * y_SH.element_size() / 1e9

            def record(impl, tile, us):
                rows.append(dict(model=model, T=T, K=K, H=H, impl=impl, tile=tile, us=round(us, 2),
                                 gbps=round(gb / us * 1e6, 1), **versions()))
                print(rows[-1], flush=True)

            record("torch sum(dim=1)", "", gpu_ms(lambda: y_SH.view(T, K, H).sum(dim=1), dev) * 1e3)
            out = torch.empty(T, H, device=dev, dtype=torch.bfloat16)
            for bt, bh, w in TILES:
                def call():
                    grid = (triton.cdiv(T, bt), triton.cdiv(H, bh))
                    _topk_sum_kernel[grid](y_SH, out, y_SH, y_SH, 0, y_SH, 0, T, H, 0, TOPK=K, BLOCK_T=bt, BLOCK_H=bh,
                                           num_warps=w)
                call()
                torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)
                record("triton", f"BLOCK_T={bt} BLOCK_H={bh} num_warps={w}", gpu_ms(call, dev) * 1e3)
    write_rows(rows, args.out, "topk_sum.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
