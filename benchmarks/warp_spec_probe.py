"""Does Triton's automatic warp specialization (`tl.range(..., warp_specialize=True)`) run on this GPU?

    python benchmarks/warp_spec_probe.py --out $OUT/warp_spec [--timeout-s 30]

A TMA matmul (bf16, M = N = K = 4096, 128x128x64 tiles, 4 warps, 3 stages), built with and without warp
specialization, as one program per tile (its K loop specialized) and as one program per SM looping over the
tiles (its tile loop specialized, as Triton's persistent matmul tutorial does on Hopper; without it, the loops
flattened). Each variant runs in its own process under a time limit, so a kernel that never
finishes is recorded as `timeout` and the next variant still runs. A row per variant: whether the compiled
TTGIR is warp-specialized (`ttg.warp_specialize`) and its warp count (printed before the launch, so known
even when the launch hangs), then status (ok, timeout, error), relative error against an fp32 matmul,
median ms (`triton.testing.do_bench`) and TFLOP/s, with device and versions. Writes `warp_spec_probe.csv`.

Why: a persistent, warp-specialized grouped GEMM is the design that could take `triton_fused` past 70% of
the floor at 2048 tokens and more (issue 6); Triton's docs name warp specialization as Blackwell-only, yet
its NVIDIA backend runs a Hopper pass on it (sm90).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import triton
import triton.language as tl
from bench_rows import versions, write_rows

SIZE, BLOCK_M, BLOCK_N, BLOCK_K, WARPS, STAGES = 4096, 128, 128, 64, 4, 3
VARIANTS = {  # name -> (persistent tile loop?, warp-specialized?)
    "plain": (False, False), "warp_specialize": (False, True),
    "persistent": (True, False), "persistent_warp_specialize": (True, True),
}


@triton.jit
def matmul_kernel(a_desc, b_desc, c_ptr, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  WS: tl.constexpr):
    """c = a @ b.T, one (BM, BN) tile per program, both operands through TMA; WS: the K loop warp-specialized."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(K, BK), warp_specialize=WS):
        acc = tl.dot(a_desc.load([pid_m * BM, k * BK]), b_desc.load([pid_n * BN, k * BK]).T, acc)
    offs_m, offs_n = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
    tl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16))


@triton.jit
def persistent_matmul_kernel(a_desc, b_desc, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                             BK: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """c = a @ b.T with PROGRAMS programs looping over the tiles, every operand through TMA; WS: the tile loop
    warp-specialized (else flattened with the K loop, so the next tile's loads overlap this one's store)."""
    num_pid_n = tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tl.cdiv(M, BM) * num_pid_n, PROGRAMS, flatten=not WS,
                         warp_specialize=WS):
        pid_m, pid_n = tile // num_pid_n, tile % num_pid_n
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BK)):
            acc = tl.dot(a_desc.load([pid_m * BM, k * BK]), b_desc.load([pid_n * BN, k * BK]).T, acc)
        offs_m, offs_n = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
        tl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16))


def run_variant(persistent: bool, warp_specialize: bool) -> None:
    """Child process: compile, print what was built, launch, check, time; one JSON line per step."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    a_MK = torch.randn(SIZE, SIZE, device="cuda", dtype=torch.bfloat16)
    b_NK = torch.randn(SIZE, SIZE, device="cuda", dtype=torch.bfloat16)
    c_MN = torch.empty(SIZE, SIZE, device="cuda", dtype=torch.bfloat16)
    a_desc = TensorDescriptor.from_tensor(a_MK, [BLOCK_M, BLOCK_K])
    b_desc = TensorDescriptor.from_tensor(b_NK, [BLOCK_N, BLOCK_K])
    if persistent:
        programs = torch.cuda.get_device_properties(0).multi_processor_count
        kernel_fn, grid = persistent_matmul_kernel, (programs,)
        args = (a_desc, b_desc, c_MN, SIZE, SIZE, SIZE, BLOCK_M, BLOCK_N, BLOCK_K, programs, warp_specialize)
    else:
        kernel_fn, grid = matmul_kernel, (SIZE // BLOCK_M, SIZE // BLOCK_N)
        args = (a_desc, b_desc, c_MN, SIZE, SIZE, BLOCK_M, BLOCK_N, BLOCK_K, warp_specialize)
    kernel = kernel_fn.warmup(*args, grid=grid, num_warps=WARPS, num_stages=STAGES)
    print(json.dumps({"ttgir_warp_specialized": "ttg.warp_specialize" in kernel.asm["ttgir"],
                      "warps_built": kernel.metadata.num_warps}), flush=True)
    kernel_fn[grid](*args, num_warps=WARPS, num_stages=STAGES)
    torch.cuda.synchronize()
    ref_MN = a_MK.float() @ b_NK.float().T
    rel_err = float((c_MN.float() - ref_MN).norm() / ref_MN.norm())
    ms = triton.testing.do_bench(lambda: kernel_fn[grid](*args, num_warps=WARPS, num_stages=STAGES))
    print(json.dumps({"rel_err": round(rel_err, 6), "ms": round(ms, 4),
                      "tflops": round(2 * SIZE**3 / ms / 1e9, 1)}), flush=True)


def probe(variant: str, timeout_s: float) -> dict:
    """Run one variant in a child process; its printed fields and a status."""
    cmd = [sys.executable, __file__, "--variant", variant]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        out, status = proc.stdout, "ok" if proc.returncode == 0 else "error"
        why = "" if status == "ok" else (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        status, why = "timeout", f"no result within {timeout_s:g} s (killed)"
    persistent, warp_specialize = VARIANTS[variant]
    row = {"variant": variant, "persistent": persistent, "warp_specialize": warp_specialize, "status": status,
           "why": why}
    for line in out.splitlines():
        if line.startswith("{"):
            row.update(json.loads(line))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--timeout-s", type=float, default=30.0, help="time limit of each variant's process")
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.variant:
        run_variant(*VARIANTS[args.variant])
        return 0
    rows = []
    for variant in VARIANTS:
        rows.append({**probe(variant, args.timeout_s), "size": SIZE, "tile": f"{BLOCK_M}x{BLOCK_N}x{BLOCK_K}",
                     "num_warps": WARPS, "num_stages": STAGES,
                     "capability": "sm%d%d" % torch.cuda.get_device_capability(), **versions()})
        print(rows[-1], flush=True)
    write_rows(rows, args.out, "warp_spec_probe.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
