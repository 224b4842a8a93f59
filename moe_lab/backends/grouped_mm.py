"""`grouped_mm`: sort the (token, expert) pairs by expert, then one grouped GEMM per projection.

No weight copies; the group offsets come from `searchsorted` on the device, so there is no host
synchronisation on the kernel path. See `grouped_gemm` for the kernel and its fallbacks.
"""

from __future__ import annotations

import torch

from moe_lab.backends.common import (activate, check_inputs, down_bias_EH, down_weight_EIH, num_experts,
                                     post_expert_norm, up_bias_EN, up_weight_EHN)
from moe_lab.backends.grouped_gemm import grouped_mm


def grouped_mm_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor
) -> torch.Tensor:
    check_inputs(experts, x_TH, topk_ids_TK, topk_weights_TK)
    T, K = topk_ids_TK.shape
    E = num_experts(experts)
    ids_sorted_S, perm_S = torch.sort(topk_ids_TK.reshape(-1), stable=True)
    expert_range_E = torch.arange(E, device=x_TH.device, dtype=ids_sorted_S.dtype)
    offs_E = torch.searchsorted(ids_sorted_S, expert_range_E, right=True, out_int32=True)  # group ends

    x_SH = x_TH[perm_S // K]
    h_SN = grouped_mm(x_SH, up_weight_EHN(experts), offs_E)
    b_up_EN = up_bias_EN(experts)
    if b_up_EN is not None:
        h_SN = h_SN + b_up_EN[ids_sorted_S]
    y_SH = grouped_mm(activate(experts, h_SN), down_weight_EIH(experts), offs_E)
    b_down_EH = down_bias_EH(experts)
    if b_down_EH is not None:
        y_SH = y_SH + b_down_EH[ids_sorted_S]
    y_SH = post_expert_norm(experts, y_SH)

    acc_dtype = torch.promote_types(x_TH.dtype, torch.float32)  # never below the input's precision
    y_SH = y_SH.to(acc_dtype) * topk_weights_TK.reshape(-1)[perm_S, None].to(acc_dtype)
    y_unsorted_SH = torch.empty_like(y_SH).index_copy(0, perm_S, y_SH)  # back to (token, k) order
    return y_unsorted_SH.view(T, K, x_TH.shape[1]).sum(dim=1).to(x_TH.dtype)
