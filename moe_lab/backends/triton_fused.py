"""`triton_fused`: moe_lab's own fused Triton kernels (CUDA; bf16, fp16 and fp32).

Prefill: pairs aligned by expert on the device, one gathered grouped GEMM for gate/up with the
gating in its epilogue (one write of the (P, I) intermediate), one grouped GEMM for down with the
routing weight in its epilogue, then the top-k sum. Decode (few pairs): two kernels, one program per
pair for gate/up and one per (token, hidden tile) for down + top-k sum; nothing sorted or padded.
Tile configs per token bucket come from tuned data in the package (`moe_lab.kernels.configs`); on an
H100, from 2048 to 16384 tokens, they name warp-specialized persistent GEMMs written in Gluon
(`moe_lab.kernels.ws_grouped`), which gather the token rows themselves and write the aligned order.

No host synchronisation anywhere (capturable in a CUDA graph): launch sizes come from shapes, and
the inputs are checked from metadata only. Expert ids must lie in [0, E) (not checked on the device).

Every layout of `ExpertsLayout` runs: gated (concatenated or interleaved) or not, transposed storage,
biases, post-expert norm (then the down kernel writes per-pair outputs and the norm, weighting and sum
follow in torch), silu / gelu / relu / gpt-oss clamped swiglu. A transformers experts module runs if
its gate is transformers' default one with a silu, gelu or relu activation, or gpt-oss's; anything
else is refused with an error naming it, never computed by another backend.

Forward only (`differentiable = False`): the output carries no gradient. CUDA only: `device_types`
lists where it runs, for test suites to skip it elsewhere. On CPU it runs only when the kernels were
imported under Triton's interpreter (`TRITON_INTERPRET=1`), for tests.
"""

from __future__ import annotations

import json
import os
import weakref

import torch

from moe_lab.backends.common import check_inputs, down_weight_EIH, num_experts
from moe_lab.devices import device_kind

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_ACT_CODES = {"silu": 0, "gelu": 1, "relu": 2, "gelu_tanh": 3, "clamped_swiglu": 4}


class UnsupportedLayoutError(NotImplementedError):
    """The experts module's layout (gate function, activation) has no fused kernel."""


def _activation_name(act_fn) -> str | None:
    """silu / gelu / gelu_tanh / relu for the activation modules and functions transformers and torch use."""
    import torch.nn.functional as F

    if act_fn in (F.silu,):
        return "silu"
    if act_fn in (F.relu,):
        return "relu"
    if act_fn in (F.gelu,):
        return "gelu"
    name = type(act_fn).__name__
    if name in ("SiLUActivation", "SiLU"):
        return "silu"
    if name == "ReLU":
        return "relu"
    if name == "GELU":  # torch.nn.GELU
        return "gelu_tanh" if getattr(act_fn, "approximate", "none") == "tanh" else "gelu"
    if name == "GELUActivation":  # transformers: F.gelu or its erf python twin
        return "gelu"
    if name in ("GELUTanh", "NewGELUActivation", "FastGELUActivation", "PytorchGELUTanh"):
        return "gelu_tanh"
    return None


def gate_spec(experts: torch.nn.Module):
    """The epilogue of the gate/up kernel for this module, or UnsupportedLayoutError naming what is not fused."""
    from moe_lab.kernels.ops import GateSpec

    gate_mode = (1 if experts.is_concatenated else 2) if experts.has_gate else 0
    layout = getattr(experts, "layout", None)
    if layout is not None and hasattr(layout, "gate_fn"):  # moe_lab's Experts
        return GateSpec(gate_mode, _ACT_CODES[layout.gate_fn], float(layout.swiglu_limit), float(layout.swiglu_alpha))
    cls = type(experts)
    if experts.has_gate and cls.__name__ == "GptOssExperts":
        return GateSpec(gate_mode, _ACT_CODES["clamped_swiglu"], float(experts.limit), float(experts.alpha))
    if experts.has_gate:
        from transformers.integrations.moe import _default_apply_gate

        if getattr(cls, "_apply_gate", None) is not _default_apply_gate:
            raise UnsupportedLayoutError(f"triton_fused: {cls.__name__} has its own _apply_gate, which has no fused "
                                         "kernel; use another backend")
    act = _activation_name(experts.act_fn)
    if act is None:
        raise UnsupportedLayoutError(f"triton_fused: activation {type(experts.act_fn).__name__} of {cls.__name__} has "
                                     "no fused kernel (silu, gelu, gelu_tanh, relu are fused); use another backend")
    return GateSpec(gate_mode, _ACT_CODES[act])


def _check(experts, x_TH, topk_ids_TK, topk_weights_TK) -> None:
    """common.check_inputs without its expert-range check (its kernels would cost the decode path ~10%:
    expert ids outside [0, E) give undefined rows), plus the dtypes the kernels run."""
    check_inputs(experts, x_TH, topk_ids_TK, topk_weights_TK, check_range=False)
    if x_TH.dtype not in DTYPES:
        raise TypeError(f"triton_fused runs bfloat16, float16 and float32, not {x_TH.dtype}")


