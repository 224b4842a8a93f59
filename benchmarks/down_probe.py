"""The down GEMM alone at a token count whose config runs Triton tiles: those tiles against the persistent,
warp-specialized down of `ws_grouped` on the same aligned intermediate (notes, "Run 24").

`boundary_probe.py` found the down GEMM of OLMoE at 512 tokens streaming its weights slower than gate/up
(121.8 us for 268 MB). Its Triton tiles run 8 K steps each (I = 1024, BLOCK_K 128), so each tile's pipeline
fill and epilogue weigh on it; a persistent kernel whose producer runs on into the next tile has neither.
Per (model, T), bf16, uniform routing: the plan's own down launch, then each `--entries` down entry (the
`ws_grouped` keys) on the same buffers, each captured in a CUDA graph and replayed (L2 flushed before each,
`moe_lab.kernels.search.gpu_ms`), in alternating order over --rounds. Each ws entry's whole call is checked
against the plan's output first (`max_abs_diff`; both write the same per-pair rows, so the sum should agree
bit for bit). Writes down_probe.csv under --out.

    PYTHONPATH=.:benchmarks python benchmarks/down_probe.py --models olmoe-1b-7b --tokens 512 --out $OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_rows import versions, write_rows
from boundary_probe import Launches, alternating_us, points

from moe_lab.backends.triton_fused import _PLANS, triton_fused_experts
from moe_lab.kernels.configs import get_config
from moe_lab.kernels.ops import current_stream
from moe_lab.kernels.search import WS_SPACE

ENTRIES = [ws["down"] for ws in WS_SPACE] + [
    dict(BLOCK_N=128, BLOCK_K=64, STAGES=5, num_warps=4, GROUP_M=8, PINGPONG=1, EXPERT_GROUPS=1),
    dict(BLOCK_N=128, BLOCK_K=128, STAGES=3, num_warps=4, GROUP_M=8, PINGPONG=1),
    dict(BLOCK_N=64, BLOCK_K=128, STAGES=4, num_warps=4, GROUP_M=8, PINGPONG=1),
    dict(BLOCK_N=256, BLOCK_K=64, STAGES=4, num_warps=8, GROUP_M=8),
]


def ws_down(L: Launches, entry: dict):
    """A callable running `entry` as the warp-specialized down on L's buffers, and its whole call's largest
    difference from L's plan's output."""
    base = L.plan
    cfg = get_config("h100", "bfloat16", base.T, base.E, base.H, base.I, base.K)
    half = bool(cfg.get("HALF_TAIL", 0)) and base.bm >= 128
    cfg = dict(cfg, ws={"BLOCK_M": base.bm, "HALF_TAIL": int(half), "up": WS_SPACE[0]["up"], "down": entry})
    want = triton_fused_experts(L.experts, L.x_TH, L.ids_TK, L.w_TK)
    got = triton_fused_experts(L.experts, L.x_TH, L.ids_TK, L.w_TK, config=cfg)
    key = json.dumps(cfg, sort_keys=True)
    (wp,) = [p for k, p in _PLANS[L.experts].items() if k[-1] == key]
    if not wp.ws:
        raise ValueError(f"down_probe: {entry} does not run warp-specialized here")
    y_PH = torch.empty(base.B * base.bm, base.H, dtype=base.dtype, device=L.x_TH.device)
    box = [base.bm // 2 if half else base.bm]

    def rows(t_RC, cols: int):
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        return TensorDescriptor(t_RC, list(t_RC.shape), [t_RC.stride(0), 1], box + [cols], wp._layout(box + [cols]))

    def run():
        wp.down(current_stream(L.x_TH.device), rows(L.a_PI, entry["BLOCK_K"]),
                wp._ws_descriptor("down", L.w_down, wp.down_tma), rows(y_PH, entry["BLOCK_N"]), L.block_expert_B,
                L.expert_block_E1, L.sorted_P, L.rw_S, L.a_PI, L.pair_row_S, *wp.down_scalars)

    return run, float((got.float() - want.float()).abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="olmoe-1b-7b")
    p.add_argument("--tokens", default="512")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    rows = []
    for model, T, _, L in points(args.models, args.tokens, dev):
        L.align(current_stream(dev))
        L.up(current_stream(dev))
        fns, diffs = {"triton_tiles": lambda: L.down(current_stream(dev))}, {"triton_tiles": 0.0}
        for i, entry in enumerate(ENTRIES):
            try:
                fns[f"ws{i}"], diffs[f"ws{i}"] = ws_down(L, entry)
            except Exception as err:  # noqa: BLE001 - a probe: record and go on
                print(f"{model} T={T} ws{i} {entry}: {type(err).__name__}: {err}", flush=True)
        for name, us in alternating_us(fns, dev, args.rounds, args.reps).items():
            entry = "" if name == "triton_tiles" else json.dumps(ENTRIES[int(name[2:])])
            rows.append(dict(model=model, T=T, variant=name, entry=entry, us=round(us, 2),
                             max_abs_diff=diffs[name], **versions()))
            print(f"{model} T={T} {name} {entry}: {us:.1f} us (diff {diffs[name]})", flush=True)
    write_rows(rows, Path(args.out), "down_probe.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
