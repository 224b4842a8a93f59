"""benchmarks/half_tile_cost.py: the routing that gives every expert the same number of pairs (CPU, no timing)."""

from __future__ import annotations

import half_tile_cost
import pytest
import torch


@pytest.mark.parametrize("R, E, K", [(576, 128, 8), (192, 60, 4), (1088, 64, 8), (5, 3, 3)])
def test_every_expert_gets_exactly_R_pairs_and_tokens_distinct_experts(R, E, K):
    ids_TK, w_TK = half_tile_cost.even_routing(R, E, K, "cpu")
    assert ids_TK.shape == (E * R // K, K) and w_TK.shape == ids_TK.shape
    assert torch.equal(torch.bincount(ids_TK.flatten(), minlength=E), torch.full((E,), R))
    assert all(len(set(row)) == K for row in ids_TK.tolist())


@pytest.mark.parametrize("R, E, K", [(3, 5, 2), (4, 2, 3)], ids=["no_whole_tokens", "k_above_e"])
def test_refuses_what_no_routing_can_give(R, E, K):
    with pytest.raises(ValueError, match="whole tokens"):
        half_tile_cost.even_routing(R, E, K, "cpu")
