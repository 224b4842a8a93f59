"""`batched_mm`: gather each (token, expert) pair's weights, then one `torch.bmm` per projection.

No host synchronisation and static shapes, so it compiles and graph-captures well; but the gather
copies S = T*K full weight matrices, so its memory grows with tokens: S * (N*H + H*I) elements.
"""

from __future__ import annotations

import torch

from moe_lab.backends.common import (activate, check_inputs, down_bias_EH, down_weight_EIH, post_expert_norm,
                                     up_bias_EN, up_weight_EHN)


def batched_mm_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor
) -> torch.Tensor:
    check_inputs(experts, x_TH, topk_ids_TK, topk_weights_TK)
    T, K = topk_ids_TK.shape
    ids_S = topk_ids_TK.reshape(-1)
    x_S1H = x_TH.repeat_interleave(K, dim=0).unsqueeze(1)

    h_SN = torch.bmm(x_S1H, up_weight_EHN(experts)[ids_S]).squeeze(1)  # gathers (S, H, N)
    b_up_EN = up_bias_EN(experts)
    if b_up_EN is not None:
        h_SN = h_SN + b_up_EN[ids_S]
    a_S1I = activate(experts, h_SN).unsqueeze(1)

    y_SH = torch.bmm(a_S1I, down_weight_EIH(experts)[ids_S]).squeeze(1)  # gathers (S, I, H)
    b_down_EH = down_bias_EH(experts)
    if b_down_EH is not None:
        y_SH = y_SH + b_down_EH[ids_S]
    y_SH = post_expert_norm(experts, y_SH)

    acc_dtype = torch.promote_types(x_TH.dtype, torch.float32)  # never below the input's precision
    y_SH = y_SH.to(acc_dtype) * topk_weights_TK.reshape(-1, 1).to(acc_dtype)
    return y_SH.view(T, K, x_TH.shape[1]).sum(dim=1).to(x_TH.dtype)
