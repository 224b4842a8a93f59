"""`triton_fused` with programmatic dependent launch (PDL) on and off, same kernels and tiles otherwise.

    PYTHONPATH=. python benchmarks/pdl.py --out $OUT [--models ...] [--tokens 1,16,...] [--rounds 3]

Per (model, T): the tuned config with `"PDL": 1` and with `"PDL": 0` (`moe_lab.kernels.pdl`), bf16, uniform
routing, timed as the bench times (`moe_lab.tune.median_ms`: CUDA events, L2 flushed before each call) and
as one CUDA-graph replay (`moe_lab.kernels.search.gpu_ms`). The two are timed in alternating order over
`--rounds` rounds (on/off, then off/on, ...), since whichever of two runs of the same kernels is timed second
can come out slower; each reported time is the median over rounds. The outputs of both are checked equal bit
for bit first. Writes `pdl.csv` under --out.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
import triton

from moe_lab import synthetic_routing
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.kernels.configs import get_config
from moe_lab.kernels.search import gpu_ms, precompile
from moe_lab.shapes import build_hf_experts, get_shape
from moe_lab.tune import median_ms

MODELS = ("qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b")
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=500.0, help="stop starting new points after this many seconds")
    args = p.parse_args(argv)
    t0, dev, rows = time.time(), torch.device("cuda"), []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        shape = get_shape(model)
        experts = build_hf_experts(model, device=dev, dtype=torch.bfloat16)
        tokens = [int(t) for t in args.tokens.split(",")]
        points = []
        for T in tokens:
            ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device=dev)
            x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to(dev, torch.bfloat16)
            tuned = get_config("h100", "bfloat16", T, shape.experts, shape.hidden, shape.intermediate, shape.top_k)
            points.append((T, (x_TH, ids_TK, w_TK), {1: {**tuned, "PDL": 1}, 0: {**tuned, "PDL": 0}}))
        with torch.no_grad():  # every kernel built once, in threads, before anything is timed
            for _, inputs, cfgs in points:
                precompile(experts, inputs, list(cfgs.values()))
        for T, inputs, cfgs in points:
            if time.time() - t0 > args.budget_s:
                print(f"{model} T={T} and later: out of time budget", flush=True)
                break
            times = {(on, how): [] for on in (1, 0) for how in ("events", "graph")}
            with torch.no_grad():
                on_TH = triton_fused_experts(experts, *inputs, config=cfgs[1])
                off_TH = triton_fused_experts(experts, *inputs, config=cfgs[0])
                same = bool(torch.equal(on_TH, off_TH))
                for r in range(args.rounds):
                    for on in (1, 0) if r % 2 == 0 else (0, 1):
                        def call(cfg=cfgs[on]):
                            triton_fused_experts(experts, *inputs, config=cfg)
                        times[(on, "events")].append(median_ms(call, dev) * 1e3)
                        times[(on, "graph")].append(gpu_ms(call, dev, reps=20) * 1e3)
            us = {k: float(np.median(v)) for k, v in times.items()}
            for how in ("events", "graph"):
                rows.append(dict(model=model, T=T, timing=how, pdl_us=round(us[(1, how)], 2),
                                 serial_us=round(us[(0, how)], 2), speedup=round(us[(0, how)] / us[(1, how)], 4),
                                 same_bits=same, path=cfgs[1]["path"], rounds=args.rounds,
                                 device=torch.cuda.get_device_name(), torch=torch.__version__,
                                 triton=triton.__version__, transformers=transformers.__version__))
                print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(out / "pdl.csv", index=False)  # after every point: a timeout keeps the rest
        del experts
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
