"""`batched_mm`: gather each (token, expert) pair's weights, then one `torch.bmm` per projection.

No host synchronisation and static shapes, so it compiles and graph-captures well; but the gather
copies S = T*K full weight matrices, so its memory grows with tokens: S * (N*H + H*I) elements.
"""

from __future__ import annotations

import torch

from moe_lab.backends.common import activate, check_inputs, down_bias_EH, post_expert_norm, up_bias_EN


def _gathered_linear(experts: torch.nn.Module, x_SD: torch.Tensor, w_EXY: torch.Tensor,
                     ids_S: torch.Tensor) -> torch.Tensor:
    """x_SD @ W_e for each pair's expert e; the weights are gathered in their stored layout (a contiguous copy)."""
    w_SXY = w_EXY[ids_S]
    if experts.is_transposed:  # stored (in, out)
        return torch.bmm(x_SD.unsqueeze(1), w_SXY).squeeze(1)
    return torch.bmm(w_SXY, x_SD.unsqueeze(-1)).squeeze(-1)  # stored (out, in)


def batched_mm_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor
) -> torch.Tensor:
    check_inputs(experts, x_TH, topk_ids_TK, topk_weights_TK)
    T, K = topk_ids_TK.shape
    ids_S = topk_ids_TK.reshape(-1)
    x_SH = x_TH.repeat_interleave(K, dim=0)

    w_up = experts.gate_up_proj if experts.has_gate else experts.up_proj
    h_SN = _gathered_linear(experts, x_SH, w_up, ids_S)  # gathers S weight matrices of N x H
    b_up_EN = up_bias_EN(experts)
    if b_up_EN is not None:
        h_SN = h_SN + b_up_EN[ids_S]
    y_SH = _gathered_linear(experts, activate(experts, h_SN), experts.down_proj, ids_S)  # gathers S of H x I
    b_down_EH = down_bias_EH(experts)
    if b_down_EH is not None:
        y_SH = y_SH + b_down_EH[ids_S]
    y_SH = post_expert_norm(experts, y_SH)

    acc_dtype = torch.promote_types(x_TH.dtype, torch.float32)  # never below the input's precision
    y_SH = y_SH.to(acc_dtype) * topk_weights_TK.reshape(-1, 1).to(acc_dtype)
    return y_SH.view(T, K, x_TH.shape[1]).sum(dim=1).to(x_TH.dtype)
