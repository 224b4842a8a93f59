"""One GPU run for `triton_fused` and `auto`: check, (optionally) tune, benchmark against transformers.

    PYTHONPATH=. python benchmarks/triton_gpu.py --out $OUT [--tune] [--budget-s 450]

Stages, each guarded by the time budget (what is left undone is logged, never silently dropped):
1. roofline: a 1 GiB device copy and an 8192^3 matmul in the bench's dtype (the floor's two ceilings);
2. check: triton_fused against the float64 reference (relative Frobenius error, bf16 3e-2, fp16 5e-3,
   fp32 1e-4) on unaligned sizes, experts without tokens, a hot expert, T=1, top-k=1, every layout,
   both kernel paths, the real model shapes, and once inside a CUDA graph; output poisoned first;
3. tune (--tune): `moe-lab tune-kernels`' search (`moe_lab.kernels.search`) per model shape and token
   bucket, starting from the package's table; the winners go to `triton_fused.json` (commit it to
   moe_lab/kernels/configs/), then `moe_lab.tune` writes auto's dispatch table `auto_dispatch.csv`
   with those configs in force;
4. bench: triton_fused, auto and transformers' backends (`transformers.integrations.moe` functions on
   the family's own experts module, same weights and inputs) per model and token count, transformers
   under compile none / default / max-autotune-no-cudagraphs / reduce-overhead where the budget allows;
   median by CUDA events with the L2 flushed before each call (by a write, or with --flush read by a read);
   floor = max(hit-expert bytes / copy
   bandwidth, flops / matmul peak); then one CUDA-graph decode step at T=1 per model.
The real shapes of stage 2, and stages 3 and 4, run in --dtype (bfloat16, or float16).
Writes under --out: triton_gpu.log, triton_gpu_check.csv, triton_gpu_bench.csv (+ the tuned files).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from bench_rows import versions, write_rows

from moe_lab import Experts, ExpertsLayout, reference_experts, relative_error, synthetic_routing
from moe_lab.harness.roofline import Roofline, experts_cost, measure_roofline
from moe_lab.harness.roofline import floor_ms as roofline_floor_ms
from moe_lab.shapes import build_experts, build_hf_experts, get_shape
from moe_lab.tune import median_ms as tune_median_ms
from moe_lab.tune import sample_ms

MODELS = ("qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b")
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
COMPILE_TOKENS = (16, 128, 2048, 8192)  # token counts timed under torch.compile
T0 = time.time()
LOG: list[str] = []
DEV = "cuda"  # --dry-run: "cpu" under Triton's interpreter, tiny shapes, to check this script without a GPU
FLUSH = "write"  # how L2 is flushed before each timed call (--flush; moe_lab.tune.median_ms)
DTYPE = torch.bfloat16  # what the real-shape checks, the tune and the bench run in (--dtype)


def log(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    LOG.append(line)


def left(budget: float) -> float:
    return budget - (time.time() - T0)


# ---------------------------------------------------------------------------------------------- timing
def median_ms(fn, reps: int = 20, warmup: int = 2) -> float:
    """Median of CUDA-event timings of `fn`, L2 flushed before each call (moe_lab.tune's timer)."""
    return tune_median_ms(fn, torch.device(DEV), reps=reps, warmup=warmup, flush=FLUSH)


def alternating_median_ms(fns: dict, rounds: int = 4, reps: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median ms of each of `fns`, timed in alternating rounds (a b, b a, a b, ...; `reps` calls each, the samples
    pooled), so that a slow stretch of the machine (clocks down under a long compute-bound run) is shared
    rather than landing on whichever is timed second."""
    samples = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            samples[name] += sample_ms(fns[name], torch.device(DEV), reps=reps, warmup=warmup, flush=FLUSH)
    return {name: float(np.median(v)) for name, v in samples.items()}


def floor_ms(shape, ids_TK: torch.Tensor, roof: Roofline) -> float:
    """The roofline floor of one 16-bit call on this routing (`moe_lab.harness.roofline`)."""
    return roofline_floor_ms(experts_cost(shape, ids_TK, 2), roof)


def inputs(shape, T: int, routing: str = "uniform", seed: int = 0):
    ids_TK, w_TK = synthetic_routing(routing, T, shape.experts, shape.top_k, seed=seed + T, device=DEV)
    x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(seed + T)).to(DEV, DTYPE)
    return x_TH, ids_TK, w_TK


def dtype_name() -> str:
    return str(DTYPE).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------- check
def check(budget: float) -> list[dict]:
    from moe_lab.backends.triton_fused import triton_fused_experts
    from moe_lab.kernels.configs import heuristic_config

    decode = {"path": "decode", "up": {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2},
              "down": {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2}}
    grouped16 = {"path": "grouped", "BLOCK_M": 16,
                 "up": {"BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 4, "num_stages": 3},
                 "down": {"BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 4, "num_stages": 3}}
    grouped128 = heuristic_config(100000, 8, 64, 64, 2)
    layouts = {
        "default": ExpertsLayout(),
        "interleaved": ExpertsLayout(is_concatenated=False),
        "transposed+bias": ExpertsLayout(is_transposed=True, has_bias=True),
        "gpt-oss": ExpertsLayout(is_concatenated=False, is_transposed=True, has_bias=True, gate_fn="clamped_swiglu"),
        "nogate-gelu": ExpertsLayout(has_gate=False, gate_fn="gelu"),
        "relu": ExpertsLayout(gate_fn="relu"),
        "norm": ExpertsLayout(has_post_expert_norm=True),
    }
    cases = []  # (name, E, H, I, K, T, routing, layout, dtype, config)
    for cfg_name, cfg in (("decode", decode), ("grouped16", grouped16), ("grouped128", grouped128), ("tuned", None)):
        if cfg_name in ("decode", "grouped16"):  # every layout, fp16 and fp32 on both kernel paths
            for lname, lay in layouts.items():
                cases.append((f"unaligned/{lname}", 8, 72, 40, 2, 37, "uniform", lay, torch.bfloat16, cfg, cfg_name))
            cases += [
                ("fp16", 8, 136, 88, 2, 50, "uniform", layouts["default"], torch.float16, cfg, cfg_name),
                ("fp32", 8, 136, 88, 2, 50, "uniform", layouts["gpt-oss"], torch.float32, cfg, cfg_name),
            ]
        cases += [
            ("aligned", 16, 256, 128, 4, 64, "uniform", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("empty_experts", 64, 128, 96, 2, 5, "uniform", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("hot_expert", 8, 128, 96, 2, 300, "hot", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("skewed", 32, 128, 96, 4, 700, "skewed", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("T=1", 8, 128, 96, 2, 1, "uniform", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("top1", 8, 128, 96, 1, 33, "uniform", layouts["default"], torch.bfloat16, cfg, cfg_name),
            ("T=0", 8, 128, 96, 2, 0, "uniform", layouts["default"], torch.bfloat16, cfg, cfg_name),
        ]
    cases.append(("many_pairs", 60, 256, 128, 4, 3000, "uniform", layouts["default"], torch.bfloat16, None, "tuned"))
    cases.append(("many_pairs_hot", 60, 256, 128, 4, 3000, "hot", layouts["default"], torch.bfloat16, None, "tuned"))
    rows = []
    for name, E, H, I, K, T, routing, lay, dtype, cfg, cfg_name in cases:
        if left(budget) < 0:
            log(f"check: out of time budget, {name}/{cfg_name} and later cases not run")
            break
        ex = Experts(E, H, I, lay, dtype=dtype, device=DEV, seed=T + E)
        ids, w = synthetic_routing(routing, T, E, K, seed=T + 1, device=DEV)
        x = torch.randn(T, H, generator=torch.Generator().manual_seed(T + 2)).to(DEV, dtype)
        ref = reference_experts(ex, x, ids, w)
        errs = []
        for _ in range(2):  # twice: a moving error is a race
            out = triton_fused_experts(ex, x, ids, w, config=cfg)
            errs.append(relative_error(out, ref) if T else float(out.abs().sum()))
        ok = all(e <= TOLERANCE[dtype] for e in errs) and out.shape == (T, H)
        rows.append(dict(case=name, config=cfg_name, E=E, H=H, I=I, K=K, T=T, routing=routing,
                         dtype=str(dtype).removeprefix("torch."), rel_err=max(errs), ok=ok))
        if not ok:
            log(f"check FAIL {name}/{cfg_name}: errors {errs}")
    # the real shapes (in --dtype), every bucket path, and one CUDA-graph capture
    tol = TOLERANCE[DTYPE]
    for model in MODELS:
        shape = get_shape(model)
        ex = build_experts(model, device=DEV, dtype=DTYPE)
        for T in ((1, 3, 16, 200, 600) if model == MODELS[0] else (1, 16, 200)):
            if left(budget) < 0:
                break
            x, ids, w = inputs(shape, T, routing="hot" if T == 200 else "uniform")
            ref = reference_experts(ex, x, ids, w)
            err = relative_error(triton_fused_experts(ex, x, ids, w), ref)
            rows.append(dict(case=f"{model}", config="tuned", E=shape.experts, H=shape.hidden, I=shape.intermediate,
                             K=shape.top_k, T=T, routing="hot" if T == 200 else "uniform", dtype=dtype_name(),
                             rel_err=err, ok=err <= tol))
        if DEV == "cpu":
            continue
        x, ids, w = inputs(shape, 1)
        g = torch.cuda.CUDAGraph()
        out = triton_fused_experts(ex, x, ids, w)
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            out_g = triton_fused_experts(ex, x, ids, w)
        x2, ids2, w2 = inputs(shape, 1, seed=7)
        x.copy_(x2), ids.copy_(ids2), w.copy_(w2)
        out_g.fill_(float("nan"))
        g.replay()
        err = relative_error(out_g, reference_experts(ex, x, ids, w))
        rows.append(dict(case=f"{model} cuda-graph replay, new inputs", config="tuned", E=shape.experts,
                         H=shape.hidden, I=shape.intermediate, K=shape.top_k, T=1, routing="uniform",
                         dtype=dtype_name(), rel_err=err, ok=err <= tol))
        del ex
    npass = sum(r["ok"] for r in rows)
    log(f"check: {npass}/{len(rows)} passed; worst {dtype_name()} error "
        f"{max((r['rel_err'] for r in rows if r['dtype'] == dtype_name()), default=0):.2e}")
    return rows


# ----------------------------------------------------------------------------------------------- bench
def bench(budget: float, roof: Roofline, compile_modes: bool, autotune_tokens: tuple[int, ...],
          cheap_compile: bool = True, auto_first: bool = False) -> list[dict]:
    from transformers.integrations.moe import batched_mm_experts_forward, grouped_mm_experts_forward

    from moe_lab.backends.auto import choose_backend
    from moe_lab.backends.triton_fused import triton_fused_experts
    from moe_lab.backends.auto import auto_experts

    hf_fns = {"batched_mm": batched_mm_experts_forward, "grouped_mm": grouped_mm_experts_forward}
    rows = []

    def add(model, T, backend, mode, ms, floor, note=""):
        rows.append(dict(model=model, T=T, backend=backend, compile_mode=mode, routing="uniform", dtype=dtype_name(),
                         ms=None if ms is None else round(ms, 5), floor_ms=round(floor, 5),
                         frac=None if not ms else round(floor / ms, 4), note=note, flush=FLUSH, **versions()))

    modules = {}
    for model in MODELS:
        shape = get_shape(model)
        ex = modules[model] = build_hf_experts(model, device="cuda", dtype=DTYPE)  # the family's own module
        N, H, I = 2 * shape.intermediate, shape.hidden, shape.intermediate
        for T in TOKENS:
            if left(budget) < 20:
                log(f"bench {model}: out of time budget at T={T}")
                break
            x, ids, w = inputs(shape, T)
            fl = floor_ms(shape, ids, roof)
            with torch.no_grad():
                ours = {name: (lambda fn=fn: fn(ex, x, ids, w))
                        for name, fn in (("triton_fused", triton_fused_experts), ("auto", auto_experts))}
                ms = alternating_median_ms(dict(reversed(ours.items())) if auto_first else ours)
                for name in ours:
                    note = f"chose {choose_backend(ex, x, ids)}" if name == "auto" else ""
                    add(model, T, name, "none", ms[name], fl, note)
                for hname, hfn in hf_fns.items():
                    gathered_gb = T * shape.top_k * (N * H + I * H) * 2 / 1e9
                    if hname == "batched_mm" and gathered_gb > 8:
                        add(model, T, f"transformers:{hname}", "none", None, fl, f"skip: gathers {gathered_gb:.0f} GB")
                        continue
                    add(model, T, f"transformers:{hname}", "none", median_ms(lambda: hfn(ex, x, ids, w)), fl)
        log(f"bench {model}: eager rows done")
        # one decode step at T=1 captured in a CUDA graph, fresh routing per replay
        x, ids, w = inputs(shape, 1)
        with torch.no_grad():
            triton_fused_experts(ex, x, ids, w)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                triton_fused_experts(ex, x, ids, w)
        pool = [inputs(shape, 1, seed=100 + i) for i in range(50)]
        samples = []
        for i in range(200):
            xi, idi, wi = pool[i % len(pool)]
            x.copy_(xi), ids.copy_(idi), w.copy_(wi)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            g.replay()
            e.record()
            e.synchronize()
            samples.append(s.elapsed_time(e))
        fl = floor_ms(shape, ids, roof)
        add(model, 1, "triton_fused", "cuda-graph", float(np.median(samples[20:])), fl, "one decode step, graph replay")
        log(f"bench {model}: cuda-graph decode T=1 {np.median(samples[20:]) * 1e3:.1f} us (floor {fl * 1e3:.1f} us)")
        del g
    if compile_modes:  # cheap modes for every model first, then the 40-57 s max-autotune compiles, largest T first
        cheap = [("batched_mm", "max-autotune-no-cudagraphs", 1), ("batched_mm", "reduce-overhead", 1)]
        cheap += [("grouped_mm", "default", T) for T in COMPILE_TOKENS]
        cheap += [("batched_mm", "default", 1), ("batched_mm", "reduce-overhead", 4)]
        cheap = [c for c in cheap if c[2] in TOKENS]  # --tokens
        for model in MODELS if cheap_compile else ():
            _bench_compiled(model, get_shape(model), modules[model], hf_fns, budget, roof, add, cheap)
        for T in autotune_tokens:
            for model in MODELS:
                _bench_compiled(model, get_shape(model), modules[model], hf_fns, budget, roof, add,
                                [("grouped_mm", "max-autotune-no-cudagraphs", T)])
    return rows


def _bench_compiled(model, shape, ex, hf_fns, budget, roof, add, plan):
    """transformers' functions under torch.compile, one compile per (backend, mode, T) of `plan` (dynamic=False),
    as budget allows."""
    for hname, mode, T in plan:
        expensive = mode.startswith("max-autotune") and hname == "grouped_mm"
        if left(budget) < (75 if expensive else 25):
            log(f"bench {model}: compiled {hname} {mode} T={T} and later not run (time budget)")
            break
        x, ids, w = inputs(shape, T)
        fl = floor_ms(shape, ids, roof)
        torch._dynamo.reset()
        fn = hf_fns[hname]
        compiled = torch.compile(lambda x_, i_, w_: fn(ex, x_, i_, w_), mode=mode, dynamic=False)
        try:
            t = time.time()
            with torch.no_grad():
                for _ in range(3):
                    compiled(x, ids, w)
                torch.cuda.synchronize()
                compile_s = time.time() - t
                ms = median_ms(lambda: compiled(x, ids, w))
            add(model, T, f"transformers:{hname}", mode, ms, fl, f"compile {compile_s:.1f}s")
        except Exception as err:  # noqa: BLE001
            add(model, T, f"transformers:{hname}", mode, None, fl, f"error: {str(err).splitlines()[0][:150]}")


# ------------------------------------------------------------------------------------------------ tune
def tune(args, out: Path, budget: float) -> None:
    """Tile configs (`moe_lab.kernels.search`, starting from the package's table) into out/triton_fused.json,
    then auto's dispatch table into out/auto_dispatch.csv with those configs in force."""
    from moe_lab import tune as auto_tune
    from moe_lab.kernels import configs, search

    tuned = out / "triton_fused.json"
    shutil.copyfile(configs.config_path(), tuned)
    os.environ[configs.CONFIG_ENV] = str(tuned)
    table, rows = search.search(args.tune_models.split(","), list(TOKENS), DTYPE, DEV, wide=args.wide,
                                budget_s=budget * args.tune_share - (time.time() - T0), log=log)
    search.merge_table(tuned, table)
    search.write_rows(out / "tune_candidates.csv", rows)
    os.environ["MOE_LAB_DISPATCH_TABLE"] = str(out / "auto_dispatch.csv")
    if left(budget * (args.tune_share + 0.12)) > 0:
        auto_tune.tune(list(MODELS), list(TOKENS), DTYPE, DEV, out=out / "auto_dispatch.csv", reps=10, log=log)


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    global DEV, MODELS, TOKENS, FLUSH, DTYPE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--tune", action="store_true", help="tune tile configs and auto's table first")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting new work after this many seconds")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip transformers under torch.compile")
    p.add_argument("--models", default=",".join(MODELS), help="model shapes benchmarked")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts benchmarked (and compiled)")
    p.add_argument("--flush", default="write", choices=["write", "read"],
                   help="L2 flushed before each timed call by writing a buffer (L2 left dirty: as every timer in "
                        "moe_lab and triton's do_bench) or by reading one (L2 left clean)")
    p.add_argument("--no-cheap-compile", dest="cheap_compile", action="store_false",
                   help="leave out the default / reduce-overhead / batched_mm compiles (max-autotune ones only)")
    p.add_argument("--autotune-tokens", default="8192",
                   help="token counts where transformers' grouped_mm is timed under max-autotune-no-cudagraphs "
                        "(40-57 s of autotuning each), every model, largest first")
    p.add_argument("--tune-models", default=",".join(MODELS))
    p.add_argument("--tune-share", type=float, default=0.55, help="tuning stops at this fraction of the budget")
    p.add_argument("--auto-first", action="store_true",
                   help="start the alternating rounds with auto (default: with triton_fused)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness stage (the pytest file covers it)")
    p.add_argument("--wide", action="store_true",
                   help="with --tune: also the wide space where pairs per expert are many")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                   help="what the tune and bench stages run in")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: checks the script")
    args = p.parse_args(argv)
    MODELS, TOKENS, FLUSH = tuple(args.models.split(",")), tuple(int(t) for t in args.tokens.split(",")), args.flush
    DTYPE = getattr(torch, args.dtype)
    if args.dry_run:
        DEV, MODELS, TOKENS = "cpu", ("tiny",), (1, 8, 64)
        args.tune_models, args.no_bench = "tiny", True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s
    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA device: this script runs on the GPU machine (see tests/test_triton_fused.py for the CPU check)")
        return 2
    import transformers
    import triton

    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    log(f"device {device}, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}, python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    status = 0
    try:
        roof = measure_roofline(DEV, DTYPE, timer=lambda fn: median_ms(fn, reps=10))
        log(f"roofline: copy {roof.bandwidth_gbps:.0f} GB/s, {dtype_name()} matmul {roof.peak_tflops:.0f} TFLOP/s")
        if not args.no_check:
            check_rows = check(budget * (0.12 if args.tune else 0.3))
            write_rows(check_rows, out, "triton_gpu_check.csv")
            if not all(r["ok"] for r in check_rows):
                status = 1
        if args.tune:
            tune(args, out, budget)
        if not args.no_bench and left(budget) > 30:
            autotune = tuple(sorted((int(t) for t in args.autotune_tokens.split(",") if t), reverse=True))
            rows = bench(budget, roof, compile_modes=not args.no_compile, autotune_tokens=autotune,
                         cheap_compile=args.cheap_compile, auto_first=args.auto_first)
            write_rows(rows, out, "triton_gpu_bench.csv")
            _summary(rows)
    except Exception:  # noqa: BLE001
        log("ERROR\n" + traceback.format_exc())
        status = 1
    finally:
        (out / "triton_gpu.log").write_text("\n".join(LOG) + "\n")
    return status


def _summary(rows: list[dict]) -> None:
    """Per model and T: triton_fused, auto, best transformers (mode), fractions of the floor."""
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["T"]), []).append(r)
    log(f"{'model':18s} {'T':>6s} {'floor':>8s} {'fused':>8s} {'frac':>5s} {'auto':>8s} {'best transformers':>36s}")
    for (model, T), rs in by.items():
        get = {(r["backend"], r["compile_mode"]): r["ms"] for r in rs}
        fused, auto = get.get(("triton_fused", "none")), get.get(("auto", "none"))
        hf = [(r["ms"], f"{r['backend'].split(':')[1]}/{r['compile_mode']}") for r in rs
              if r["backend"].startswith("transformers") and r["ms"]]
        best = min(hf) if hf else (math.nan, "-")
        fl = rs[0]["floor_ms"]
        if fused is None:
            continue
        log(f"{model:18s} {T:6d} {fl:8.4f} {fused:8.4f} {fl / fused:5.2f} {auto or math.nan:8.4f} "
            f"{best[0]:8.4f} {best[1]:>27s}")


if __name__ == "__main__":
    sys.exit(main())
