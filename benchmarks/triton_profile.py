"""Where `triton_fused`'s time goes on the GPU: device time per kernel, beside the libraries' GEMMs on the same work.

    PYTHONPATH=. python benchmarks/triton_profile.py --out $OUT [--models qwen1.5-moe-a2.7b] [--tokens 1,512,8192]

Per model and token count (bf16, uniform routing, the config table in force): every kernel of one call
from torch.profiler (mean device time over --reps calls, L2 flushed before each), with the useful work
of the two GEMMs (flops of the real pairs, no padding; bytes of the experts hit) as TFLOP/s and GB/s;
the whole call as a CUDA-graph replay (GPU time, no host), end to end (host included), and as a replay
on balanced routing (every expert T*K/E pairs: no expert longer than the mean). From `--compare-tokens`
on, our two GEMMs on balanced routing too, and the same two products with no gather and no epilogue:
- torch's grouped GEMM (`torch._grouped_mm`, CUTLASS) on the tokens already sorted, this routing's groups;
- cuBLAS's batched GEMM (`torch.bmm`) on balanced groups, ceil(T*K/E') rows for each of the E' = min(E, T*K)
  experts a balanced routing hits: the dense best case, no ragged groups at all;
- the same balanced products by a plain Triton batched GEMM with both operands through TMA
  (`benchmarks/dense_tma_gemm.py`), once per tile of its `TILES` (a row each; the summary takes the fastest
  per product): what Triton 3.6 itself reaches there without warp specialization;
- and by a persistent, warp-specialized Gluon batched GEMM (`benchmarks/ws_gemm.py`), per tile likewise.
Each point's floor (`moe_lab.harness.roofline`: bytes of the experts hit / copy bandwidth, flops / matmul
peak, measured as `benchmarks/triton_gpu.py` does: L2 flushed before each of 10 calls) is on every row,
for this routing and for the balanced one (which hits min(E, T*K) experts: more than uniform routing at
small T); a balanced time is compared with the balanced floor. Writes under --out
`triton_profile.csv` (one row per kernel or call), `gemm_ceiling.csv` (per point: the whole call and the
two GEMMs of each of ours, torch's and cuBLAS's, with their fractions of the floor) and `triton_profile.log`.
Legend as in `moe_lab.kernels.fused_moe`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_rows import versions, write_rows

from moe_lab.backends.common import down_weight_EIH, up_weight_EHN
from moe_lab.backends.grouped_gemm import grouped_mm
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.devices import device_kind
from moe_lab.harness.roofline import experts_cost, floor_ms, measure_roofline
from moe_lab.kernels.configs import get_config, shape_key
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape
from moe_lab.tune import FLUSH_BYTES, median_ms


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


def balanced_gemms(experts, S: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The two products over balanced groups, as (activations, weights, output) for `torch.bmm`: ceil(S / E')
    rows for each of the E' = min(E, S) experts hit, random activations."""
    w_up_EHN, w_down_EIH = up_weight_EHN(experts), down_weight_EIH(experts)
    hit = min(w_up_EHN.shape[0], S)
    M = -(-S // hit)
    make = lambda *size: torch.randn(*size, device=w_up_EHN.device, dtype=w_up_EHN.dtype)  # noqa: E731
    return [(make(hit, M, w.shape[1]), w[:hit], make(hit, M, w.shape[2])) for w in (w_up_EHN, w_down_EIH)]


def profile_point(model: str, T: int, reps: int, compare: bool, roof, log) -> list[dict]:
    shape = get_shape(model)
    E, H, I, K = shape.experts, shape.hidden, shape.intermediate, shape.top_k
    N = 2 * I if shape.layout.has_gate else I
    experts = build_experts(model, device="cuda", dtype=torch.bfloat16)
    ids_TK, w_TK = synthetic_routing("uniform", T, E, K, seed=T, device="cuda")
    x_TH = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to("cuda", torch.bfloat16)
    S, hit = T * K, int(torch.unique(ids_TK).numel())
    config = get_config(device_kind(x_TH.device), "bfloat16", T, E, H, I, K)
    ids_bal_TK, w_bal_TK = synthetic_routing("balanced", T, E, K, seed=T, device="cuda")
    floor_us, floor_balanced_us = (floor_ms(experts_cost(shape, ids, 2), roof) * 1e3 for ids in (ids_TK, ids_bal_TK))
    gemm_work = {  # kernel-name fragment -> (useful flops, bytes of the experts hit + activations)
        "_gate_up": (2 * S * H * N, 2 * (hit * N * H + T * H + S * I)),
        "_down": (2 * S * I * H, 2 * (hit * H * I + S * I + S * H)),
    }
    # the warp-specialized GEMMs (a config's "ws" entry) are one kernel launched twice: their times add up
    gemm_work["_ws_grouped"] = tuple(a + b for a, b in zip(gemm_work["_gate_up"], gemm_work["_down"]))
    base = dict(model=model, T=T, shape=shape_key(E, H, I, K), path=config["path"], config=str(config),
                floor_us=round(floor_us, 2), floor_balanced_us=round(floor_balanced_us, 2),
                **versions())
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
        call_bal = lambda: triton_fused_experts(experts, x_TH, ids_bal_TK, w_bal_TK)  # noqa: E731
        add("whole call, balanced routing, CUDA-graph replay", gpu_ms(call_bal, x_TH.device) * 1e3)
        if compare:
            for name, us in kernel_times_us(call_bal, reps).items():
                work = next((w for frag, w in gemm_work.items() if frag in name), None)
                if work:
                    add(f"{BALANCED}{name}", us, work[0])
            x_SH, offs_E, a_SI = sorted_problem(experts, x_TH, ids_TK)
            w_up, w_down = up_weight_EHN(experts), down_weight_EIH(experts)
            for what, fn, frag in (("gate/up", lambda: grouped_mm(x_SH, w_up, offs_E), "_gate_up"),
                                   ("down", lambda: grouped_mm(a_SI, w_down, offs_E), "_down")):
                add(f"torch._grouped_mm {what}, tokens pre-sorted", median_ms(fn, x_TH.device) * 1e3,
                    *gemm_work[frag])
            products = balanced_gemms(experts, S)
            bmm = lambda: [torch.bmm(a, w, out=out) for a, w, out in products]  # noqa: E731
            add("cuBLAS bmm gate/up + down, balanced groups", median_ms(bmm, x_TH.device) * 1e3,
                gemm_work["_gate_up"][0] + gemm_work["_down"][0])
            for what, frag, (a, w, out) in zip(("gate/up", "down"), ("_gate_up", "_down"), products):
                for name, module in ((DENSE, "dense_tma_gemm"), (GLUON, "ws_gemm")):
                    for tile, us in tile_times_us(module, a, w, out, log).items():
                        add(f"{name} {what}, balanced groups, tile {tile}", us, gemm_work[frag][0])
    return rows


DENSE = "Triton TMA bmm"
GLUON = "Gluon WS bmm"  # benchmarks/ws_gemm.py: persistent, warp-specialized
BALANCED = "balanced routing: "  # our kernels' rows on balanced routing
OURS = ("_gate_up", "_down", "_ws_grouped")  # our GEMM kernels' names


def tile_times_us(module: str, a_EMK, w_EKN, out_EMN, log) -> dict[str, float]:
    """A benchmarks module's batched GEMM (`dense_tma_gemm.dense_bmm` or `ws_gemm.ws_bmm`) on one balanced
    product, per tile of its TILES (name -> us); its output checked against cuBLAS's first (a tile that fails
    to build or to match is logged and left out)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    mod = __import__(module)
    bmm = mod.dense_bmm if module == "dense_tma_gemm" else mod.ws_bmm
    ref_EMN = torch.bmm(a_EMK, w_EKN).float()
    times = {}
    for tile in mod.TILES:
        name = "x".join(map(str, tile[:3])) + " " + " ".join(f"{k}{v}" for k, v in zip(
            ("w", "s") if module == "dense_tma_gemm" else ("s", "w"), tile[3:]))
        try:
            rel_err = float((bmm(a_EMK, w_EKN, out_EMN, tile).float() - ref_EMN).norm() / ref_EMN.norm())
        except Exception as err:  # noqa: BLE001 (e.g. a tile larger than shared memory: the others still run)
            log(f"  {module} tile {name}: {type(err).__name__}: {str(err)[:160]}")
            continue
        if rel_err > 1e-2:
            log(f"  {module} tile {name}: relative error {rel_err:.2e} against cuBLAS, left out")
            continue
        times[name] = median_ms(lambda: bmm(a_EMK, w_EKN, out_EMN, tile), a_EMK.device) * 1e3
    return times


def ceiling_rows(rows: list[dict]) -> list[dict]:
    """Per (model, T): the floors, our whole call, and the two GEMMs alone by us, torch and cuBLAS, in us and as
    fractions of the floor of their routing (floor / time)."""
    out = []
    for (model, T), group in _by_point(rows).items():
        us = lambda pred: sum(r["us"] for r in group if pred(r["kernel"])) or None  # noqa: E731
        row = dict(model=model, T=T, floor_us=group[0]["floor_us"], floor_balanced_us=group[0]["floor_balanced_us"],
                   whole_call_us=us(lambda k: k == "whole call, CUDA-graph replay"),
                   whole_call_balanced_us=us(lambda k: k.startswith("whole call, balanced")),
                   ours_gemms_us=us(lambda k: k.startswith(OURS)),
                   ours_gemms_balanced_us=us(lambda k: k.startswith(tuple(BALANCED + o for o in OURS))),
                   torch_grouped_mm_gemms_us=us(lambda k: k.startswith("torch._grouped_mm")),
                   cublas_bmm_balanced_us=us(lambda k: k.startswith("cuBLAS bmm")),
                   triton_tma_bmm_balanced_us=_fastest_tiles_us(group, DENSE),
                   gluon_ws_bmm_balanced_us=_fastest_tiles_us(group, GLUON))
        for key in [k for k in row if k.endswith("_us") and not k.startswith("floor")]:
            floor = row["floor_balanced_us" if "balanced" in key else "floor_us"]
            row[key.removesuffix("_us") + "_frac"] = round(floor / row[key], 3) if row[key] else None
        out.append(dict(row, device=group[0]["device"], torch=group[0]["torch"], triton=group[0]["triton"]))
    return out


def _fastest_tiles_us(group: list[dict], prefix: str) -> float | None:
    """A benchmark GEMM's time at one point (rows named from `prefix`): its fastest tile on each of the two
    products, summed."""
    best: dict[str, float] = {}
    for r in group:
        if r["kernel"].startswith(prefix):
            product = r["kernel"].split(",")[0]
            best[product] = min(best.get(product, float("inf")), r["us"])
    return round(sum(best.values()), 2) if len(best) == 2 else None


def _by_point(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["model"], r["T"])].append(r)
    return out


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
    roof = measure_roofline("cuda", torch.bfloat16, timer=lambda fn: median_ms(fn, torch.device("cuda"), reps=10))
    log(f"roofline: copy {roof.bandwidth_gbps:.0f} GB/s, bf16 matmul {roof.peak_tflops:.0f} TFLOP/s ({roof.method})")
    rows = []
    for model in args.models.split(","):
        for T in map(int, args.tokens.split(",")):
            rows += profile_point(model, T, args.reps, T >= args.compare_tokens, roof, log)
            torch.cuda.empty_cache()  # the point's tensors are gone with its frame
    write_rows(rows, out, "triton_profile.csv")
    ceiling = ceiling_rows(rows)
    write_rows(ceiling, out, "gemm_ceiling.csv")
    for c in ceiling:
        log(f"{c['model']} T={c['T']}: floor {c['floor_us']:.1f} us; fraction of it: whole call "
            f"{c['whole_call_frac']}, balanced {c['whole_call_balanced_frac']}; GEMMs alone: ours "
            f"{c['ours_gemms_frac']}, balanced {c['ours_gemms_balanced_frac']}, torch "
            f"{c['torch_grouped_mm_gemms_frac']}, "
            f"cuBLAS bmm balanced {c['cublas_bmm_balanced_frac']}, Triton TMA bmm balanced "
            f"{c['triton_tma_bmm_balanced_frac']}, Gluon WS bmm balanced {c['gluon_ws_bmm_balanced_frac']}")
    (out / "triton_profile.log").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
