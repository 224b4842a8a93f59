"""Every backend is differentiable: its gradients (hidden states, expert weights and biases, routing weights)
match eager's in fp32, and pass a float64 finite-difference check.

Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_backends import CASES, LAYOUTS, Case, make_experts, make_inputs

from moe_lab import Experts, ExpertsLayout, get_backend, relative_error

pytestmark = pytest.mark.needs_grad


def gradients(backend: str, experts: Experts, x_TH, ids_TK, weights_TK, grad_out_TH) -> dict[str, torch.Tensor]:
    """d(sum(out * grad_out)) with respect to every input that carries one, by name."""
    experts = copy.deepcopy(experts)
    x_TH = x_TH.detach().clone().requires_grad_(True)
    weights_TK = weights_TK.detach().clone().requires_grad_(True)
    out_TH = get_backend(backend)(experts, x_TH, ids_TK, weights_TK)
    (out_TH * grad_out_TH).sum().backward()
    return {"hidden_states": x_TH.grad, "top_k_weights": weights_TK.grad,
            **{name: p.grad for name, p in experts.named_parameters()}}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("case", [CASES["unaligned"], CASES["experts_without_tokens"], CASES["hot_expert"]],
                         ids=["unaligned", "sparse", "hot"])
def test_gradients_match_eager(backend, device, case, layout, rtol, seed):
    dtype = torch.float32
    experts = make_experts(case, layout, dtype, device, seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, dtype, device, seed)
    grad_out_TH = torch.randn(x_TH.shape, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    want = gradients("eager", experts, x_TH, ids_TK, weights_TK, grad_out_TH)
    got = gradients(backend, experts, x_TH, ids_TK, weights_TK, grad_out_TH)
    assert got.keys() == want.keys()
    hit_E = torch.zeros(case.E, dtype=torch.bool).index_fill_(0, ids_TK.flatten().long().cpu(), True)
    for name, g in got.items():
        assert g is not None, f"{backend}: no gradient for {name}"
        assert g.shape == want[name].shape and g.dtype == want[name].dtype, name
        err = relative_error(g, want[name])
        assert err <= rtol[dtype], f"{backend} {layout}: d/d{name} relative error {err:.3g} > {rtol[dtype]:g}"
        if g.dim() >= 2 and g.shape[0] == case.E and name != "top_k_weights":  # per-expert parameters
            assert not g[~hit_E.to(g.device)].any(), f"{backend}: experts without tokens got a {name} gradient"


@pytest.mark.parametrize("layout", [LAYOUTS["gated_silu"], LAYOUTS["everything"], LAYOUTS["plain_relu"]],
                         ids=["gated_silu", "everything", "plain_relu"])
def test_gradcheck_float64(backend, device, layout, seed):
    """Finite differences in float64 (grouped_mm then takes its loop fallback and that op's own backward)."""
    case = Case(E=3, H=5, I=4, K=2, T=4)
    experts = make_experts(case, layout, torch.float64, device, seed)
    experts.backend = backend
    x_TH, ids_TK, weights_TK = make_inputs(case, torch.float64, device, seed)
    names = [n for n, _ in experts.named_parameters()]

    def f(x_TH, weights_TK, *params):
        return torch.func.functional_call(experts, dict(zip(names, params)), (x_TH, ids_TK, weights_TK))

    inputs = (x_TH, weights_TK.double(), *(p.detach() for p in experts.parameters()))
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_relu_gate_layout_has_its_own_gradient(seed):
    """The gradients differ between layouts: a test that passed by comparing zeros would fail here."""
    case = CASES["unaligned"]
    x_TH, ids_TK, weights_TK = make_inputs(case, torch.float32, "cpu", seed)
    grad_out_TH = torch.randn(x_TH.shape, generator=torch.Generator().manual_seed(seed))
    a = gradients("eager", make_experts(case, ExpertsLayout(), torch.float32, "cpu", seed), x_TH, ids_TK, weights_TK,
                  grad_out_TH)
    b = gradients("eager", make_experts(case, ExpertsLayout(gate_fn="relu"), torch.float32, "cpu", seed), x_TH,
                  ids_TK, weights_TK, grad_out_TH)
    for name in a:
        assert a[name].abs().sum() > 0 and not torch.allclose(a[name], b[name]), name
