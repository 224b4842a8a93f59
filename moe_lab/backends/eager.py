"""`eager`: loop over the experts that were hit, project their tokens, `index_add` back.

transformers' reference design, kept for comparison and readability: one host synchronisation to
learn which experts were hit, then two small GEMMs per hit expert.
"""

from __future__ import annotations

import torch

from moe_lab.backends.common import (activate, check_inputs, down_bias_EH, down_weight_EIH, num_experts,
                                     post_expert_norm, up_bias_EN, up_weight_EHN)


def eager_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor
) -> torch.Tensor:
    """out[t] = sum_k w[t,k] * expert_{ids[t,k]}(x[t]); accumulated in float32 (float64 for float64 inputs)."""
    check_inputs(experts, x_TH, topk_ids_TK, topk_weights_TK)
    w_up_EHN, w_down_EIH = up_weight_EHN(experts), down_weight_EIH(experts)
    b_up_EN, b_down_EH = up_bias_EN(experts), down_bias_EH(experts)
    acc_dtype = torch.promote_types(x_TH.dtype, torch.float32)
    out_TH = torch.zeros(x_TH.shape, dtype=acc_dtype, device=x_TH.device)

    counts_E = torch.bincount(topk_ids_TK.reshape(-1), minlength=num_experts(experts))
    for e in counts_E.nonzero().flatten().tolist():  # the one host sync
        token_idx, k_idx = torch.where(topk_ids_TK == e)
        h_MN = x_TH[token_idx] @ w_up_EHN[e]  # M = tokens routed to expert e
        if b_up_EN is not None:
            h_MN = h_MN + b_up_EN[e]
        y_MH = activate(experts, h_MN) @ w_down_EIH[e]
        if b_down_EH is not None:
            y_MH = y_MH + b_down_EH[e]
        y_MH = post_expert_norm(experts, y_MH)
        y_MH = y_MH.to(acc_dtype) * topk_weights_TK[token_idx, k_idx, None].to(acc_dtype)
        out_TH = out_TH.index_add(0, token_idx, y_MH)
    return out_TH.to(x_TH.dtype)
