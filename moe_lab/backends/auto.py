"""`auto`: per call, the backend measured fastest for (device kind, dtype, shape, layout, token bucket).

The dispatch table is a CSV written by `moe-lab tune` (`moe_lab.tune`), by default
`data/dispatch/auto_dispatch.csv` (`MOE_LAB_DISPATCH_TABLE` names another): rows
`device,dtype,E,H,I,K,layout,tokens,backend,ms,chosen`; the rows with `chosen` = 1 are the winners.
A call with T tokens uses the winner of the largest measured bucket <= T (the smallest bucket when T
is below all of them).

Documented default where the table has no entry for the key: on CPU (and any non-CUDA device)
`grouped_mm`; on CUDA `triton_fused` when triton is installed and the layout has a fused kernel and
is not transposed (measured slow untuned), else `grouped_mm`. `moe-lab tune` replaces the guess.

When gradients are needed (grad mode on and an input or expert parameter requires grad) and the
table's choice is forward only (`differentiable = False`, e.g. `triton_fused`), auto runs `grouped_mm`
instead and logs it once: a training step never silently loses the experts' gradients.

The choice reads only metadata (shapes, dtype, device) and cached tables, so auto adds no host
synchronisation; what runs is the chosen backend, called as a plain function.
"""

from __future__ import annotations

import csv
import os
import weakref
from functools import cache
from pathlib import Path

import torch

from moe_lab.backends.batched_mm import batched_mm_experts
from moe_lab.backends.common import log_once, num_experts, up_weight_EHN
from moe_lab.backends.eager import eager_experts
from moe_lab.backends.grouped_mm import grouped_mm_experts
from moe_lab.backends.triton_fused import UnsupportedLayoutError, gate_spec, triton_fused_experts
from moe_lab.devices import device_kind

DEFAULT_TABLE = Path(__file__).resolve().parent.parent.parent / "data" / "dispatch" / "auto_dispatch.csv"
CANDIDATES = {"triton_fused": triton_fused_experts, "grouped_mm": grouped_mm_experts,
              "batched_mm": batched_mm_experts, "eager": eager_experts}
Key = tuple[str, str, int, int, int, int, str]  # device, dtype, E, H, I, K, layout


def table_path() -> Path:
    return Path(os.environ.get("MOE_LAB_DISPATCH_TABLE", DEFAULT_TABLE))


def layout_tag(experts: torch.nn.Module) -> str:
    """The weight layout's short name: `default` (gated, concatenated, not transposed, no bias or norm) or its flags."""
    flags = [name for name, on in (("nogate", not experts.has_gate),
                                   ("interleaved", experts.has_gate and not experts.is_concatenated),
                                   ("transposed", experts.is_transposed), ("bias", experts.has_bias),
                                   ("norm", getattr(experts, "has_post_expert_norm", False))) if on]
    gate_fn = gate_fn_name(experts)
    if gate_fn != "silu":
        flags.append(gate_fn)
    return "+".join(flags) or "default"


def gate_fn_name(experts: torch.nn.Module) -> str:
    """The gate (or activation) function's name, the same for moe_lab's `Experts` and transformers' module of
    one family: `silu`, `gelu`, `gelu_tanh`, `relu`, `clamped_swiglu` (gpt-oss), else the activation's class."""
    from moe_lab.backends.triton_fused import _activation_name

    layout = getattr(experts, "layout", None)
    if layout is not None and hasattr(layout, "gate_fn"):  # moe_lab's Experts
        return layout.gate_fn
    if experts.has_gate and type(experts).__name__ == "GptOssExperts":
        return "clamped_swiglu"
    act_fn = getattr(experts, "act_fn", None)
    return _activation_name(act_fn) or type(act_fn).__name__


@cache
def load_dispatch_table(path: str) -> dict[Key, list[tuple[int, str]]]:
    """key -> [(token bucket, backend)] sorted by bucket, from the chosen rows of the CSV (empty if absent)."""
    p = Path(path)
    table: dict[Key, list[tuple[int, str]]] = {}
    if not p.exists():
        return table
    with p.open() as f:
        for row in csv.DictReader(f):
            if str(row.get("chosen", "1")).strip() not in ("1", "True", "true"):
                continue
            if row["backend"] not in CANDIDATES:
                raise ValueError(f"{p}: unknown backend {row['backend']!r}; valid: {', '.join(CANDIDATES)}")
            key = (row["device"], row["dtype"], int(row["E"]), int(row["H"]), int(row["I"]), int(row["K"]),
                   row["layout"])
            table.setdefault(key, []).append((int(row["tokens"]), row["backend"]))
    return {k: sorted(v) for k, v in table.items()}


def default_backend(experts: torch.nn.Module, device: torch.device) -> str:
    """The documented default: grouped_mm off CUDA; triton_fused on CUDA where it can run this layout fast.

    Transposed weight layouts (gpt-oss) get grouped_mm: with untuned tile configs triton_fused measured
    6 to 40x slower than grouped_mm there from 32 tokens on (data/results/h100/layer-gpt-oss-20b.csv),
    while on the non-transposed layouts it beat every other backend at every token count.
    """
    if device.type != "cuda" or experts.is_transposed:
        return "grouped_mm"
    try:
        import triton  # noqa: F401

        gate_spec(experts)
    except (ImportError, UnsupportedLayoutError):
        return "grouped_mm"
    return "triton_fused"


def choose_backend(experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor,
                   table: dict[Key, list[tuple[int, str]]] | None = None) -> str:
    """The backend auto runs for this call (metadata only)."""
    table = load_dispatch_table(str(table_path())) if table is None else table
    T, K = topk_ids_TK.shape[0], topk_ids_TK.shape[-1]  # bad ranks are the chosen backend's clear error to raise
    E, H = num_experts(experts), up_weight_EHN(experts).shape[1]
    I = experts.down_proj.shape[1] if experts.is_transposed else experts.down_proj.shape[2]
    key = (device_kind(x_TH.device), str(x_TH.dtype).removeprefix("torch."), E, H, I, K, layout_tag(experts))
    rows = table.get(key)
    if not rows:
        return default_backend(experts, x_TH.device)
    below = [name for bucket, name in rows if bucket <= T]
    return below[-1] if below else rows[0][1]


_GENERATION = [0]


def reload_dispatch_table() -> None:
    """Forget the loaded tables and every remembered choice (after a tuning sweep rewrote the file)."""
    load_dispatch_table.cache_clear()
    _GENERATION[0] += 1


_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {call metadata: backend function}


def auto_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor
) -> torch.Tensor:
    """The backend the table names for this call, remembered per module and call metadata."""
    needs_grad = torch.is_grad_enabled() and (x_TH.requires_grad or topk_weights_TK.requires_grad
                                              or any(p.requires_grad for p in experts.parameters()))
    key = (x_TH.shape[0], topk_ids_TK.shape[-1], x_TH.dtype, x_TH.device, os.environ.get("MOE_LAB_DISPATCH_TABLE"),
           _GENERATION[0], needs_grad)  # a reloaded table invalidates the remembered choices
    choices = _CHOICES.get(experts)
    if choices is None:
        choices = _CHOICES[experts] = {}
    fn = choices.get(key)
    if fn is None:
        name = choose_backend(experts, x_TH, topk_ids_TK)
        if needs_grad and not getattr(CANDIDATES[name], "differentiable", True):
            log_once(f"moe_lab auto: {name} is forward only and gradients are needed; running grouped_mm")
            name = "grouped_mm"
        fn = choices[key] = CANDIDATES[name]
    return fn(experts, x_TH, topk_ids_TK, topk_weights_TK)
