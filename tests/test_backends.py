"""Every backend equals the float64 reference, over awkward shapes, every layout and three dtypes.

Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from moe_lab import Experts, ExpertsLayout, get_backend, reference_experts, relative_error, synthetic_routing

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]


@dataclass(frozen=True)
class Case:
    E: int
    H: int
    I: int  # noqa: E741
    K: int
    T: int
    routing: str = "uniform"  # a synthetic routing kind, or "one_expert": every token to expert E // 2 only
    hidden: str = "contiguous"  # or "strided" (every other column) or "transposed" (a (H, T) tensor's .T)
    ids_dtype: torch.dtype = torch.int64
    routing_layout: str = "contiguous"  # or "transposed": ids and weights as views of (K, T) tensors


CASES = {
    "small": Case(E=8, H=64, I=48, K=2, T=16),
    "one_token": Case(E=8, H=64, I=48, K=2, T=1),
    "no_tokens": Case(E=4, H=32, I=16, K=2, T=0),
    "experts_without_tokens": Case(E=32, H=32, I=24, K=2, T=3),  # at most 6 of 32 experts hit
    "hot_expert": Case(E=8, H=32, I=24, K=3, T=20, routing="hot"),
    "one_expert_takes_all": Case(E=6, H=32, I=24, K=1, T=9, routing="one_expert"),
    "top1": Case(E=8, H=32, I=24, K=1, T=12),
    "k_equals_e": Case(E=4, H=32, I=24, K=4, T=7),
    "single_expert": Case(E=1, H=32, I=24, K=1, T=5),
    "unaligned": Case(E=5, H=37, I=19, K=2, T=13),  # neither H nor I a multiple of 8 or 16
    "unaligned_odd": Case(E=3, H=9, I=5, K=2, T=4),
    "h_aligned_i_not": Case(E=4, H=48, I=12, K=2, T=6),
    "skewed": Case(E=16, H=32, I=16, K=4, T=24, routing="skewed"),
    "balanced": Case(E=8, H=32, I=16, K=2, T=24, routing="balanced"),
    "many_tokens": Case(E=8, H=32, I=16, K=2, T=96),
    "strided_hidden": Case(E=6, H=40, I=24, K=2, T=10, hidden="strided"),
    "transposed_hidden": Case(E=6, H=40, I=24, K=2, T=10, hidden="transposed"),
    "int32_ids": Case(E=6, H=32, I=16, K=2, T=10, ids_dtype=torch.int32),
    "noncontiguous_routing": Case(E=6, H=32, I=16, K=3, T=10, routing_layout="transposed"),
}

CLAMPED_SWIGLU = dict(gate_fn="clamped_swiglu", swiglu_limit=0.5)  # a low limit so that the clamps bite
LAYOUTS = {
    "gated_silu": ExpertsLayout(),
    "gated_gelu": ExpertsLayout(gate_fn="gelu"),
    "gated_relu": ExpertsLayout(gate_fn="relu"),
    "interleaved": ExpertsLayout(is_concatenated=False),
    "transposed": ExpertsLayout(is_transposed=True),
    "bias": ExpertsLayout(has_bias=True),
    "post_expert_norm": ExpertsLayout(has_post_expert_norm=True),
    "plain_relu": ExpertsLayout(has_gate=False, gate_fn="relu"),
    "plain_gelu_transposed_bias": ExpertsLayout(has_gate=False, gate_fn="gelu", is_transposed=True, has_bias=True),
    "clamped_swiglu": ExpertsLayout(is_concatenated=False, **CLAMPED_SWIGLU),
    "gpt_oss": ExpertsLayout(is_concatenated=False, is_transposed=True, has_bias=True, **CLAMPED_SWIGLU),
    "everything": ExpertsLayout(is_concatenated=False, is_transposed=True, has_bias=True, has_post_expert_norm=True,
                                **CLAMPED_SWIGLU),
}


def make_experts(case: Case, layout: ExpertsLayout, dtype, device, seed: int) -> Experts:
    experts = Experts(case.E, case.H, case.I, layout, dtype=dtype, device=device, seed=seed)
    if layout.has_post_expert_norm:  # not the all-ones default, so that the norm's weight matters
        with torch.no_grad():
            w = 1 + 0.2 * torch.randn(case.H, generator=torch.Generator().manual_seed(seed + 1))
            experts.post_expert_norm.weight.copy_(w)
    return experts


def make_inputs(case: Case, dtype, device, seed: int):
    """(x_TH, topk_ids_TK, topk_weights_TK), fresh and seeded, in the memory layouts `case` asks for."""
    gen = torch.Generator().manual_seed(seed)
    T, H, K, E = case.T, case.H, case.K, case.E
    if case.hidden == "strided":
        x_TH = torch.randn(T, 2 * H, generator=gen)[:, ::2]
    elif case.hidden == "transposed":
        x_TH = torch.randn(H, T, generator=gen).T
    else:
        x_TH = torch.randn(T, H, generator=gen)
    x_TH = x_TH.to(device=device, dtype=dtype)  # keeps the strides
    if case.routing == "one_expert":
        ids_TK = torch.full((T, K), E // 2, dtype=torch.int64)
        weights_TK = torch.rand(T, K, generator=gen)
    else:
        ids_TK, weights_TK = synthetic_routing(case.routing, T, E, K, seed=seed)
    if case.routing_layout == "transposed":
        ids_TK, weights_TK = ids_TK.T.contiguous().T, weights_TK.T.contiguous().T
    return x_TH, ids_TK.to(device=device, dtype=case.ids_dtype), weights_TK.to(device)


def run(backend: str, experts, x_TH, ids_TK, weights_TK):
    with torch.no_grad():
        return get_backend(backend)(experts, x_TH, ids_TK, weights_TK)


def assert_close_to_reference(out_TH, experts, x_TH, ids_TK, weights_TK, tol: float, what: str):
    assert out_TH.shape == x_TH.shape, what
    assert out_TH.dtype == x_TH.dtype and out_TH.device == x_TH.device, what
    ref_TH = reference_experts(experts, x_TH, ids_TK, weights_TK)
    err = relative_error(out_TH, ref_TH)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def test_case_flags_do_what_they_say():
    x, ids, w = make_inputs(CASES["strided_hidden"], torch.float32, "cpu", 0)
    assert not x.is_contiguous()
    x, ids, w = make_inputs(CASES["noncontiguous_routing"], torch.float32, "cpu", 0)
    assert not ids.is_contiguous() and not w.is_contiguous()
    x, ids, w = make_inputs(CASES["experts_without_tokens"], torch.float32, "cpu", 0)
    assert ids.unique().numel() < CASES["experts_without_tokens"].E


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(backend, device, case, dtype, rtol, seed):
    experts = make_experts(case, ExpertsLayout(), dtype, device, seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, dtype, device, seed)
    out_TH = run(backend, experts, x_TH, ids_TK, weights_TK)
    assert_close_to_reference(out_TH, experts, x_TH, ids_TK, weights_TK, rtol[dtype], f"{backend} {case} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("case", [CASES["unaligned"], CASES["experts_without_tokens"]], ids=["unaligned", "sparse"])
def test_every_layout_matches_reference(backend, device, case, layout, dtype, rtol, seed):
    experts = make_experts(case, layout, dtype, device, seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, dtype, device, seed)
    out_TH = run(backend, experts, x_TH, ids_TK, weights_TK)
    assert_close_to_reference(out_TH, experts, x_TH, ids_TK, weights_TK, rtol[dtype], f"{backend} {layout} {dtype}")


def test_experts_module_dispatches_to_its_backend(backend, device, seed):
    case = CASES["small"]
    experts = make_experts(case, ExpertsLayout(), torch.float32, device, seed)
    experts.backend = backend
    x_TH, ids_TK, weights_TK = make_inputs(case, torch.float32, device, seed)
    with torch.no_grad():
        torch.testing.assert_close(experts(x_TH, ids_TK, weights_TK), run(backend, experts, x_TH, ids_TK, weights_TK),
                                   rtol=0, atol=0)
    assert backend in repr(experts)


def test_backend_leaves_its_inputs_alone(backend, device, seed):
    case = CASES["hot_expert"]
    experts = make_experts(case, LAYOUTS["everything"], torch.float32, device, seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, torch.float32, device, seed)
    before = [t.clone() for t in (x_TH, ids_TK, weights_TK, *experts.parameters())]
    run(backend, experts, x_TH, ids_TK, weights_TK)
    for a, b in zip(before, (x_TH, ids_TK, weights_TK, *experts.parameters())):
        assert torch.equal(a, b)


# --- the reference itself, against the formula written out token by token ---------------------------------------

def expert_formula(layout: ExpertsLayout, experts: Experts, e: int, x_H: torch.Tensor) -> torch.Tensor:
    """down_e(act(gate_e(x)) * up_e(x)) for one token, in float64, read straight from the stored weights."""
    p = {n: t.detach().double() for n, t in experts.named_parameters()}
    w_up = p["gate_up_proj" if layout.has_gate else "up_proj"][e]
    h = x_H @ w_up if layout.is_transposed else w_up @ x_H
    if layout.has_bias:
        h = h + p["gate_up_proj_bias" if layout.has_gate else "up_proj_bias"][e]
    if layout.has_gate:
        n = h.shape[0] // 2
        gate, up = (h[:n], h[n:]) if layout.is_concatenated else (h[0::2], h[1::2])
        if layout.gate_fn == "clamped_swiglu":
            gate = torch.minimum(gate, torch.tensor(layout.swiglu_limit, dtype=gate.dtype))
            up = up.clamp(-layout.swiglu_limit, layout.swiglu_limit)
            a = (up + 1) * gate / (1 + torch.exp(-layout.swiglu_alpha * gate))
        else:
            a = {"silu": lambda g: g / (1 + torch.exp(-g)), "gelu": lambda g: 0.5 * g * (1 + torch.erf(g / 2**0.5)),
                 "relu": lambda g: g.clamp_min(0)}[layout.gate_fn](gate) * up
    else:
        a = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
             "relu": torch.relu}[layout.gate_fn](h)
    w_down = p["down_proj"][e]
    y = a @ w_down if layout.is_transposed else w_down @ a
    if layout.has_bias:
        y = y + p["down_proj_bias"][e]
    if layout.has_post_expert_norm:
        y = y / torch.sqrt((y * y).mean() + 1e-6) * p["post_expert_norm.weight"]
    return y


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_reference_is_the_formula(layout, seed):
    case = CASES["hot_expert"]
    experts = make_experts(case, layout, torch.float32, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, torch.float32, "cpu", seed)
    ref_TH = reference_experts(experts, x_TH, ids_TK, weights_TK)
    assert ref_TH.dtype == torch.float64
    for t in range(case.T):
        want_H = sum(weights_TK[t, k].double() * expert_formula(layout, experts, int(ids_TK[t, k]), x_TH[t].double())
                     for k in range(case.K))
        torch.testing.assert_close(ref_TH[t], want_H, rtol=1e-10, atol=1e-12)


def test_relative_error():
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(ref, ref) == 0
    assert relative_error(ref + torch.tensor([0.0, 0.5]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([float("nan"), 4.0]), ref) == float("inf")


FP64_RTOL = 1e-12  # float64 inputs are computed (and accumulated) in float64, not through float32


@pytest.mark.parametrize("dtype", [torch.float64], ids=["fp64"])
@pytest.mark.parametrize("layout", [LAYOUTS["gated_silu"], LAYOUTS["everything"]], ids=["gated_silu", "everything"])
def test_float64_stays_float64(backend, device, layout, dtype, seed):
    case = CASES["unaligned"]
    experts = make_experts(case, layout, dtype, device, seed)
    x_TH, ids_TK, weights_TK = make_inputs(case, dtype, device, seed)
    out_TH = run(backend, experts, x_TH, ids_TK, weights_TK)
    assert_close_to_reference(out_TH, experts, x_TH, ids_TK, weights_TK, FP64_RTOL, f"{backend} float64")


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_the_reference_in_token_chunks_equals_it_in_one(layout, monkeypatch, seed):
    """reference_experts bounds its memory by taking the tokens a chunk at a time; chunks of 1 to 3 tokens (an
    unaligned last chunk) give what one chunk of all of them gives."""
    import moe_lab.reference

    c = CASES["unaligned_odd"]
    experts = make_experts(c, LAYOUTS[layout], torch.float32, "cpu", seed)
    x_TH, ids_TK, weights_TK = make_inputs(c, torch.float32, "cpu", seed)
    whole_TH = reference_experts(experts, x_TH, ids_TK, weights_TK)
    w_up = experts.gate_up_proj if experts.has_gate else experts.up_proj
    assert w_up.requires_grad and not whole_TH.requires_grad  # no graph holding the chunks' intermediates
    per_token = 8 * c.E * max(w_up.shape[1:])  # float64 bytes of a token's widest (E, N) intermediate
    assert c.T % 3 and c.T > 3
    for tokens in (1, 3):
        monkeypatch.setattr(moe_lab.reference, "CHUNK_BYTES", tokens * per_token)
        chunked_TH = reference_experts(experts, x_TH, ids_TK, weights_TK)
        assert torch.allclose(chunked_TH, whole_TH, rtol=1e-12, atol=1e-12), tokens
