"""`moe-lab tune-kernels`: search `triton_fused`'s tile configs per token bucket on this device and merge
the winners into the config file that `configs.get_config` reads (see `configs.config_path`).

Per model shape and token count T (its bucket), a coordinate search over a fixed candidate space:
the decode path (few pairs: gate/up candidates with one down, then every down with the best gate/up),
and per BLOCK_M that suits the pairs per expert, the gate/up candidates (two dots and one dot) with one
down, then every down with the best gate/up. The config in force before the search (tuned or heuristic)
competes too, so a search never makes a bucket slower than it measured. `wide` adds a larger space for
the matmul-bound buckets (BLOCK_M 64 to 256); on GPUs with TMA (sm90 on), each BLOCK_M's best tiles
are timed again with the weights loaded through TMA descriptors, then the best of those with the
activations through TMA too (tokens gathered into the aligned order first); last, each BLOCK_M's best (from 32
on) with its experts' last row blocks run as half-height tiles where they fit (`HALF_TAIL`), and the best
decode config with its weights' other L2 policy (`EVICT_FIRST`, `configs.decode_evicts_first`), the best grouped
config with its temporaries kept in L2 (`TEMPS_L2`), then the best of all with down run in two parts of the row
blocks (`SPLIT`, `ready`), then (GPUs with TMA, where gate/up's weight loads without it) the best with
gate/up's first wave prefetching `W_PREFETCH_SPACE` lines of its weight rows during the alignment, then (with
TEMPS_L2) the best with the top-k sum's tile at 4 warps (`SUM`); on an sm90 GPU,
the best grouped config with each of `WS_SPACE` as its `"ws"` entry, whole-height and with half-height last
blocks, then the best of those with expert-aligned groups of row blocks (`EXPERT_GROUPS`) in one GEMM or both,
then the best with gate/up's two weight tiles as one wgmma (`ONE_MMA`, a concatenated gate), then the best with
up to 8 MiB of the token rows kept in L2 by gate/up (`X_L2_LAST`), and with `wide` a coordinate search around
the best of those (`WS_KNOBS`: half-height last blocks, down's tile, each GEMM's GROUP_M and STAGES)
(the warp-specialized GEMMs, `ws_grouped`; `ws_only` times just those on top of the config in force).
Before it is timed, each candidate's output is checked against moe_lab's grouped_mm backend on the same
inputs; one that differs by more than the dtype's tolerance is logged and never chosen. Every candidate is
timed as the whole experts call: on CUDA captured in a CUDA graph, replays timed by CUDA events with the L2
flushed before each (GPU time, no host overhead); elsewhere (Triton's interpreter, for tests) by wall clock.
Candidates compile first, in threads; one that does not fit (too much shared memory) is logged and skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

TILE_KEYS = ("BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
DECODE_MAX_PAIRS = 128  # the decode path competes up to this many (token, expert) pairs
# decode tiles: (BLOCK_N, BLOCK_K, num_warps), num_stages 2
# (a BLOCK_K of 1024 to 2048 takes a whole row of a real shape in one or two unrolled steps: all loads in flight)
DECODE_UP = [(4, 512, 4), (8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 256, 8), (4, 1024, 4),
             (4, 2048, 8), (2, 2048, 4), (8, 1024, 8)]
DECODE_DOWN = [(4, 512, 4), (8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 512, 8), (4, 256, 2), (4, 1024, 4),
               (2, 1024, 4), (8, 1024, 8)]
# grouped tiles per BLOCK_M: (gate/up candidates, down candidates), each (BLOCK_N, BLOCK_K, GROUP_M, warps, stages);
# every gate/up candidate runs with two dots and with one dot (ONE_DOT 0 and 1)
GROUPED = {
    16: ([(64, 128, 1, 4, 4), (128, 128, 1, 4, 3), (64, 256, 1, 4, 3), (32, 256, 1, 4, 4)],
         [(64, 128, 1, 4, 4), (128, 128, 1, 4, 3), (64, 256, 1, 4, 3), (128, 64, 1, 4, 5)]),
    32: ([(64, 128, 4, 4, 4), (128, 64, 4, 4, 4), (64, 64, 4, 4, 5)],
         [(128, 64, 4, 4, 4), (64, 128, 4, 4, 4), (128, 128, 4, 8, 3)]),
    64: ([(64, 64, 8, 4, 4), (128, 64, 8, 8, 3), (64, 128, 8, 4, 3)],
         [(128, 64, 8, 4, 4), (128, 64, 8, 8, 3), (256, 64, 8, 8, 3), (64, 128, 8, 4, 3)]),
    128: ([(64, 64, 8, 4, 4), (64, 128, 8, 8, 3), (128, 64, 8, 8, 3), (64, 64, 16, 8, 4)],
          [(128, 64, 8, 8, 4), (128, 128, 8, 8, 3), (256, 64, 8, 8, 3), (64, 128, 8, 8, 4)]),
}
# the wide space for many pairs per expert: gate/up candidates carry their ONE_DOT as a sixth field
GROUPED_WIDE = {
    64: ([(64, 64, 8, 4, 4, 1), (64, 64, 8, 4, 4, 0), (64, 128, 8, 8, 3, 1), (64, 64, 16, 4, 3, 1),
          (128, 64, 8, 8, 3, 0), (128, 64, 8, 4, 3, 0)],
         [(64, 128, 8, 4, 4), (64, 256, 8, 8, 3), (128, 128, 8, 8, 3)]),
    128: ([(64, 64, 8, 4, 4, 0), (64, 64, 8, 4, 3, 0), (64, 64, 16, 4, 4, 0), (64, 64, 4, 4, 4, 0),
           (64, 128, 8, 4, 3, 0), (128, 64, 8, 8, 3, 0), (64, 64, 8, 8, 4, 0), (32, 128, 8, 4, 4, 0),
           (32, 64, 8, 4, 4, 1), (64, 64, 8, 8, 4, 1), (64, 64, 8, 4, 3, 1)],
          [(256, 64, 8, 8, 3), (64, 128, 8, 4, 4), (128, 128, 8, 8, 3), (256, 64, 16, 8, 3), (128, 64, 8, 4, 4),
           (256, 64, 4, 8, 3), (256, 64, 8, 8, 4)]),
    256: ([(64, 64, 8, 8, 3, 0), (32, 64, 8, 8, 4, 0)], [(64, 128, 8, 8, 3), (64, 64, 8, 8, 4)]),
}
WIDE_MIN_PAIRS_PER_EXPERT = 64  # the wide space applies from here on
# a candidate's relative error against grouped_mm above this is a wrong kernel, not rounding
RESULT_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}


def decode_config(up: tuple, down: tuple) -> dict:
    return {"path": "decode", "up": {"BLOCK_N": up[0], "BLOCK_K": up[1], "num_warps": up[2], "num_stages": 2},
            "down": {"BLOCK_N": down[0], "BLOCK_K": down[1], "num_warps": down[2], "num_stages": 2}}


def grouped_config(block_m: int, up: tuple, down: tuple, tma: tuple[int, int] = (0, 0),
                   a_tma: tuple[int, int] = (0, 0)) -> dict:
    """`up` is (BLOCK_N, BLOCK_K, GROUP_M, warps, stages, ONE_DOT), `down` the same without ONE_DOT; `tma`
    says which weights (gate/up, down) load through TMA descriptors, `a_tma` which activations (the tokens
    gathered into the aligned order, the intermediate)."""
    cfg = {"path": "grouped", "BLOCK_M": block_m, "up": {**dict(zip(TILE_KEYS, up[:5])), "ONE_DOT": up[5]},
           "down": dict(zip(TILE_KEYS, down))}
    for side, on, on_a in zip(("up", "down"), tma, a_tma):
        if on:
            cfg[side]["TMA"] = 1
        if on_a:
            cfg[side]["A_TMA"] = 1
    return cfg


def grouped_space(S: int, E: int, wide: bool = False) -> dict[int, tuple[list[tuple], list[tuple]]]:
    """BLOCK_M -> (gate/up candidates with ONE_DOT, down candidates) worth timing for S pairs over E experts:
    no BLOCK_M far above the pairs per expert (padding) or far below it (weights re-read per row block)."""
    per_expert = S / E
    space = {bm: ([u + (od,) for u in ups for od in (0, 1)], list(downs)) for bm, (ups, downs) in GROUPED.items()
             if not (bm > 16 and per_expert < bm / 4) and not (bm < 64 and per_expert > 8 * bm)}
    if wide and per_expert >= WIDE_MIN_PAIRS_PER_EXPERT:
        for bm, (ups, downs) in GROUPED_WIDE.items():
            if bm == 256 and per_expert < 256 or bm == 64 and per_expert > 1024:
                continue
            have_ups, have_downs = space.setdefault(bm, ([], []))
            have_ups += [u for u in ups if u not in have_ups]
            have_downs += [d for d in downs if d not in have_downs]
    return space


def candidates(S: int, E: int, wide: bool = False) -> list[dict]:
    """Every config the search may time for S pairs over E experts."""
    out = [decode_config(u, d) for u in DECODE_UP for d in DECODE_DOWN] if S <= DECODE_MAX_PAIRS else []
    for bm, (ups, downs) in grouped_space(S, E, wide).items():
        out += [grouped_config(bm, u, d) for u in ups for d in downs]
    return out


def gpu_ms(fn, device: torch.device, reps: int = 10, flush: str = "write") -> float:
    """Time of one call of `fn`: on CUDA the call captured in a CUDA graph and its replays timed (GPU time,
    L2 flushed before each, as `moe_lab.tune.median_ms`'s `flush` says); elsewhere the median wall clock."""
    from moe_lab.tune import median_ms

    if device.type != "cuda":
        return median_ms(fn, device, reps=reps, warmup=1)
    fn()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    ms = median_ms(graph.replay, device, reps=reps, warmup=1, flush=flush)
    del graph
    return ms


def _fit_block_k(tile: tuple, k_size: int) -> tuple:
    """`tile` (BLOCK_N, BLOCK_K, ...) with BLOCK_K halved until it divides `k_size` (down to 16)."""
    block_k = tile[1]
    while k_size % block_k and block_k > 16:
        block_k //= 2
    return (tile[0], block_k) + tuple(tile[2:])


def _config_key(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def precompile(experts, inputs: tuple, configs: list[dict], threads: int = 8) -> None:
    """Build every config's kernels once, in threads (ptxas runs outside the GIL); failures show when timed."""
    from moe_lab.backends.triton_fused import triton_fused_experts

    def build(cfg):
        try:
            triton_fused_experts(experts, *inputs, config=cfg)
        except Exception:  # noqa: BLE001  (reported when the config is timed)
            pass

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(build, configs))


def search_bucket(experts, inputs: tuple, incumbent: dict, wide: bool, reps: int, log,
                  tma: bool = False, expected_TH: torch.Tensor | None = None, ws: bool = False,
                  ws_only: bool = False) -> list[tuple[float, str]]:
    """(ms, config JSON) of every config timed for one token count, fastest first; inf where it failed.
    `tma`: per BLOCK_M, the best tiles again with the gate/up weight, the down weight or both through TMA.
    `expected_TH`: the right output; a config whose output differs beyond the dtype's tolerance fails.
    `ws`: the best grouped config again with each `WS_SPACE` entry (with `wide`, then `_refine_ws_entry`);
    `ws_only`: only that, on the incumbent."""
    from moe_lab.backends.common import down_weight_EIH, num_experts
    from moe_lab.backends import triton_fused
    from moe_lab.kernels.configs import decode_evicts_first
    from moe_lab.kernels.ops import ws_available
    from moe_lab.reference import relative_error

    x_TH, ids_TK, _ = inputs
    T, K = ids_TK.shape
    S, E, H, I = T * K, num_experts(experts), x_TH.shape[1], down_weight_EIH(experts).shape[1]
    timed: dict[str, float] = {}
    run = triton_fused.triton_fused_experts
    ws_here = ws_available(x_TH.device) > 0  # elsewhere a "ws" entry runs its Triton tiles, by design

    def time_it(cfg: dict) -> float:
        key = _config_key(cfg)
        if key not in timed:
            try:
                with torch.no_grad():
                    if expected_TH is not None:
                        err = relative_error(run(experts, *inputs, config=cfg), expected_TH)
                        if not err <= RESULT_TOLERANCE[x_TH.dtype]:
                            raise ValueError(f"wrong result: relative error {err:.2e} against grouped_mm")
                    ms = gpu_ms(lambda: run(experts, *inputs, config=cfg), x_TH.device, reps)
                    if ws_here and "ws" in cfg and not triton_fused.ran_warp_specialized(experts, cfg):
                        raise ValueError("its warp-specialized entry does not apply (ops.ws_refusal)")
                    timed[key] = ms
            except Exception as err:  # noqa: BLE001  (a config that does not fit: too much shared memory)
                log(f"T={T}: config failed: {key} ({str(err).splitlines()[0][:100]})")
                timed[key] = math.inf
        return timed[key]

    time_it(incumbent)
    gated = bool(experts.has_gate and experts.is_concatenated)
    if ws_only:
        _time_ws_entries(time_it, timed, gated, x_TH.numel() * x_TH.element_size())
        if wide:
            _refine_ws_entry(time_it, timed)
        return sorted((ms, key) for key, ms in timed.items())
    if S <= DECODE_MAX_PAIRS:
        best_up = min(DECODE_UP, key=lambda u: time_it(decode_config(u, DECODE_DOWN[1])))
        for d in DECODE_DOWN:
            time_it(decode_config(best_up, d))
        best = json.loads(min((ms, k) for k, ms in timed.items() if '"decode"' in k)[1])
        time_it({**best, "EVICT_FIRST": int(not decode_evicts_first(best, T))})  # the other L2 policy
    interleaved = bool(experts.has_gate and not experts.is_concatenated)  # TMA: one box per gate/up tile
    for bm, (ups, downs) in grouped_space(S, E, wide).items():
        # the gate/up tiles are compared beside one down tile that runs (one that does not fit in shared
        # memory would fail them all alike, and the first gate/up tile would win by default)
        partner = next((d for d in downs if math.isfinite(time_it(grouped_config(bm, ups[0], d)))), None)
        if partner is None:
            partner = next((d for u in ups[1:] for d in downs if math.isfinite(time_it(grouped_config(bm, u, d)))),
                           None)
        if partner is None:
            log(f"T={T}: no config runs at BLOCK_M {bm}")
            continue
        best_up = min(ups, key=lambda u: time_it(grouped_config(bm, u, partner)))
        best_down = min(downs, key=lambda d: time_it(grouped_config(bm, best_up, d)))
        if tma:  # TMA boxes never cross an expert: BLOCK_K halved until it divides the reduction size
            up_tma = _fit_block_k(best_up, H)[:5] + (int(interleaved),)
            down_tma = _fit_block_k(best_down, I)
            tiles = {}  # (weights through TMA per side) -> (gate/up tile, down tile)
            for sides in ((0, 0), (1, 0), (0, 1), (1, 1)):
                tiles[sides] = (up_tma if sides[0] else best_up, down_tma if sides[1] else best_down)
            best_sides = min(tiles, key=lambda sd: time_it(grouped_config(bm, *tiles[sd], sd)))
            for a_sides in ((1, 0), (0, 1), (1, 1)):  # then the activations through TMA on top of the best
                time_it(grouped_config(bm, *tiles[best_sides], best_sides, a_sides))
    for bm in [b for b in grouped_space(S, E, wide) if b >= 32]:  # each BLOCK_M's best, half-height last blocks
        best_ms, best_key = min(((ms, k) for k, ms in timed.items() if json.loads(k).get("BLOCK_M") == bm),
                                default=(math.inf, None))
        if math.isfinite(best_ms):
            time_it({**json.loads(best_key), "HALF_TAIL": 1})
    if best := _best_grouped(timed):  # the best grouped config again with its temporaries kept in L2 (`l2_temps`)
        time_it({**best, "TEMPS_L2": 1})
    if best := _best_grouped(timed):  # then with down in two parts of the row blocks (`ready`'s SPLIT)
        time_it({**best, "SPLIT": 1})
    if tma and (best := _best_grouped(timed)) and not best["up"].get("TMA"):  # then prefetching weights (sm90)
        for lines in W_PREFETCH_SPACE:
            time_it({**best, "W_PREFETCH": lines})
    if (best := _best_grouped(timed)) and best.get("TEMPS_L2"):  # then the top-k sum (with its discards) at 4 warps
        time_it({**best, "SUM": SUM_DISCARD_TILE})
    if ws:
        _time_ws_entries(time_it, timed, gated, x_TH.numel() * x_TH.element_size())
    if ws and wide:
        _refine_ws_entry(time_it, timed)
    return sorted((ms, key) for key, ms in timed.items())


W_PREFETCH_SPACE = (2, 4, 8)  # lines per weight row: 16 and 32 were level or slower at OLMoE T=512 (run 26)
SUM_DISCARD_TILE = {"num_warps": 4}  # faster than TILE's 8 warps at 6 of 6 points with TEMPS_L2 (run 26)


def _best_grouped(timed: dict[str, float]) -> dict | None:
    """The fastest grouped config timed so far, or None where none ran."""
    ms, key = min(((ms, k) for k, ms in timed.items() if '"grouped"' in k), default=(math.inf, None))
    return json.loads(key) if math.isfinite(ms) else None


WS_SPACE = [  # "ws" entries (ws_grouped's tiles), the fastest of eight on qwen3 and OLMoE at 4096 and 8192 tokens
    # (data/results/h100/triton_gpu_run11/ws_kernels_*.csv): cooperative gate/up, down cooperative or ping-pong
    {"BLOCK_M": 128, "up": dict(BLOCK_N=128, BLOCK_K=64, STAGES=4, num_warps=8, GROUP_M=8),
     "down": dict(BLOCK_N=128, BLOCK_K=64, STAGES=5, num_warps=8, GROUP_M=8)},
    {"BLOCK_M": 128, "up": dict(BLOCK_N=128, BLOCK_K=64, STAGES=3, num_warps=8, GROUP_M=16),
     "down": dict(BLOCK_N=256, BLOCK_K=64, STAGES=3, num_warps=8, GROUP_M=16)},
    {"BLOCK_M": 128, "up": dict(BLOCK_N=128, BLOCK_K=64, STAGES=4, num_warps=8, GROUP_M=8),
     "down": dict(BLOCK_N=128, BLOCK_K=64, STAGES=5, num_warps=4, GROUP_M=8, PINGPONG=1)},
]


X_L2_PIN_BYTES = 8 * 2**20  # token rows kept in L2 by X_L2_LAST up to this much (run 18's A/Bs: more lost)


def x_l2_eighths(token_bytes: int) -> int:
    """gate/up's X_L2_LAST for token rows of `token_bytes`: the eighths of them that fit in X_L2_PIN_BYTES,
    at least one."""
    return max(1, min(8, X_L2_PIN_BYTES * 8 // token_bytes))


def _time_ws_entries(time_it, timed: dict, gated: bool, token_bytes: int) -> None:
    """The fastest grouped config so far, without a "ws" entry and with each of WS_SPACE, whole-height and
    with half-height last blocks (HALF_TAIL); then the fastest with a "ws" entry again with its groups of
    row blocks started at each expert's first block (EXPERT_GROUPS) in gate/up, in down and in both; then
    (`gated`: a concatenated gate) the fastest again with gate/up's gate and up as one wgmma (ONE_MMA); last,
    the fastest again with up to X_L2_PIN_BYTES of the token rows (`token_bytes` in all) kept in L2 by
    gate/up (X_L2_LAST)."""
    grouped = [(ms, k) for k, ms in timed.items() if json.loads(k).get("path") == "grouped"]
    best_ms, best_key = min(grouped, default=(math.inf, None))
    if not math.isfinite(best_ms):
        return
    base = {k: v for k, v in json.loads(best_key).items() if k != "ws"}
    time_it(base)
    for entry in WS_SPACE:
        for half_tail in (0, 1):
            time_it({**base, "ws": {**entry, "HALF_TAIL": 1} if half_tail else entry})
    best_ms, best_key = min((ms, k) for k, ms in timed.items() if "ws" in json.loads(k))
    if math.isfinite(best_ms):
        best = json.loads(best_key)
        for gemms in (("up",), ("down",), ("up", "down")):
            ws = {**best["ws"], **{g: {**best["ws"][g], "EXPERT_GROUPS": 1} for g in gemms}}
            time_it({**best, "ws": ws})
    best_ms, best_key = min((ms, k) for k, ms in timed.items() if "ws" in json.loads(k))
    if gated and math.isfinite(best_ms):
        best = json.loads(best_key)
        if 2 * best["ws"]["up"]["BLOCK_N"] <= 256:
            time_it({**best, "ws": {**best["ws"], "up": {**best["ws"]["up"], "ONE_MMA": 1}}})
    best_ms, best_key = min((ms, k) for k, ms in timed.items() if "ws" in json.loads(k))
    if math.isfinite(best_ms):
        best = json.loads(best_key)
        time_it({**best, "ws": {**best["ws"], "up": {**best["ws"]["up"], "X_L2_LAST": x_l2_eighths(token_bytes)}}})


WS_KNOBS = {  # `wide`'s coordinate search around the best "ws" entry: knob -> its settings
    "HALF_TAIL": (0, 1), "down tile": tuple(range(len(WS_SPACE))),  # down's tile as in that WS_SPACE entry
    "up GROUP_M": (4, 8, 16), "down GROUP_M": (4, 8, 16), "up STAGES": (3, 4, 5), "down STAGES": (3, 4, 5, 6),
}


def _ws_setting(ws: dict, knob: str, value: int) -> dict:
    """The "ws" entry `ws` with one WS_KNOBS knob set; a down tile from WS_SPACE keeps the entry's EXPERT_GROUPS."""
    if knob == "down tile":
        groups = {k: v for k, v in ws["down"].items() if k == "EXPERT_GROUPS"}
        return {**ws, "down": {**WS_SPACE[value]["down"], **groups}}
    if knob == "HALF_TAIL":
        return {**{k: v for k, v in ws.items() if k != "HALF_TAIL"}, **({"HALF_TAIL": 1} if value else {})}
    gemm, key = knob.split()
    return {**ws, gemm: {**ws[gemm], key: value}}


def _refine_ws_entry(time_it, timed: dict) -> None:
    """A coordinate search around the fastest config with a "ws" entry: one WS_KNOBS knob at a time, each
    setting timed on the fastest entry so far (one that does not fit in shared memory fails, as any)."""
    for knob, values in WS_KNOBS.items():
        best_ms, best_key = min((ms, k) for k, ms in timed.items() if "ws" in json.loads(k))
        if not math.isfinite(best_ms):
            return
        best = json.loads(best_key)
        for value in values:
            time_it({**best, "ws": _ws_setting(best["ws"], knob, value)})


def search(models: list[str], tokens: list[int], dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
           wide: bool = False, budget_s: float | None = None, reps: int = 10, log=print,
           tma: bool | None = None, ws: bool | None = None, ws_only: bool = False) -> tuple[dict, list[dict]]:
    """Search every (model, token count); returns ({device kind: {dtype: {shape key: {T: config}}}}, one row
    per config timed). Each candidate's output is checked against the grouped_mm backend's. Past `budget_s` no
    new token count starts; the ones left are logged, not tuned.
    `tma` (default: on GPUs with TMA, sm90 on, and under the interpreter) adds the TMA variants; `ws` (default:
    where `ops.ws_available`) the warp-specialized entries, and `ws_only` times only those, on each bucket's
    config in force."""
    from moe_lab.backends.grouped_mm import grouped_mm_experts
    from moe_lab.devices import device_kind
    from moe_lab.kernels.configs import get_config, shape_key
    from moe_lab.routing import synthetic_routing
    from moe_lab.shapes import build_experts, get_shape

    dev = torch.device(device)
    kind, dtype_name = device_kind(dev), str(dtype).removeprefix("torch.")
    if tma is None:
        tma = dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] >= 9
    if ws is None:
        from moe_lab.kernels.ops import ws_available

        ws = ws_only or ws_available(dev) > 0
    start = time.time()
    table: dict = {kind: {dtype_name: {}}}
    rows: list[dict] = []
    for model in models:
        shape = get_shape(model)
        E, H, I, K = shape.experts, shape.hidden, shape.intermediate, shape.top_k
        key = shape_key(E, H, I, K)
        experts = build_experts(model, device=dev, dtype=dtype)

        def inputs(T: int) -> tuple:
            ids_TK, w_TK = synthetic_routing("uniform", T, E, K, seed=T, device=dev)
            x_TH = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to(dev, dtype)
            return x_TH, ids_TK, w_TK

        if not ws_only:
            every = {_config_key(c): c for T in tokens for c in candidates(T * K, E, wide)}
            t0 = time.time()
            precompile(experts, inputs(min(tokens)), list(every.values()))
            log(f"tune-kernels {model}: built {len(every)} configs in {time.time() - t0:.1f} s")
        for T in tokens:
            if budget_s is not None and time.time() - start > budget_s:
                log(f"tune-kernels {model}: time budget spent; T={T} and later not tuned")
                break
            incumbent = get_config(kind, dtype_name, T, E, H, I, K)
            with torch.no_grad():
                expected_TH = grouped_mm_experts(experts, *inputs(T))
            results = search_bucket(experts, inputs(T), incumbent, wide, reps,
                                    lambda m: log(f"tune-kernels {model} {m}"), tma, expected_TH, ws, ws_only)
            best_ms, best = results[0]
            if math.isinf(best_ms):
                raise RuntimeError(f"tune-kernels {model} T={T}: no config ran, the incumbent included")
            table[kind][dtype_name].setdefault(key, {})[str(T)] = json.loads(best)
            incumbent_ms = dict((k, ms) for ms, k in results)[_config_key(incumbent)]
            rows += [dict(device=kind, dtype=dtype_name, model=model, shape=key, tokens=T, ms=round(ms, 5),
                          config=k, chosen=int(k == best)) for ms, k in results]
            log(f"tune-kernels {model} T={T}: best {best_ms:.4f} ms of {len(results)} "
                f"(before: {incumbent_ms:.4f} ms): {best}")
        del experts
    return table, rows


def merge_table(path: str | Path, table: dict) -> dict:
    """Write `table`'s buckets into the JSON config file at `path`, keeping every other entry; returns it."""
    path = Path(path)
    merged = json.loads(path.read_text()) if path.exists() else {}
    for kind, by_dtype in table.items():
        for dtype, by_shape in by_dtype.items():
            for key, by_bucket in by_shape.items():
                merged.setdefault(kind, {}).setdefault(dtype, {}).setdefault(key, {}).update(by_bucket)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    from moe_lab.kernels.configs import load_table

    load_table.cache_clear()
    return merged


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Every timed config, one CSV row each (`chosen` marks the winner of its bucket)."""
    fields = ["device", "dtype", "model", "shape", "tokens", "ms", "config", "chosen"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def add_tune_kernels_parser(sub) -> None:
    """Register `moe-lab tune-kernels` on the CLI's subparsers."""
    from moe_lab.tune import DEFAULT_TOKENS

    p = sub.add_parser("tune-kernels", help="search triton_fused's tile configs per token bucket on this GPU; "
                                            "merge the winners into its config file")
    p.add_argument("--models", required=True, help="comma-separated model shape names (data/model_shapes.yaml)")
    p.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)), help="comma-separated token counts")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--wide", action="store_true", help="also the wide space where pairs per expert are many, "
                                                       "and a search around the best warp-specialized entry")
    p.add_argument("--no-tma", dest="tma", action="store_false", default=None,
                   help="leave out the configs that load weights through TMA (default: in where the GPU has TMA)")
    p.add_argument("--no-ws", dest="ws", action="store_false", default=None,
                   help="leave out the warp-specialized entries (default: in on an sm90 GPU)")
    p.add_argument("--ws-only", action="store_true",
                   help="time only the warp-specialized entries, on top of each bucket's config in force")
    p.add_argument("--out", default=None, help="JSON config file to merge into (default: the one in force, "
                                               "MOE_LAB_KERNEL_CONFIGS or the package's); a new file starts as a "
                                               "copy of the one in force")
    p.add_argument("--candidates", default=None, help="CSV of every config timed")
    p.add_argument("--budget-s", type=float, default=None, help="start no new token count after this many seconds")
    p.add_argument("--reps", type=int, default=10)
    p.set_defaults(func=_tune_kernels_command)


def _tune_kernels_command(args: argparse.Namespace) -> int:
    from moe_lab.kernels.configs import CONFIG_FILE, config_path, load_table

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("moe-lab tune-kernels: no CUDA device here (triton_fused's kernels run on CUDA)")
        return 2
    if not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        print(f"moe-lab tune-kernels: device {args.device!r} runs the kernels only under TRITON_INTERPRET=1")
        return 2
    out = Path(args.out) if args.out else config_path()
    if not out.exists():  # a new file starts as the table in force (or, if that file is missing, the package's)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text((config_path() if config_path().exists() else CONFIG_FILE).read_text())
        load_table.cache_clear()
    table, rows = search(args.models.split(","), [int(t) for t in args.tokens.split(",")],
                         getattr(torch, args.dtype), args.device, args.wide, args.budget_s, args.reps, tma=args.tma,
                         ws=args.ws, ws_only=args.ws_only)
    merge_table(out, table)
    if args.candidates:
        write_rows(args.candidates, rows)
    print(f"moe-lab tune-kernels: merged {sum(len(b) for d in table.values() for s in d.values() for b in s.values())}"
          f" bucket(s) into {out}")
    return 0
