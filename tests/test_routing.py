"""Routing: the top-k softmax router and the seeded synthetic routings.

Legend: T tokens, E experts, K top-k.
"""

from __future__ import annotations

import pytest
import torch

from moe_lab import ROUTINGS, synthetic_routing, topk_softmax

# (T, E, K): ordinary, K=1, K=E, E=1, more experts than pairs, no tokens
SIZES = [(64, 8, 2), (32, 8, 1), (16, 4, 4), (8, 1, 1), (3, 64, 6), (0, 8, 2)]


def assert_k_distinct_experts(ids_TK: torch.Tensor, E: int):
    assert ids_TK.dtype == torch.int64
    assert ((ids_TK >= 0) & (ids_TK < E)).all()
    sorted_TK = ids_TK.sort(dim=1).values
    assert (sorted_TK[:, 1:] != sorted_TK[:, :-1]).all(), "an expert picked twice for one token"


def counts(ids_TK: torch.Tensor, E: int) -> torch.Tensor:
    return torch.bincount(ids_TK.flatten(), minlength=E)


@pytest.mark.parametrize(("T", "E", "K"), SIZES, ids=[f"T{t}-E{e}-K{k}" for t, e, k in SIZES])
@pytest.mark.parametrize("kind", ROUTINGS)
def test_k_distinct_experts_and_weights(kind, T, E, K):
    ids_TK, weights_TK = synthetic_routing(kind, T, E, K, seed=3)
    assert ids_TK.shape == weights_TK.shape == (T, K)
    assert_k_distinct_experts(ids_TK, E)
    assert weights_TK.dtype == torch.float32 and (weights_TK > 0).all()
    torch.testing.assert_close(weights_TK.sum(dim=1), torch.ones(T))


@pytest.mark.parametrize("kind", ROUTINGS)
def test_seeded_and_reproducible(kind):
    a = synthetic_routing(kind, 50, 16, 4, seed=7)
    b = synthetic_routing(kind, 50, 16, 4, seed=7)
    c = synthetic_routing(kind, 50, 16, 4, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    if kind != "balanced":  # balanced's experts are the round robin whatever the seed
        assert not torch.equal(a[0], c[0])
    # the global RNG is neither used nor disturbed
    torch.manual_seed(0)
    state = torch.get_rng_state()
    synthetic_routing(kind, 50, 16, 4, seed=7)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kind", ROUTINGS)
def test_device_argument(kind):
    ids_TK, weights_TK = synthetic_routing(kind, 5, 4, 2, device="meta")
    assert ids_TK.device.type == weights_TK.device.type == "meta"


def test_uniform_is_roughly_uniform():
    T, E, K = 4000, 8, 2
    c = counts(synthetic_routing("uniform", T, E, K, seed=1)[0], E).float()
    assert (c - T * K / E).abs().max() < 0.1 * T * K / E


def test_skewed_is_skewed():
    T, E, K = 4000, 16, 2
    c = counts(synthetic_routing("skewed", T, E, K, seed=1, zipf_exponent=1.2)[0], E)
    assert c[0] > 3 * c[-1]
    assert c[: E // 4].sum() > c.sum() / 2, "the top quarter of experts should take most pairs"
    # rank-ordered: compare the popularity of the first and second halves, and neighbours on average
    assert c[: E // 2].sum() > 2 * c[E // 2:].sum()
    assert (c[:-1] >= c[1:]).float().mean() > 0.7


def test_skew_grows_with_the_exponent():
    T, E, K = 4000, 16, 2
    share = [counts(synthetic_routing("skewed", T, E, K, seed=2, zipf_exponent=s)[0], E)[0] / (T * K)
             for s in (0.0, 1.0, 2.0)]
    assert share[0] < share[1] < share[2]
    assert abs(share[0] - 1 / E) < 0.02  # exponent 0 is uniform


def test_hot_includes_expert_zero():
    T, E, K = 500, 8, 3
    ids_TK, _ = synthetic_routing("hot", T, E, K, seed=1)
    assert (ids_TK == 0).any(dim=1).all()
    c = counts(ids_TK, E)
    assert c[0] == T and (c[1:] > 0).all()  # the other k-1 are spread over every other expert
    ids_T1, _ = synthetic_routing("hot", 10, 8, 1)
    assert (ids_T1 == 0).all()


@pytest.mark.parametrize(("T", "E", "K"), [(64, 8, 2), (10, 7, 3), (5, 16, 4), (13, 4, 4), (1, 3, 2), (100, 60, 4)])
def test_balanced_is_balanced(T, E, K):
    ids_TK, _ = synthetic_routing("balanced", T, E, K)
    c = counts(ids_TK, E)
    assert c.max() - c.min() <= 1
    assert c.sum() == T * K


# --- the top-k softmax router --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("renormalize", [False, True], ids=["raw", "renormalized"])
@pytest.mark.parametrize("k", [1, 2, 8])
def test_topk_softmax(k, renormalize, dtype):
    T, E = 12, 8
    logits_TE = torch.randn(T, E, generator=torch.Generator().manual_seed(k)).to(dtype)
    ids_TK, weights_TK = topk_softmax(logits_TE, k, renormalize=renormalize)
    assert_k_distinct_experts(ids_TK, E)
    assert weights_TK.dtype == torch.float32 and weights_TK.shape == (T, k)
    probs_TE = torch.softmax(logits_TE.double(), dim=-1)
    # the k largest logits, largest first
    want_ids = logits_TE.float().topk(k, dim=-1).indices
    assert torch.equal(ids_TK.sort(dim=1).values, want_ids.sort(dim=1).values)
    assert (weights_TK[:, :-1] >= weights_TK[:, 1:]).all()
    kept_TK = probs_TE.gather(1, ids_TK)
    want_TK = kept_TK / kept_TK.sum(dim=1, keepdim=True) if renormalize else kept_TK
    torch.testing.assert_close(weights_TK.double(), want_TK, rtol=1e-5, atol=1e-6)
    if renormalize or k == E:
        torch.testing.assert_close(weights_TK.sum(dim=1), torch.ones(T))
    else:
        assert (weights_TK.sum(dim=1) < 1).all()
