"""One `triton_fused` call (and cuBLAS on the same products) inside a profiler range, for Nsight Compute.

    ncu --profile-from-start off --clock-control none --set full -o OUT/rep \\
        python benchmarks/ncu_call.py --model qwen3-30b-a3b --tokens 8192 [--patch JSON] [--bmm]

Builds the model's experts layer (bf16, random weights) and the bench's uniform routing (seed T), runs the
call until its kernels are built and its launch plan cached, then once more between cudaProfilerStart and
cudaProfilerStop: with `--profile-from-start off`, ncu measures exactly one call's kernels (alignment,
gate/up, down, top-k sum). `--patch` (JSON, merged as `config_ab.py --patch`) changes the package's config
for the point; `--bmm` adds, inside the same range, cuBLAS's batched GEMM on the two products over balanced
groups (`triton_profile.balanced_gemms`), the dense reference the notes compare against.
"""

from __future__ import annotations

import argparse
import json

import torch
from config_ab import patched
from triton_profile import balanced_gemms

from moe_lab import synthetic_routing
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.kernels.configs import get_config
from moe_lab.shapes import build_hf_experts, get_shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--patch", type=json.loads, default={}, help="JSON merged into the package's config")
    p.add_argument("--bmm", action="store_true", help="also cuBLAS's bmm on balanced groups")
    args = p.parse_args(argv)
    shape, T, dev = get_shape(args.model), args.tokens, torch.device("cuda")
    experts = build_hf_experts(args.model, device=dev, dtype=torch.bfloat16)
    ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device=dev)
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to(dev, torch.bfloat16)
    config = patched(get_config("h100", "bfloat16", T, shape.experts, shape.hidden, shape.intermediate,
                                shape.top_k), args.patch)
    print(json.dumps(config), flush=True)
    products = balanced_gemms(experts, T * shape.top_k) if args.bmm else []
    with torch.no_grad():
        for _ in range(3):  # kernels built, launch plan cached, cuBLAS's heuristics settled
            triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=config)
            for a, w, out in products:
                torch.bmm(a, w, out=out)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        triton_fused_experts(experts, x_TH, ids_TK, w_TK, config=config)
        for a, w, out in products:
            torch.bmm(a, w, out=out)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
