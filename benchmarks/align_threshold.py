"""GPU time of the alignment by expert, one launch against two, per number of pairs: where
`moe_lab.kernels.align.ONE_LAUNCH_MAX_PAIRS` should sit.

    PYTHONPATH=. python benchmarks/align_threshold.py --out $OUT

Each mode forced through `align_by_expert` (the threshold patched), BLOCK_M 32 and 64, uniform routing of
the target models' (E, K); timed as a CUDA-graph replay with the L2 flushed (`moe_lab.kernels.search.gpu_ms`).
Writes `align_threshold.csv` under --out.
"""

from __future__ import annotations

import argparse
import os

import torch
from bench_rows import versions, write_rows

from moe_lab.kernels import align
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing

EK = {"qwen1.5-moe-a2.7b": (60, 4), "qwen3-30b-a3b": (128, 8), "olmoe-1b-7b": (64, 8)}
PAIRS = (128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 16384, 65536)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = p.parse_args(argv)
    rows = []
    dev = torch.device("cuda")
    for model, (E, K) in EK.items():
        for S in PAIRS:
            ids_TK, _ = synthetic_routing("uniform", S // K, E, K, seed=S, device=dev)
            ids_S = ids_TK.reshape(-1).contiguous()
            for bm in (32, 64):
                for mode, limit in (("one_launch", 10**9), ("two_launches", 0)):
                    align.ONE_LAUNCH_MAX_PAIRS = limit
                    us = gpu_ms(lambda: align.align_by_expert(ids_S, E, bm), dev) * 1e3
                    rows.append(dict(model=model, E=E, K=K, pairs=S, BLOCK_M=bm, mode=mode, us=round(us, 2),
                                     **versions()))
                    print(rows[-1], flush=True)
    write_rows(rows, args.out, "align_threshold.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