def _runnable(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as err:
            raise RuntimeError("triton_fused needs the `triton` package (pip install 'moe-lab[triton]')") from err
        return
    if device.type == "cpu":
        try:
            import moe_lab.kernels.fused_moe  # noqa: F401  (builds the kernels, interpreted or not)
            from moe_lab.kernels import INTERPRETED
        except ImportError:
            INTERPRETED = False
        if INTERPRETED:
            return
    raise RuntimeError(f"triton_fused runs on CUDA devices only, not {device.type} (on CPU only under Triton's "
                       "interpreter, TRITON_INTERPRET=1 set before moe_lab.kernels is imported); "
                       "pick another backend, e.g. grouped_mm")


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {call metadata: Plan}


def _stored_weights(experts: torch.nn.Module):
    """(up, down, up bias, down bias) as stored, and the strides of their (E, N, H) and (E, H, I) views."""
    w_up = experts.gate_up_proj if experts.has_gate else experts.up_proj
    w_down = experts.down_proj
    u, d = w_up.stride(), w_down.stride()
    if experts.is_transposed:  # stored (E, H, N) and (E, I, H)
        up_strides, down_strides = (u[0], u[2], u[1]), (d[0], d[2], d[1])
    else:  # stored (E, N, H) and (E, H, I)
        up_strides, down_strides = (u[0], u[1], u[2]), (d[0], d[1], d[2])
    if experts.has_bias:
        b_up = experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias
        b_down = experts.down_proj_bias
        return w_up, w_down, b_up, b_down, up_strides, down_strides, (*b_up.stride(), *b_down.stride())
    return w_up, w_down, None, None, up_strides, down_strides, None


def _aligned(*ts) -> tuple[bool, ...]:
    return tuple([t is None or t.data_ptr() % 16 == 0 for t in ts])  # a list: faster than a generator here


def triton_fused_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor,
    *, config: dict | None = None,
) -> torch.Tensor:
    """out[t] = sum_k w[t,k] * expert_{ids[t,k]}(x[t]); `config` overrides the tuned tile config (for tuning).

    The checks, the layout's epilogue, the config and the launch plan are worked out once per module and
    call metadata (shapes, strides, dtypes, device, 16-byte alignment) and cached with the module.
    """
    w_up, w_down, b_up, b_down, up_strides, down_strides, bias_strides = _stored_weights(experts)
    if not topk_ids_TK.is_contiguous():
        topk_ids_TK = topk_ids_TK.contiguous()
    if not topk_weights_TK.is_contiguous():
        topk_weights_TK = topk_weights_TK.contiguous()
    key = (x_TH.shape, x_TH.stride(), x_TH.dtype, x_TH.device, topk_ids_TK.shape, topk_ids_TK.dtype,
           topk_weights_TK.shape, topk_weights_TK.dtype, w_up.dtype, up_strides, down_strides, bias_strides,
           _aligned(x_TH, topk_ids_TK, topk_weights_TK, w_up, w_down, b_up, b_down),
           _config_file() if config is None else json.dumps(config, sort_keys=True))
    plans = _PLANS.get(experts)
    if plans is None:
        plans = _PLANS[experts] = {}
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _build_plan(experts, x_TH, topk_ids_TK, topk_weights_TK, config, up_strides,
                                        down_strides, bias_strides)
    norm = plan.reduce is False
    out = plan(x_TH, topk_ids_TK, topk_weights_TK, w_up, w_down, b_up, b_down)
    if not norm:
        return out
    T, K = topk_ids_TK.shape
    y_SH = experts.post_expert_norm(out)  # unweighted per-pair outputs, (t, k) order
    y_SH = y_SH.float() * topk_weights_TK.reshape(-1, 1).float()
    return y_SH.view(T, K, -1).sum(dim=1).to(x_TH.dtype)


def ran_warp_specialized(experts: torch.nn.Module, config: dict) -> bool:
    """Whether a call of `experts` with `config` ran its `"ws"` entry's warp-specialized GEMMs (the plan built
    for it runs the config's Triton tiles where `ops.ws_refusal` turns the entry down)."""
    key = json.dumps(config, sort_keys=True)
    return any(k[-1] == key and plan.ws for k, plan in _PLANS.get(experts, {}).items())


def _config_file() -> str | None:
    """The tuned-config file named by the environment (part of the plan key: set it, and plans follow)."""
    from moe_lab.kernels.configs import CONFIG_ENV  # lazily: moe_lab.kernels decides on the interpreter

    return os.environ.get(CONFIG_ENV)


def _build_plan(experts, x_TH, topk_ids_TK, topk_weights_TK, config, up_strides, down_strides, bias_strides):
    _runnable(x_TH.device)
    _check(experts, x_TH, topk_ids_TK, topk_weights_TK)
    spec = gate_spec(experts)
    from moe_lab.kernels.configs import get_config
    from moe_lab.kernels.l2_temps import l2_hints_available
    from moe_lab.kernels.ops import Plan, ws_available
    from moe_lab.kernels.pdl import pdl_available

    T, K = topk_ids_TK.shape
    E, H = num_experts(experts), x_TH.shape[1]
    I = down_weight_EIH(experts).shape[1]
    if config is None:
        config = get_config(device_kind(x_TH.device), str(x_TH.dtype).removeprefix("torch."), T, E, H, I, K)
    norm = bool(getattr(experts, "has_post_expert_norm", False))
    return Plan(T, K, E, H, I, x_TH.dtype, spec, config, up_strides, down_strides, bias_strides,
                tuple(x_TH.stride()), reduce=not norm, pdl=pdl_available(x_TH.device),
                ws_sms=ws_available(x_TH.device), l2_hints=l2_hints_available(x_TH.device))


triton_fused_experts.device_types = ("cuda",)
triton_fused_experts.dtypes = DTYPES  # others (float64) are refused
triton_fused_experts.differentiable = False  # forward only: the Triton kernels have no backward
