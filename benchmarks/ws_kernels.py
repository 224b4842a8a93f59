"""Per-kernel device time of `triton_fused` with `"ws"` entries (the warp-specialized GEMMs) beside the tuned
Triton tiles, on the same inputs (bf16, uniform routing, L2 flushed before each call), and the whole call as
a CUDA-graph replay ("whole call" rows).

    PYTHONPATH=. python benchmarks/ws_kernels.py --ws JSON [--ws JSON ...] --models qwen3-30b-a3b \
        --tokens 4096,8192 --out $OUT
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_rows import versions, write_rows
from triton_profile import kernel_times_us

from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.devices import device_kind
from moe_lab.kernels.configs import get_config
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ws", type=json.loads, action="append", required=True,
                   help="a \"ws\" entry (give several to compare them: variants ws0, ws1, ...)")
    p.add_argument("--models", default="qwen1.5-moe-a2.7b,qwen3-30b-a3b,olmoe-1b-7b")
    p.add_argument("--tokens", default="4096,8192")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        shape = get_shape(model)
        experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
        for T in map(int, args.tokens.split(",")):
            ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device="cuda")
            x_TH = torch.randn(T, shape.hidden, device="cuda", dtype=torch.bfloat16)
            tuned = get_config(device_kind(x_TH.device), "bfloat16", T, shape.experts, shape.hidden,
                               shape.intermediate, shape.top_k)
            variants = [("tuned", tuned)] + [(f"ws{i}", {**tuned, "ws": ws}) for i, ws in enumerate(args.ws)]
            for variant, config in variants:
                with torch.no_grad():
                    call = lambda: triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=config)  # noqa: E731
                    times = kernel_times_us(call, args.reps)
                    times["whole call"] = gpu_ms(call, x_TH.device) * 1e3
                for kernel, us in sorted(times.items(), key=lambda kv: -kv[1]):
                    rows.append(dict(model=model, T=T, variant=variant, ws=json.dumps(config.get("ws", "")),
                                     kernel=kernel, us=round(us, 2), **versions()))
                    print(rows[-1], flush=True)
    write_rows(rows, args.out, "ws_kernels.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
