"""Tile configurations of `triton_fused`, per token-count bucket, kept as data in the package.

`configs/triton_fused.json` maps device kind -> dtype -> shape key (`E60_H2048_I1408_K4`, or
`default`) -> token bucket (a power of two, as a string) -> a config:

- `{"path": "decode", "up": {BLOCK_N, BLOCK_K, num_warps, num_stages}, "down": {...}}`: one program
  per pair (gate/up) and per (token, hidden tile) (down + top-k sum), no alignment;
- `{"path": "grouped", "BLOCK_M": m, "up": {BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, ONE_DOT},
  "down": {...}}`: expert-aligned grouped GEMMs; `"TMA": 1` in "up" or "down" loads that weight
  through a TMA descriptor (its reduction size a multiple of BLOCK_K, stored contiguous; for gate/up
  ONE_DOT 1 on an interleaved layout, 0 otherwise), else pointer loads; `"A_TMA": 1` in "up" gathers
  the tokens once into the aligned order (one extra copy) and loads them through TMA, in "down" loads
  the intermediate through TMA (both need rows of a multiple of 16 bytes). Top level, all optional:
  `"HALF_TAIL": 1` runs a row block with at most BLOCK_M / 2 real rows (an expert's last) as a
  half-height tile in both GEMMs, so that padding costs at most half a block of MMA work (BLOCK_M >= 32);
  `"PDL": 0` turns off programmatic dependent launch (on by default where the GPU has it); `"ONE_LAUNCH_ALIGN":
  0` aligns the pairs in two launches even where one would do (`align`; for A/Bs); on the decode
  path `"EVICT_FIRST"` 1 or 0 loads the weights with an evict-first L2 policy or the default one (without
  the key: evict-first at T = 1 only, see `decode_evicts_first`); `"TEMPS_L2": 1` has the tiles' GEMMs store
  the intermediate and y evict-last and the top-k sum drop their L2 lines once read (`l2_temps`);
  `"SPLIT": 1` runs down in two parts of the row blocks after one gate/up launch, ordered on the call's stream
  by done-counters, so that part one's down starts beside gate/up's last wave (`ready`); `"W_PREFETCH": n` (a power
  of two) has gate/up's first wave, resident under PDL while the alignment runs, pull the first n 128-byte lines
  of its weight rows into L2 for the expert it guesses (`fused_moe._prefetch_guessed_tile`; sm90);
  `"SUM": {BLOCK_T, BLOCK_H, num_warps}` sets fields of the top-k sum's tile over `topk_sum.TILE`;
  `"ws": {BLOCK_M, HALF_TAIL, "up": {BLOCK_N, BLOCK_K, STAGES, num_warps, GROUP_M, PINGPONG, EXPERT_GROUPS,
  ONE_MMA, X_L2_LAST}, "down": {...}}` runs the
  warp-specialized Gluon GEMMs (`ws_grouped`; EXPERT_GROUPS starts the groups of GROUP_M row blocks at each
  expert's first block; gate/up's ONE_MMA runs its gate and up tiles as one wgmma, its X_L2_LAST keeps that
  many eighths of the token rows in L2 while it runs) instead of the entry's
  own tiles where they apply (an sm90 GPU, bf16 / fp16, a concatenated gate or none, no bias, the top-k sum:
  `ops.ws_refusal`), else the tiles, with a log line.

The file is written ahead of time by `moe-lab tune-kernels` (`moe_lab.kernels.search`) on the device;
users pay no autotuning. `MOE_LAB_KERNEL_CONFIGS` names another file (a user's own tuning). A call
picks the largest bucket <= T (the smallest bucket if T is below all of them). A 16-bit float with no
entry of its own for the shape takes the other 16-bit float's (`SAME_TILES`: float16 runs the tiles tuned
for bfloat16): the kernels' tiles depend on the element size, not on its format, and the tensor cores of
the GPUs tuned here run both at one rate. Shapes or devices the file does not name get `heuristic_config`.
Importing this needs no triton.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "triton_fused.json"
CONFIG_ENV = "MOE_LAB_KERNEL_CONFIGS"
DECODE_MAX_PAIRS = 64  # heuristic: the decode path up to this many (token, expert) pairs
SAME_TILES = {"float16": "bfloat16", "bfloat16": "float16"}  # a dtype's stand-in where it has no entry of its own


def shape_key(E: int, H: int, I: int, K: int) -> str:
    return f"E{E}_H{H}_I{I}_K{K}"


def config_path() -> Path:
    """The config file in force: `MOE_LAB_KERNEL_CONFIGS` if set, else the package's."""
    return Path(os.environ.get(CONFIG_ENV) or CONFIG_FILE)


@cache
def load_table(path: str | Path | None = None) -> dict:
    """The config file at `path` (default: `config_path()`) as a dict; {} where there is no file."""
    p = Path(path) if path else config_path()
    return json.loads(p.read_text()) if p.exists() else {}


def heuristic_config(T: int, E: int, H: int, I: int, K: int) -> dict:
    """A reasonable config where nothing was tuned: decode for few pairs, else BLOCK_M from pairs per expert."""
    S = T * K
    if S <= DECODE_MAX_PAIRS:
        return {"path": "decode",
                "up": {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2},
                "down": {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2}}
    per_expert = S / E
    if per_expert <= 16:
        bm, up, down = 16, dict(BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4), \
            dict(BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4)
    elif per_expert <= 64:
        bm, up, down = 32, dict(BLOCK_N=64, BLOCK_K=128, GROUP_M=4, num_warps=4, num_stages=4), \
            dict(BLOCK_N=128, BLOCK_K=64, GROUP_M=4, num_warps=4, num_stages=4)
    elif per_expert <= 256:
        bm, up, down = 64, dict(BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4), \
            dict(BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    else:
        bm, up, down = 128, dict(BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3), \
            dict(BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    return {"path": "grouped", "BLOCK_M": bm, "up": up, "down": down}


def decode_evicts_first(config: dict, T: int) -> bool:
    """Whether the decode path loads the weights evict-first (they leave L2 before anything else does): as the
    config says, else at T = 1, where a token's K experts are distinct and so no weight is read twice (from
    T = 2 on two pairs may share an expert, whose second read then finds it in L2 with the default policy)."""
    return bool(config.get("EVICT_FIRST", T == 1))


def bucket_of(T: int, buckets: list[int]) -> int:
    below = [b for b in buckets if b <= T]
    return max(below) if below else min(buckets)


def get_config(device_kind: str, dtype: str, T: int, E: int, H: int, I: int, K: int,
               table: dict | None = None) -> dict:
    """The tuned config for this call (the dtype's own entry for the shape, else its `SAME_TILES` stand-in's),
    else the device's `default` shape entry (in the same order), else the heuristic."""
    table = load_table(config_path()) if table is None else table
    by_device = table.get(device_kind, {})
    for key in (shape_key(E, H, I, K), "default"):
        for dt in (dtype, SAME_TILES.get(dtype)):
            by_bucket = by_device.get(dt, {}).get(key)
            if by_bucket:
                return by_bucket[str(bucket_of(T, [int(b) for b in by_bucket]))]
    return heuristic_config(T, E, H, I, K)
