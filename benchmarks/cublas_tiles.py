"""Which kernels the libraries run on the experts' two products, and at what rate, on an H100.

    PYTHONPATH=. python benchmarks/cublas_tiles.py [--out DIR, default $OUT] [--models ...] [--tokens 4096,8192]

Per model and token count (bf16): cuBLAS's batched GEMM (`torch.bmm`) on balanced groups (ceil(T*K/E') rows
for each of the E' experts hit, as `triton_profile.balanced_gemms`) and torch's grouped GEMM
(`torch._grouped_mm`, CUTLASS) on the tokens of a uniform routing sorted by expert, each product alone. Every
kernel a product launches is a row (torch.profiler, mean device time over --reps calls, L2 flushed before
each), with its TFLOP/s on the product's useful flops, and the tile, K step, stages and cluster a cuBLAS
kernel's name spells (`name_fields`). With the rows per group, what a 128-row block would pad them to.
Writes `cublas_tiles.csv` under --out; `--reparse CSV` fills the name's fields in again from the kernel names
of a CSV written before (no GPU).
"""

from __future__ import annotations

import argparse
import os
import re

import pandas as pd
import torch
from bench_rows import versions, write_rows
from triton_profile import balanced_gemms, kernel_times_us, sorted_problem

from moe_lab.backends.common import down_weight_EIH, up_weight_EHN
from moe_lab.backends.grouped_gemm import grouped_mm
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape

# cuBLAS's sm90 kernels, e.g. "nvjet_sm90_tst_256x144_64x4_1x2_h_bz_coopA_TNT": the output tile (its 256 along
# the weight's columns, its 144 along the tokens), K step x stages, and the cluster
NVJET = re.compile(r"nvjet_sm90_\w+?_(\d+x\d+)_(\d+)x(\d+)_(\d+x\d+)_")


def name_fields(kernel: str) -> dict[str, str | None]:
    """The tile, K step, stages and cluster a cuBLAS kernel's name spells (None for other kernels: CUTLASS's
    spell theirs in template arguments)."""
    m = NVJET.search(kernel)
    return dict(zip(("tile", "k_step", "stages", "cluster"), m.groups() if m else (None,) * 4))


def product_rows(model: str, T: int, reps: int) -> list[dict]:
    shape = get_shape(model)
    E, K = shape.experts, shape.top_k
    experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
    ids_TK, _ = synthetic_routing("uniform", T, E, K, seed=T, device="cuda")
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to("cuda", torch.bfloat16)
    x_SH, offs_E, a_SI = sorted_problem(experts, x_TH, ids_TK)
    w_up, w_down = up_weight_EHN(experts), down_weight_EIH(experts)
    S = T * K
    rows, cases = [], []
    for what, (a_EMK, w_EKN, out_EMN) in zip(("gate/up", "down"), balanced_gemms(experts, S)):
        bmm = lambda a=a_EMK, w=w_EKN, o=out_EMN: torch.bmm(a, w, out=o)  # noqa: E731
        flops = 2 * S * w_EKN.shape[1] * w_EKN.shape[2]
        cases.append(("cuBLAS bmm, balanced groups", what, a_EMK.shape[1], bmm, flops))
    for what, a, w in (("gate/up", x_SH, w_up), ("down", a_SI, w_down)):
        cases.append(("torch._grouped_mm, uniform routing sorted", what, None,
                      lambda a=a, w=w: grouped_mm(a, w, offs_E), 2 * S * w.shape[1] * w.shape[2]))
    with torch.no_grad():
        for library, what, rows_per_group, fn, flops in cases:
            for kernel, us in kernel_times_us(fn, reps).items():
                rows.append(dict(model=model, T=T, library=library, product=what, rows_per_group=rows_per_group,
                                 padded_to_128=-(-rows_per_group // 128) * 128 if rows_per_group else None,
                                 kernel=kernel, us=round(us, 2), tflops=round(flops / us / 1e6, 1),
                                 **name_fields(kernel), **versions()))
                print({k: rows[-1][k] for k in ("model", "T", "library", "product", "us", "tflops", "tile",
                                                 "cluster")}, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--models", default="qwen1.5-moe-a2.7b,qwen3-30b-a3b,olmoe-1b-7b")
    p.add_argument("--tokens", default="2048,4096,8192,16384")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--reparse", help="a cublas_tiles.csv whose name fields to fill in again, in place")
    args = p.parse_args(argv)
    if args.reparse:
        df = pd.read_csv(args.reparse)
        fields = pd.DataFrame([name_fields(k) for k in df["kernel"]], index=df.index)
        df = df.drop(columns=[c for c in ("tile", "cluster", "warpgroups", "stages", "k_step") if c in df])
        pd.concat([df, fields], axis=1).to_csv(args.reparse, index=False)
        return 0
    rows = [r for model in args.models.split(",") for T in map(int, args.tokens.split(","))
            for r in product_rows(model, T, args.reps)]
    write_rows(rows, args.out, "cublas_tiles.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
