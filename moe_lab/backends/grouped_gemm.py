"""One grouped GEMM, out[offs[e-1]:offs[e]] = a[offs[e-1]:offs[e]] @ w[e], correct for every size.

`torch.nn.functional.grouped_mm` (or `torch._grouped_mm`) where it has a kernel; its 16-byte stride
rule is met by zero-padding unaligned dimensions (a weight copy, logged once) instead of raising.
Where no kernel applies, transformers' compatibility table is followed: a per-expert loop wrapped in
a custom op, opaque to torch.compile so `fullgraph=True` still holds. Every fallback is logged once.
Legend: S rows sorted by expert, K reduction, N output, E experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_lab.backends.common import log_once

_torch_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@torch.library.custom_op("moe_lab::grouped_mm_loop", mutates_args=())
def grouped_mm_loop(a_SK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Per-expert `torch.mm` over the groups that `offs_E` (group ends) delimit; one host sync."""
    out_SN = a_SK.new_zeros(a_SK.shape[0], w_EKN.shape[2])
    start = 0
    for e, end in enumerate(offs_E.tolist()):
        if end > start:
            torch.mm(a_SK[start:end], w_EKN[e], out=out_SN[start:end])
        start = end
    return out_SN


@grouped_mm_loop.register_fake
def _(a_SK, w_EKN, offs_E):
    return a_SK.new_empty(a_SK.shape[0], w_EKN.shape[2])


@torch.library.custom_op("moe_lab::grouped_mm_loop_backward", mutates_args=())
def grouped_mm_loop_backward(
    a_SK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor, grad_SN: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `grouped_mm_loop` for a and w, also one host sync (a custom op so compile does not trace it)."""
    grad_a_SK, grad_w_EKN = torch.zeros_like(a_SK), torch.zeros_like(w_EKN)
    start = 0
    for e, end in enumerate(offs_E.tolist()):
        if end > start:
            grad_a_SK[start:end] = grad_SN[start:end] @ w_EKN[e].T
            grad_w_EKN[e] = a_SK[start:end].T @ grad_SN[start:end]
        start = end
    return grad_a_SK, grad_w_EKN


@grouped_mm_loop_backward.register_fake
def _(a_SK, w_EKN, offs_E, grad_SN):
    return torch.empty_like(a_SK), torch.empty_like(w_EKN)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_SN):
    a_SK, w_EKN, offs_E = ctx.saved_tensors
    grad_a, grad_w = torch.ops.moe_lab.grouped_mm_loop_backward(a_SK, w_EKN, offs_E, grad_SN.contiguous())
    return grad_a, grad_w, None


grouped_mm_loop.register_autograd(_backward, setup_context=_setup_context)


def kernel_unavailable_reason(w_EKN: torch.Tensor) -> str | None:
    """Why torch's grouped_mm kernel cannot run here (transformers' table), or None if it can."""
    if _torch_grouped_mm is None:
        return f"torch {torch.__version__} has no grouped_mm"
    if w_EKN.dtype not in KERNEL_DTYPES:
        return f"grouped_mm has no {w_EKN.dtype} kernel"
    if w_EKN.device.type not in ("cpu", "cuda"):
        return f"grouped_mm has no kernel on {w_EKN.device.type}"
    if w_EKN.device.type == "cuda" and torch.cuda.get_device_capability(w_EKN.device) < (8, 0):
        return "grouped_mm needs a CUDA device of compute capability 8.0 or newer"
    if torch.compiler.is_compiling() and w_EKN.dtype != torch.bfloat16:
        return f"torch.compile lowers grouped_mm only for bfloat16, not {w_EKN.dtype}"
    return None


def grouped_mm(a_SK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """(S, K) x (E, K, N) -> (S, N), rows of group e multiplied by w[e]; offs_E are int32 group ends."""
    reason = kernel_unavailable_reason(w_EKN)
    if reason is not None:
        log_once(f"moe_lab grouped_mm: {reason}; using the per-expert loop (transformers' fallback)")
        return torch.ops.moe_lab.grouped_mm_loop(a_SK, w_EKN, offs_E)
    align = 16 // w_EKN.element_size()
    K, N = w_EKN.shape[1], w_EKN.shape[2]
    pad_K, pad_N = -K % align, -N % align
    if pad_K or pad_N:
        log_once(f"moe_lab grouped_mm: K={K}, N={N} break the kernel's 16-byte stride rule for {w_EKN.dtype}; "
                 f"zero-padding to {K + pad_K}x{N + pad_N} (a weight copy per call)")
        a_SK = F.pad(a_SK, (0, pad_K))
        w_EKN = F.pad(w_EKN, (0, pad_N, 0, pad_K))
    out_SN = _torch_grouped_mm(a_SK.contiguous(), w_EKN, offs=offs_E)
    return out_SN[:, :N] if pad_N else out_SN
