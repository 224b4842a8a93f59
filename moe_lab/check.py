"""`moe-lab check`: every backend against the float64 reference on one shape, with a quick latency."""

from __future__ import annotations

import os

import pandas as pd
import torch
import torch.utils.benchmark as benchmark

from moe_lab.backends import BACKENDS
from moe_lab.reference import reference_experts, relative_error
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def check_backends(
    model: str = "tiny", tokens: int = 64, dtype: torch.dtype = torch.float32, device: str = "cpu",
    routing: str = "uniform", seed: int = 0,
) -> pd.DataFrame:
    """One row per backend: relative error to the reference, pass/fail, median latency (torch.utils.benchmark).

    `status` is `pass`, `FAIL`, or `skipped: ...` for a backend whose `device_types` exclude this device
    (e.g. triton_fused on the CPU); `ok` is False only for `FAIL`.
    """
    shape = get_shape(model)
    experts = build_experts(model, device=device, dtype=dtype, seed=seed)
    ids_TK, weights_TK = synthetic_routing(routing, tokens, shape.experts, shape.top_k, seed=seed, device=device)
    x_TH = torch.randn(tokens, shape.hidden, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    ref_TH = reference_experts(experts, x_TH, ids_TK, weights_TK)
    rows = []
    with torch.no_grad():
        for name, fn in BACKENDS.items():
            device_types = getattr(fn, "device_types", None)
            interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels then run on the CPU too
            if device_types is not None and torch.device(device).type not in device_types and not interpreted:
                rows.append(dict(backend=name, model=model, tokens=tokens, dtype=str(dtype).removeprefix("torch."),
                                 device=device, rel_err=float("nan"), ok=True, median_ms=float("nan"),
                                 status=f"skipped: runs on {', '.join(device_types)} only"))
                continue
            err = relative_error(fn(experts, x_TH, ids_TK, weights_TK), ref_TH)
            timer = benchmark.Timer("fn(experts, x, ids, w)", globals=dict(fn=fn, experts=experts, x=x_TH,
                                                                          ids=ids_TK, w=weights_TK))
            rows.append(dict(backend=name, model=model, tokens=tokens, dtype=str(dtype).removeprefix("torch."),
                             device=device, rel_err=err, ok=err <= TOLERANCE[dtype],
                             median_ms=timer.blocked_autorange(min_run_time=0.2).median * 1e3,
                             status="pass" if err <= TOLERANCE[dtype] else "FAIL"))
    return pd.DataFrame(rows)
