"""Bad input gets a clear error that names the problem, from every backend and every entry point.

CPU only: out-of-range expert ids are a device-side assert on an accelerator, which no test can survive.
Legend: T tokens, H hidden, I intermediate, E experts, K top-k.
"""

from __future__ import annotations

import re

import pytest
import torch

from moe_lab import (BACKENDS, ROUTINGS, Experts, ExpertsLayout, build_config, build_experts, build_model,
                     get_backend, get_shape, model_shapes, synthetic_routing, topk_softmax)
from moe_lab.shapes import build_hf_experts, hf_experts_class

E, H, I, K, T = 6, 16, 8, 2, 5  # noqa: E741


def good_inputs():
    gen = torch.Generator().manual_seed(0)
    ids_TK, weights_TK = synthetic_routing("uniform", T, E, K, seed=0)
    return torch.randn(T, H, generator=gen), ids_TK, weights_TK


# (what is wrong, how to break (x, ids, weights), error type, what the message must say)
BAD_INPUTS = {
    "hidden_1d": (lambda x, i, w: (x[0], i, w), ValueError, r"2-D.*\(16,\)"),
    "hidden_3d": (lambda x, i, w: (x[None], i, w), ValueError, r"2-D.*\(1, 5, 16\)"),
    "hidden_size": (lambda x, i, w: (x[:, :12], i, w), ValueError, r"hidden size 12.*expect 16"),
    "ids_1d": (lambda x, i, w: (x, i[:, 0], w), ValueError, r"top_k_index.*tokens=5.*\(5,\)"),
    "ids_tokens": (lambda x, i, w: (x, i[:3], w[:3]), ValueError, r"top_k_index.*tokens=5.*\(3, 2\)"),
    "weights_shape": (lambda x, i, w: (x, i, w[:, :1]), ValueError, r"top_k_weights shape \(5, 1\).*\(5, 2\)"),
    "ids_float": (lambda x, i, w: (x, i.float(), w), TypeError, r"top_k_index.*integer.*float32"),
    "weights_int": (lambda x, i, w: (x, i, i), TypeError, r"floating.*int64"),
    "hidden_int": (lambda x, i, w: (x.long(), i, w), TypeError, r"floating.*int64"),
    "hidden_dtype": (lambda x, i, w: (x.half(), i, w), TypeError, r"hidden states are torch.float16.*weights are "
                                                                    r"torch.float32"),
    "hidden_device": (lambda x, i, w: (x.to("meta"), i, w), ValueError, r"hidden states are on meta.*on cpu"),
    "ids_device": (lambda x, i, w: (x, i.to("meta"), w), ValueError, r"top_k_index are on meta.*on cpu"),
    "weights_device": (lambda x, i, w: (x, i, w.to("meta")), ValueError, r"top_k_weights are on meta.*on cpu"),
    "expert_too_big": (lambda x, i, w: (x, torch.where(i == i[2, 1], E, i), w), IndexError, rf"\[0, {E}\).*max {E}"),
    "expert_negative": (lambda x, i, w: (x, torch.where(i == i[0, 0], -1, i), w), IndexError, r"\[0, 6\).*min -1"),
}


@pytest.mark.parametrize("layout", [ExpertsLayout(), ExpertsLayout(is_transposed=True, has_bias=True)],
                         ids=["plain", "transposed"])
@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_are_named(backend, bad, layout):
    breaks, error, message = bad
    experts = Experts(E, H, I, layout)
    with pytest.raises(error, match=message):
        get_backend(backend)(experts, *breaks(*good_inputs()))


def test_good_inputs_pass(backend):
    """The baseline the bad inputs break: it runs."""
    assert get_backend(backend)(Experts(E, H, I), *good_inputs()).shape == (T, H)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown experts backend 'fast'") as info:
        get_backend("fast")
    for name in BACKENDS:
        assert name in str(info.value)
    experts = Experts(E, H, I, backend="fast")
    with pytest.raises(ValueError, match="valid: .*grouped_mm"):
        experts(*good_inputs())


@pytest.mark.parametrize("call", [get_shape, build_experts, build_config, build_hf_experts],
                         ids=lambda f: f.__name__)
def test_unknown_shape_lists_the_valid_ones(call):
    with pytest.raises(ValueError, match="unknown model shape 'gpt-5'") as info:
        call("gpt-5")
    for name in model_shapes():
        assert name in str(info.value)


def test_unknown_shape_in_build_model():
    with pytest.raises(ValueError, match="unknown model shape 'gpt-5'.*tiny"):
        build_model("gpt-5")


@pytest.mark.parametrize("num_layers", [0, -1, 3])
def test_bad_layer_count(num_layers):
    with pytest.raises(ValueError, match=rf"num_layers must be in \[1, 2\] for tiny, got {num_layers}"):
        build_config("tiny", num_layers=num_layers)


def test_bad_layouts():
    with pytest.raises(ValueError, match="unknown gate_fn 'swish'; valid: silu, gelu, relu, clamped_swiglu"):
        ExpertsLayout(gate_fn="swish")
    with pytest.raises(ValueError, match="'clamped_swiglu' needs has_gate=True"):
        ExpertsLayout(has_gate=False, gate_fn="clamped_swiglu")


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(num_experts=0), ValueError, "num_experts must be a positive int, got 0"),
    (dict(hidden_size=-4), ValueError, "hidden_size must be a positive int, got -4"),
    (dict(intermediate_size=8.0), ValueError, "intermediate_size must be a positive int, got 8.0"),
    (dict(dtype=torch.int32), TypeError, "floating dtype, got torch.int32"),
], ids=["no_experts", "negative_hidden", "float_intermediate", "int_dtype"])
def test_bad_experts_sizes(kwargs, error, message):
    args = dict(num_experts=E, hidden_size=H, intermediate_size=I) | kwargs
    dtype = args.pop("dtype", torch.float32)
    with pytest.raises(error, match=re.escape(message)):
        Experts(**args, dtype=dtype)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("zipf", 8, 4, 2), {}, "unknown routing 'zipf'; valid: " + ", ".join(ROUTINGS)),
    (("uniform", 8, 4, 0), {}, "top_k must be in [1, num_experts=4], got 0"),
    (("uniform", 8, 4, 5), {}, "top_k must be in [1, num_experts=4], got 5"),
    (("hot", -1, 4, 2), {}, "num_tokens >= 0 and num_experts >= 1, got -1 and 4"),
    (("balanced", 8, 0, 1), {}, "num_tokens >= 0 and num_experts >= 1, got 8 and 0"),
], ids=["unknown_kind", "k0", "k_above_e", "negative_tokens", "no_experts"])
def test_bad_routing_args(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synthetic_routing(*args, **kwargs)


@pytest.mark.parametrize("k", [0, 5])
def test_bad_topk(k):
    with pytest.raises(ValueError, match=re.escape(f"top-k must be in [1, 4], got {k}")):
        topk_softmax(torch.randn(3, 4), k)


def test_hf_experts_class_of_a_dense_family():
    from transformers import LlamaConfig

    with pytest.raises(ValueError, match="modeling_llama has no experts class decorated with "
                                         "@use_experts_implementation"):
        hf_experts_class(LlamaConfig())
