"""The experts backends: one module each, one signature, one plain registry.

Every backend is `fn(experts, x_TH, topk_ids_TK, topk_weights_TK) -> out_TH`, the signature of
transformers' `ExpertsInterface`, so each can be registered there unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.backends.batched_mm import batched_mm_experts
from moe_lab.backends.eager import eager_experts
from moe_lab.backends.grouped_mm import grouped_mm_experts
from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.backends.auto import auto_experts  # noqa: E402  (after the backends it dispatches to)

ExpertsFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKENDS: dict[str, ExpertsFn] = {
    "eager": eager_experts,
    "batched_mm": batched_mm_experts,
    "grouped_mm": grouped_mm_experts,
    "triton_fused": triton_fused_experts,  # CUDA only (device_types)
    "auto": auto_experts,  # the fastest of the above per call, from a measured table
}


def get_backend(name: str) -> ExpertsFn:
    """The backend called `name`; an unknown name is a ValueError listing the valid ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown experts backend {name!r}; valid: {', '.join(BACKENDS)}") from None
