"""Launchers of the fused experts kernels: tensors in, tensors out, no host synchronisation.

Every launch size comes from shapes (T, K, E, H, I) and the config, never from routing data, so a
call can be captured in a CUDA graph. Legend as in `fused_moe`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from moe_lab.kernels import INTERPRETED
from moe_lab.kernels.align import align_by_expert, max_blocks
from moe_lab.kernels.fused_moe import (_down_decode_kernel, _down_grouped_kernel, _gate_up_decode_kernel,
                                       _gate_up_grouped_kernel)


@dataclass(frozen=True)
class GateSpec:
    """What the gate/up epilogue computes: gate mode (0 none, 1 concatenated, 2 interleaved), activation code."""

    gate_mode: int
    act: int
    limit: float = 7.0
    alpha: float = 1.702


def _kernel_opts(cfg: dict) -> dict:
    return {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def fused_experts(
    x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor,
    w_up_ENH: torch.Tensor, w_down_EHI: torch.Tensor, b_up_EN: torch.Tensor | None, b_down_EH: torch.Tensor | None,
    spec: GateSpec, config: dict, *, reduce: bool = True,
) -> torch.Tensor:
    """out[t] = sum_k w[t,k] * down_e(gate(up_e(x[t]))), e = ids[t,k], or with reduce=False the unweighted
    per-pair outputs y (S, H) in (t, k) order (for a post-expert norm applied by the caller).

    w_up_ENH / w_down_EHI are views in those index orders, any strides (transposed storage included).
    """
    T, H = x_TH.shape
    K = topk_ids_TK.shape[1]
    E, N, _ = w_up_ENH.shape
    I = w_down_EHI.shape[2]
    S = T * K
    dtype, dev = x_TH.dtype, x_TH.device
    ids_S = topk_ids_TK.reshape(-1)
    if not ids_S.is_contiguous():
        ids_S = ids_S.contiguous()
    rw_S = topk_weights_TK.reshape(-1)
    if not rw_S.is_contiguous():
        rw_S = rw_S.contiguous()
    has_bias = b_up_EN is not None
    b_up = b_up_EN if has_bias else w_up_ENH  # a placeholder pointer when there is no bias
    b_down = b_down_EH if has_bias else w_down_EHI
    bstr_up = (b_up_EN.stride(0), b_up_EN.stride(1)) if has_bias else (0, 0)
    bstr_down = (b_down_EH.stride(0), b_down_EH.stride(1)) if has_bias else (0, 0)
    out_rows = T if reduce else S
    if S == 0:
        return torch.zeros(out_rows, H, dtype=dtype, device=dev)

    if config["path"] == "decode":
        up, down = config["up"], config["down"]
        a_SI = torch.empty(S, I, dtype=torch.float32, device=dev)
        _gate_up_decode_kernel[(S, triton.cdiv(I, up["BLOCK_N"]))](
            x_TH, ids_S, w_up_ENH, b_up, a_SI, K, H, I, E,
            x_TH.stride(0), x_TH.stride(1), w_up_ENH.stride(0), w_up_ENH.stride(1), w_up_ENH.stride(2), *bstr_up,
            spec.limit, spec.alpha,
            GATE_MODE=spec.gate_mode, ACT=spec.act, HAS_BIAS=has_bias,
            BLOCK_N=up["BLOCK_N"], BLOCK_K=up["BLOCK_K"], EVEN_K=H % up["BLOCK_K"] == 0, **_kernel_opts(up))
        out = torch.empty(out_rows, H, dtype=dtype, device=dev)
        _down_decode_kernel[(out_rows, triton.cdiv(H, down["BLOCK_N"]))](
            a_SI, ids_S, rw_S, w_down_EHI, b_down, out, K, H, I, E,
            w_down_EHI.stride(0), w_down_EHI.stride(1), w_down_EHI.stride(2), *bstr_down, out.stride(0),
            REDUCE=reduce, HAS_BIAS=has_bias,
            BLOCK_N=down["BLOCK_N"], BLOCK_K=down["BLOCK_K"], EVEN_K=I % down["BLOCK_K"] == 0, **_kernel_opts(down))
        return out

    bm, up, down = config["BLOCK_M"], config["up"], config["down"]
    sorted_P, block_expert_B = align_by_expert(ids_S, E, bm)
    B = max_blocks(S, E, bm)
    a_PI = torch.empty(B * bm, I, dtype=dtype, device=dev)
    dot_mode = 2 if INTERPRETED else (1 if dtype == torch.float32 else 0)
    _gate_up_grouped_kernel[(B * triton.cdiv(I, up["BLOCK_N"]),)](
        x_TH, w_up_ENH, b_up, a_PI, sorted_P, block_expert_B, S, K, H, I, B,
        x_TH.stride(0), x_TH.stride(1), w_up_ENH.stride(0), w_up_ENH.stride(1), w_up_ENH.stride(2), *bstr_up,
        a_PI.stride(0), spec.limit, spec.alpha,
        GATE_MODE=spec.gate_mode, ACT=spec.act, HAS_BIAS=has_bias, DOT_MODE=dot_mode,
        BLOCK_M=bm, BLOCK_N=up["BLOCK_N"], BLOCK_K=up["BLOCK_K"], GROUP_M=up["GROUP_M"],
        EVEN_K=H % up["BLOCK_K"] == 0, **_kernel_opts(up))
    y_SH = torch.empty(S, H, dtype=dtype, device=dev)
    _down_grouped_kernel[(B * triton.cdiv(H, down["BLOCK_N"]),)](
        a_PI, w_down_EHI, b_down, y_SH, rw_S, sorted_P, block_expert_B, S, H, I, B,
        a_PI.stride(0), w_down_EHI.stride(0), w_down_EHI.stride(1), w_down_EHI.stride(2), *bstr_down,
        y_SH.stride(0),
        MUL_WEIGHT=reduce, HAS_BIAS=has_bias, DOT_MODE=dot_mode,
        BLOCK_M=bm, BLOCK_N=down["BLOCK_N"], BLOCK_K=down["BLOCK_K"], GROUP_M=down["GROUP_M"],
        EVEN_K=I % down["BLOCK_K"] == 0, **_kernel_opts(down))
    if not reduce:
        return y_SH
    if K == 1:
        return y_SH
    return y_SH.view(T, K, H).sum(dim=1)  # float32 accumulation inside, output in the input dtype
