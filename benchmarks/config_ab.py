"""`triton_fused`'s tuned config against the same config with one top-level key set otherwise (an A/B).

    PYTHONPATH=. python benchmarks/config_ab.py --key PDL --a 1 --b 0 --out $OUT [--models ...] [--tokens ...]
    PYTHONPATH=. python benchmarks/config_ab.py --name WS --patch '{"HALF_TAIL": 0, "down": {"WARP_SPEC": 1}}' ...
    PYTHONPATH=. python benchmarks/config_ab.py --dtype float16 --b-heuristic --name fp16_tiles ...

Per (model, T): the tuned config with `key` = a and with `key` = b (e.g. PDL, programmatic dependent launch,
`moe_lab.kernels.pdl`; HALF_TAIL, half-height last row blocks; EVICT_FIRST, the decode path's evict-first
weight loads; both in `moe_lab.kernels.fused_moe`), bf16 (or --dtype), uniform routing, timed as the bench times
(`moe_lab.tune.median_ms`: CUDA events, L2 flushed before each call) and as one CUDA-graph replay
(`moe_lab.kernels.search.gpu_ms`). The two are timed in alternating order over `--rounds` rounds (a/b, then
b/a, ...), since whichever of two runs of the same kernels is timed second can come out slower; each
reported time is the median over rounds. Token counts whose tuned config has no use for the key are left
out with `--grouped-only` (HALF_TAIL: the decode points) or `--decode-only` (EVICT_FIRST: the grouped ones), or
`--needs KEY`: those whose tuned config has no KEY (`--needs ws --patch '{"ws": {"HALF_TAIL": 1}}'`).
The outputs of both are compared first: `same_bits` records whether they are equal bit for bit, `rel_err`
their relative difference. `--patch` (JSON) is merged into variant b, a dict into the config's dict of the
same name at every depth (so `{"down": {"num_warps": 4}}` changes one tile field, `{"ws": {"up": {"STAGES":
3}}}` one field of the warp-specialized entry): any change, not only one top-level key. With `--b-heuristic`
variant b is `configs.heuristic_config` instead, what a call runs where the table has nothing for it.
Writes `<name>.csv` under --out (name: --name, else the key).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from bench_rows import versions, write_rows

from moe_lab import synthetic_routing
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.kernels.configs import get_config, heuristic_config
from moe_lab.kernels.search import gpu_ms, precompile
from moe_lab.shapes import build_hf_experts, get_shape
from moe_lab.tune import median_ms

MODELS = ("qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b")
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def patched(config: dict, patch: dict) -> dict:
    """`config` with `patch` merged in at every depth: a dict value into the config's dict of the same key
    (`{"ws": {"up": {"STAGES": 3}}}` changes one field of a "ws" entry), others replaced."""
    out = dict(config)
    for k, v in patch.items():
        out[k] = patched(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"), help="writes <key>.csv here (<key>_read.csv "
                                                                       "with --flush read)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--key", help="top-level config key, e.g. PDL or HALF_TAIL")
    p.add_argument("--a", type=int, default=1, help="the key's value in variant a")
    p.add_argument("--b", type=int, default=0, help="the key's value in variant b")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--grouped-only", action="store_true", help="only token counts whose tuned config is grouped")
    only.add_argument("--decode-only", action="store_true", help="only token counts whose tuned config is decode")
    p.add_argument("--needs", default="", help="only token counts whose tuned config has this key (e.g. ws)")
    p.add_argument("--patch", type=json.loads, default={}, help="JSON merged into variant b (see above)")
    p.add_argument("--name", help="the CSV's name (default: the key)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--b-heuristic", action="store_true", help="variant b: the heuristic config, not the tuned one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--flush", default="write", choices=["write", "read"],
                   help="how L2 is flushed before each timed call (moe_lab.tune.median_ms): write, as every "
                        "timer in moe_lab (L2 left dirty), or read (L2 left clean)")
    p.add_argument("--budget-s", type=float, default=500.0, help="stop starting new points after this many seconds")
    args = p.parse_args(argv)
    if not (args.key or args.patch or args.b_heuristic) or not (args.key or args.name):
        p.error("give --key, or --patch or --b-heuristic with --name")
    if args.key and args.b_heuristic:
        p.error("--b-heuristic replaces variant b: it takes no --key")
    dtype = getattr(torch, args.dtype)
    t0, dev, rows = time.time(), torch.device("cuda"), []
    for model in args.models.split(","):
        shape = get_shape(model)
        experts = build_hf_experts(model, device=dev, dtype=dtype)
        tokens = [int(t) for t in args.tokens.split(",")]
        points = []
        for T in tokens:
            ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device=dev)
            x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to(dev, dtype)
            tuned = get_config("h100", args.dtype, T, shape.experts, shape.hidden, shape.intermediate, shape.top_k)
            if (args.grouped_only and tuned["path"] != "grouped") or (args.decode_only and tuned["path"] != "decode"):
                continue
            a, b = ({**tuned, args.key: args.a}, {**tuned, args.key: args.b}) if args.key else (tuned, tuned)
            if args.b_heuristic:
                b = heuristic_config(T, shape.experts, shape.hidden, shape.intermediate, shape.top_k)
            if args.needs and args.needs not in tuned:
                continue
            points.append((T, (x_TH, ids_TK, w_TK), {"a": a, "b": patched(b, args.patch)}))
        with torch.no_grad():  # every kernel built once, in threads, before anything is timed
            for _, inputs, cfgs in points:
                precompile(experts, inputs, list(cfgs.values()))
        for T, inputs, cfgs in points:
            if time.time() - t0 > args.budget_s:
                print(f"{model} T={T} and later: out of time budget", flush=True)
                break
            times = {(v, how): [] for v in "ab" for how in ("events", "graph")}
            with torch.no_grad():
                a_TH = triton_fused_experts(experts, *inputs, config=cfgs["a"])
                b_TH = triton_fused_experts(experts, *inputs, config=cfgs["b"])
                same = bool(torch.equal(a_TH, b_TH))
                rel_err = float((a_TH.float() - b_TH.float()).norm() / b_TH.float().norm().clamp_min(1e-30))
                for r in range(args.rounds):
                    for v in "ab" if r % 2 == 0 else "ba":
                        def call(cfg=cfgs[v], ex=experts, inp=inputs):
                            triton_fused_experts(ex, *inp, config=cfg)
                        times[(v, "events")].append(median_ms(call, dev, flush=args.flush) * 1e3)
                        times[(v, "graph")].append(gpu_ms(call, dev, reps=20, flush=args.flush) * 1e3)
            us = {k: float(np.median(v)) for k, v in times.items()}
            for how in ("events", "graph"):
                rows.append(dict(model=model, T=T, timing=how, key=args.key or "", a=args.a if args.key else "",
                                 b=args.b if args.key else "",
                                 patch=json.dumps(args.patch) if args.patch else "",
                                 b_config="heuristic" if args.b_heuristic else "tuned", dtype=args.dtype,
                                 a_us=round(us[("a", how)], 2), b_us=round(us[("b", how)], 2),
                                 speedup_a=round(us[("b", how)] / us[("a", how)], 4), same_bits=same,
                                 rel_err=round(rel_err, 6), block_m=cfgs["a"].get("BLOCK_M"), rounds=args.rounds,
                                 flush=args.flush, **versions()))
                print(rows[-1], flush=True)
            name = (args.name or args.key) + ("_read.csv" if args.flush == "read" else ".csv")
            write_rows(rows, args.out, name)  # every point: a timeout keeps the rest
        del experts
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
