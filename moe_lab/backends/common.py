"""What every backend shares: reading an experts module's weights, gating, input checks.

Works on moe_lab's `Experts` and on any transformers experts module decorated with
`@use_experts_implementation`. Legend: T tokens, H hidden, I intermediate, E experts, K top-k,
S = T*K (token, expert) pairs, N = 2I (gated) or I.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("moe_lab")
_logged: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.warning(message)


@torch._dynamo.assume_constant_result
def _warn_once_while_tracing(message: str) -> bool:
    # dynamo calls this at trace time instead of tracing it, so the warning is emitted once per compile and the
    # graph stays whole (`reorderable_logging_functions` silently drops calls made from inlined functions)
    _warn_once(message)
    return True


def log_once(message: str) -> None:
    """Warn about a backend's fallback once per process, never silently (also inside torch.compile)."""
    if torch.compiler.is_compiling():
        _warn_once_while_tracing(message)
    else:
        _warn_once(message)


def num_experts(experts: torch.nn.Module) -> int:
    return experts.down_proj.shape[0]


def up_weight_EHN(experts: torch.nn.Module) -> torch.Tensor:
    """The gate/up (or up) weights as an (E, H, N) view, whatever the stored orientation."""
    w = experts.gate_up_proj if experts.has_gate else experts.up_proj
    return w if experts.is_transposed else w.transpose(-2, -1)


def down_weight_EIH(experts: torch.nn.Module) -> torch.Tensor:
    """The down weights as an (E, I, H) view."""
    w = experts.down_proj
    return w if experts.is_transposed else w.transpose(-2, -1)


def up_bias_EN(experts: torch.nn.Module) -> torch.Tensor | None:
    if not experts.has_bias:
        return None
    return experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias


def down_bias_EH(experts: torch.nn.Module) -> torch.Tensor | None:
    return experts.down_proj_bias if experts.has_bias else None


def activate(experts: torch.nn.Module, h_SN: torch.Tensor) -> torch.Tensor:
    """Gate (S, 2I) -> (S, I) with the module's own gate function, or apply the plain activation."""
    return experts._apply_gate(h_SN) if experts.has_gate else experts.act_fn(h_SN)


def post_expert_norm(experts: torch.nn.Module, y_SH: torch.Tensor) -> torch.Tensor:
    # transformers < 5.23 has no post-expert norm flag at all
    return experts.post_expert_norm(y_SH) if getattr(experts, "has_post_expert_norm", False) else y_SH


def check_inputs(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor,
    *, check_range: bool = True,
) -> None:
    """Raise a clear error for inputs no backend can compute on.

    Shapes, dtypes and devices are checked from metadata. The expert-index range needs the data:
    on CPU it is checked here; on an accelerator it is an asynchronous device assert, so no backend
    gains a host synchronisation (and CUDA graph capture keeps working). `check_range=False` skips it
    (a backend that cannot afford even the device assert's kernels says so in its docstring).
    """
    w_down = experts.down_proj
    E, H = num_experts(experts), up_weight_EHN(experts).shape[1]
    if x_TH.dim() != 2:
        raise ValueError(f"hidden states must be 2-D (tokens, hidden), got shape {tuple(x_TH.shape)}")
    if x_TH.shape[1] != H:
        raise ValueError(f"hidden states have hidden size {x_TH.shape[1]}, the experts expect {H}")
    if topk_ids_TK.dim() != 2 or topk_ids_TK.shape[0] != x_TH.shape[0]:
        raise ValueError(f"top_k_index must be (tokens={x_TH.shape[0]}, k), got shape {tuple(topk_ids_TK.shape)}")
    if topk_weights_TK.shape != topk_ids_TK.shape:
        raise ValueError(f"top_k_weights shape {tuple(topk_weights_TK.shape)} != top_k_index shape "
                         f"{tuple(topk_ids_TK.shape)}")
    if topk_ids_TK.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"top_k_index must be an integer tensor, got {topk_ids_TK.dtype}")
    if not x_TH.dtype.is_floating_point or not topk_weights_TK.dtype.is_floating_point:
        raise TypeError(f"hidden states and top_k_weights must be floating, got {x_TH.dtype} and "
                        f"{topk_weights_TK.dtype}")
    if x_TH.dtype != w_down.dtype:
        raise TypeError(f"hidden states are {x_TH.dtype} but the expert weights are {w_down.dtype}")
    for name, t in (("hidden states", x_TH), ("top_k_index", topk_ids_TK), ("top_k_weights", topk_weights_TK)):
        if t.device != w_down.device:
            raise ValueError(f"{name} are on {t.device} but the expert weights are on {w_down.device}")
    if not check_range or topk_ids_TK.numel() == 0 or torch.compiler.is_compiling():
        return
    in_range = (topk_ids_TK.min() >= 0) & (topk_ids_TK.max() < E)
    if topk_ids_TK.device.type == "cpu":
        if not bool(in_range):
            raise IndexError(f"top_k_index values must lie in [0, {E}), got min {int(topk_ids_TK.min())} "
                             f"max {int(topk_ids_TK.max())}")
    else:
        torch._assert_async(in_range, f"top_k_index values must lie in [0, {E})")
