"""Where `triton_fused`'s time goes on the GPU: device time per kernel, beside torch's grouped GEMM.

    PYTHONPATH=. python benchmarks/triton_profile.py --out $OUT [--models qwen1.5-moe-a2.7b] [--tokens 1,512,8192]

Per model and token count (bf16, uniform routing, the config table in force): every kernel of one call
from torch.profiler (mean device time over --reps calls, L2 flushed before each), with the useful work
of the two GEMMs (flops of the real pairs, no padding; bytes of the experts hit) as TFLOP/s and GB/s;
the whole call as a CUDA-graph replay (GPU time, no host) and end to end (host included); and, from
`--compare-tokens` on, torch's grouped GEMM (`torch._grouped_mm`) on the same two products with the
tokens already sorted (no gather, no epilogue): what the library's ragged GEMM reaches on this problem.
Writes `triton_profile.csv` and `triton_profile.log` under --out. Legend as in `moe_lab.kernels.fused_moe`.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

from moe_lab.backends.common import down_weight_EIH, up_weight_EHN
from moe_lab.backends.grouped_gemm import grouped_mm
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.devices import device_kind
from moe_lab.kernels.configs import get_config, shape_key
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape
from moe_lab.tune import median_ms

FLUSH_BYTES = 256 * 2**20  # more than the H100's 50 MB L2


def kernel_times_us(fn, reps: int) -> dict[str, float]:
    """Device time per call of each kernel `fn` launches (name -> us), L2 flushed before each call."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    total: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA and "FillFunctor" not in evt.name:
            total[evt.name] += evt.time_range.elapsed_us()
    return {name: us / reps for name, us in total.items()}


def sorted_problem(experts, x_TH, ids_TK):
    """The tokens sorted by expert (S, H), the group ends, and an intermediate of the right shape (S, I)."""
    T, K = ids_TK.shape
    E = up_weight_EHN(experts).shape[0]
    ids_S, perm_S = torch.sort(ids_TK.reshape(-1), stable=True)
    offs_E = torch.searchsorted(ids_S, torch.arange(E, device=ids_S.device, dtype=ids_S.dtype), right=True,
                                out_int32=True)
    x_SH = x_TH[perm_S // K].contiguous()
    a_SI = torch.randn(x_SH.shape[0], down_weight_EIH(experts).shape[1], device=x_TH.device, dtype=x_TH.dtype)
    return x_SH, offs_E, a_SI


def profile_point(model: str, T: int, reps: int, compare: bool, log) -> list[dict]:
    shape = get_shape(model)
    E, H, I, K = shape.experts, shape.hidden, shape.intermediate, shape.top_k
    N = 2 * I if shape.layout.has_gate else I
    experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
    ids_TK, w_TK = synthetic_routing("uniform", T, E, K, seed=T, device="cuda")
    x_TH = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to("cuda", torch.bfloat16)
    S, hit = T * K, int(torch.unique(ids_TK).numel())
    config = get_config(device_kind(x_TH.device), "bfloat16", T, E, H, I, K)
    gemm_work = {  # kernel-name fragment -> (useful flops, bytes of the experts hit + activations)
        "_gate_up": (2 * S * H * N, 2 * (hit * N * H + T * H + S * I)),
        "_down": (2 * S * I * H, 2 * (hit * H * I + S * I + S * H)),
    }
    base = dict(model=model, T=T, shape=shape_key(E, H, I, K), path=config["path"], config=str(config),
                device=torch.cuda.get_device_name(), torch=torch.__version__)
    rows = []

    def add(kernel: str, us: float, flops: float | None = None, nbytes: float | None = None):
        rows.append(dict(base, kernel=kernel, us=round(us, 2),
                         tflops=round(flops / us / 1e6, 1) if flops else None,
                         gbps=round(nbytes / us / 1e3, 1) if nbytes else None))
        log(f"{model} T={T} {kernel}: {us:.1f} us" + (f", {rows[-1]['tflops']} TFLOP/s" if flops else "")
            + (f", {rows[-1]['gbps']} GB/s" if nbytes else ""))

    with torch.no_grad():
        call = lambda: triton_fused_experts(experts, x_TH, ids_TK, w_TK)  # noqa: E731
        for name, us in sorted(kernel_times_us(call, reps).items(), key=lambda kv: -kv[1]):
            work = next((w for frag, w in gemm_work.items() if frag in name), (None, None))
            add(name, us, *work)
        add("whole call, CUDA-graph replay", gpu_ms(call, x_TH.device) * 1e3)
        add("whole call, end to end", median_ms(call, x_TH.device) * 1e3)
        if compare:
            x_SH, offs_E, a_SI = sorted_problem(experts, x_TH, ids_TK)
            w_up, w_down = up_weight_EHN(experts), down_weight_EIH(experts)
            for what, fn, frag in (("gate/up", lambda: grouped_mm(x_SH, w_up, offs_E), "_gate_up"),
                                   ("down", lambda: grouped_mm(a_SI, w_down, offs_E), "_down")):
                add(f"torch._grouped_mm {what}, tokens pre-sorted", median_ms(fn, x_TH.device) * 1e3,
                    *gemm_work[frag])
    del experts
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--models", default="qwen1.5-moe-a2.7b,qwen3-30b-a3b,olmoe-1b-7b")
    p.add_argument("--tokens", default="1,128,512,2048,8192")
    p.add_argument("--compare-tokens", type=int, default=128, help="torch._grouped_mm rows from this T on")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    t0 = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:6.1f}s] {msg}"
        print(line, flush=True)
        lines.append(line)

    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
        f"{__import__('triton').__version__}, configs {os.environ.get('MOE_LAB_KERNEL_CONFIGS', 'package')}")
    rows = []
    for model in args.models.split(","):
        for T in map(int, args.tokens.split(",")):
            rows += profile_point(model, T, args.reps, T >= args.compare_tokens, log)
    with open(out / "triton_profile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "triton_profile.log").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
