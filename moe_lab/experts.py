"""A standalone experts layer with every weight layout transformers' MoE families use.

Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k, N = 2I (gated) or I.

`Experts` carries the same attributes as a transformers experts module decorated with
`@use_experts_implementation` (`gate_up_proj` / `up_proj`, `down_proj`, biases, `has_gate`,
`has_bias`, `is_transposed`, `is_concatenated`, `has_post_expert_norm`, `act_fn`, `_apply_gate`),
so every moe_lab backend runs on either one unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

GATE_FUNCTIONS = ("silu", "gelu", "relu", "clamped_swiglu")
ACTIVATIONS = {"silu": nn.functional.silu, "gelu": nn.functional.gelu, "relu": nn.functional.relu}


@dataclass(frozen=True)
class ExpertsLayout:
    """How an experts layer stores and applies its weights (the flags of `use_experts_implementation`).

    `gate_fn` is the activation of the gate half (`clamped_swiglu` is gpt-oss's, with `swiglu_limit`
    and `swiglu_alpha`); without a gate it is the activation applied after the up projection.
    """

    has_gate: bool = True
    is_concatenated: bool = True
    is_transposed: bool = False
    has_bias: bool = False
    has_post_expert_norm: bool = False
    gate_fn: str = "silu"
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702

    def __post_init__(self):
        if self.gate_fn not in GATE_FUNCTIONS:
            raise ValueError(f"unknown gate_fn {self.gate_fn!r}; valid: {', '.join(GATE_FUNCTIONS)}")
        if self.gate_fn == "clamped_swiglu" and not self.has_gate:
            raise ValueError("gate_fn 'clamped_swiglu' needs has_gate=True")


class Experts(nn.Module):
    """E experts of a gated (or plain) MLP, with random weights, dispatched to a moe_lab backend."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        layout: ExpertsLayout = ExpertsLayout(),
        *,
        backend: str = "eager",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("num_experts", num_experts), ("hidden_size", hidden_size),
                            ("intermediate_size", intermediate_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not dtype.is_floating_point:
            raise TypeError(f"experts weights need a floating dtype, got {dtype}")
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden_size, intermediate_size
        self.layout = layout
        self.has_gate, self.has_bias = layout.has_gate, layout.has_bias
        self.is_transposed, self.is_concatenated = layout.is_transposed, layout.is_concatenated
        self.has_post_expert_norm = layout.has_post_expert_norm
        self._is_expert_parallel = False
        self.act_fn = ACTIVATIONS["silu" if layout.gate_fn == "clamped_swiglu" else layout.gate_fn]
        self.backend = backend

        E, H, I = num_experts, hidden_size, intermediate_size
        N = 2 * I if layout.has_gate else I
        gen = torch.Generator().manual_seed(seed)
        on_meta = device is not None and torch.device(device).type == "meta"  # shapes only: no host memory

        def weight(out_dim: int, in_dim: int) -> nn.Parameter:
            if on_meta:
                dims = (E, in_dim, out_dim) if layout.is_transposed else (E, out_dim, in_dim)
                return nn.Parameter(torch.empty(dims, device="meta", dtype=dtype))
            w = torch.randn(E, out_dim, in_dim, generator=gen) / math.sqrt(in_dim)
            w = w.transpose(1, 2).contiguous() if layout.is_transposed else w
            return nn.Parameter(w.to(device=device, dtype=dtype))

        def bias(dim: int) -> nn.Parameter:
            if on_meta:
                return nn.Parameter(torch.empty(E, dim, device="meta", dtype=dtype))
            return nn.Parameter((0.1 * torch.randn(E, dim, generator=gen)).to(device=device, dtype=dtype))

        up_name = "gate_up_proj" if layout.has_gate else "up_proj"
        setattr(self, up_name, weight(N, H))  # (E, N, H), or (E, H, N) transposed
        self.down_proj = weight(H, I)  # (E, H, I), or (E, I, H) transposed
        if layout.has_bias:
            setattr(self, f"{up_name}_bias", bias(N))
            self.down_proj_bias = bias(H)
        if layout.has_post_expert_norm:
            self.post_expert_norm = nn.RMSNorm(H, eps=1e-6, device=device, dtype=dtype)

    def _apply_gate(self, gate_up_SN: torch.Tensor) -> torch.Tensor:
        """Split the gate and up halves (concatenated or interleaved) and gate: (S, 2I) -> (S, I)."""
        if self.is_concatenated:
            gate_SI, up_SI = gate_up_SN.chunk(2, dim=-1)
        else:
            gate_SI, up_SI = gate_up_SN[..., ::2], gate_up_SN[..., 1::2]
        if self.layout.gate_fn == "clamped_swiglu":
            limit, alpha = self.layout.swiglu_limit, self.layout.swiglu_alpha
            gate_SI = gate_SI.clamp(max=limit)
            up_SI = up_SI.clamp(min=-limit, max=limit)
            return (up_SI + 1) * gate_SI * torch.sigmoid(gate_SI * alpha)
        return self.act_fn(gate_SI) * up_SI

    def forward(self, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor) -> torch.Tensor:
        from moe_lab.backends import get_backend

        return get_backend(self.backend)(self, x_TH, topk_ids_TK, topk_weights_TK)

    def extra_repr(self) -> str:
        return (f"E={self.num_experts}, H={self.hidden_dim}, I={self.intermediate_dim}, "
                f"layout={self.layout}, backend={self.backend!r}")
