"""What a half-height last block of the warp-specialized GEMMs (`ws_grouped`, `HALF_TAIL`) costs against a
whole one, on an H100 (sm90).

    PYTHONPATH=. python benchmarks/half_tile_cost.py [--out DIR, default $OUT] [--models qwen3-30b-a3b] [--tokens 8192]

Every expert is given exactly R pairs (token t's K experts are t*K .. t*K+K-1 mod E), for R = n*BM (n whole
blocks, n = the tuned bucket's pairs per expert // BM), n*BM + BM/2 (a half-height last block with HALF_TAIL,
a whole one without) and (n+1)*BM. The config is the package's for the bucket of --tokens, its "ws" entry with
HALF_TAIL on and off. From the two GEMMs' device time (torch.profiler, L2 flushed before each call):
half_cost = (t(n*BM + BM/2) - t(n*BM)) / (t((n+1)*BM) - t(n*BM)), what the extra last blocks cost as a
fraction of whole ones (0.5 if a tile's time were its MMAs'). Writes `half_tile_cost.csv` under --out.
"""

from __future__ import annotations

import argparse
import os

import torch
from bench_rows import versions, write_rows
from triton_profile import kernel_times_us

from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.devices import device_kind
from moe_lab.kernels.configs import get_config
from moe_lab.shapes import build_experts, get_shape

GEMM_KERNEL = "_ws_grouped_kernel"


def even_routing(R: int, E: int, K: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights) of T = E*R/K tokens giving every expert exactly R pairs, K distinct experts a token."""
    if (E * R) % K or K > E:
        raise ValueError(f"{R} pairs for each of {E} experts do not make whole tokens of top-{K}")
    T = E * R // K
    ids_TK = (torch.arange(T * K, device=device) % E).view(T, K)
    return ids_TK, torch.full((T, K), 1.0 / K, device=device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="qwen3-30b-a3b")
    p.add_argument("--tokens", type=int, default=8192, help="the bucket whose tuned config is used")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = p.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        shape = get_shape(model)
        E, K, H, I = shape.experts, shape.top_k, shape.hidden, shape.intermediate
        config = get_config(device_kind(torch.device("cuda")), "bfloat16", args.tokens, E, H, I, K)
        if not config.get("ws"):
            raise SystemExit(f"{model} T={args.tokens}: the tuned config has no \"ws\" entry")
        bm = config["ws"]["BLOCK_M"]
        n = args.tokens * K // E // bm
        experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
        times = {}
        for R in (n * bm, n * bm + bm // 2, (n + 1) * bm):
            ids_TK, w_TK = even_routing(R, E, K, "cuda")
            x_TH = torch.randn(ids_TK.shape[0], H, device="cuda", dtype=torch.bfloat16)
            for half_tail in (0, 1):
                cfg = {**config, "ws": {**config["ws"], "HALF_TAIL": half_tail}}
                with torch.no_grad():
                    us = kernel_times_us(lambda: triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=cfg),
                                         args.reps)[GEMM_KERNEL]
                times[R, half_tail] = us
                rows.append(dict(model=model, bucket_T=args.tokens, T=ids_TK.shape[0], pairs_per_expert=R,
                                 block_m=bm, half_tail=half_tail, gemms_us=round(us, 2),
                                 ws=str(config["ws"]), **versions()))
                print(rows[-1], flush=True)
        lo, mid, hi = n * bm, n * bm + bm // 2, (n + 1) * bm
        for half_tail in (0, 1):
            cost = (times[mid, half_tail] - times[lo, half_tail]) / (times[hi, half_tail] - times[lo, half_tail])
            print(f"{model}: HALF_TAIL={half_tail}: a last block of {bm // 2} rows costs {cost:.2f} of a whole one",
                  flush=True)
    write_rows(rows, args.out, "half_tile_cost.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
