"""Routing: the top-k softmax router and seeded synthetic routings for experiments.

Every function returns (topk_ids_TK int64, topk_weights_TK float32) with K distinct experts per token.
"""

from __future__ import annotations

import torch

ROUTINGS = ("uniform", "skewed", "hot", "balanced")


def topk_softmax(logits_TE: torch.Tensor, k: int, renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts, keep the top k; optionally renormalise the kept weights to sum to 1."""
    if not 1 <= k <= logits_TE.shape[-1]:
        raise ValueError(f"top-k must be in [1, {logits_TE.shape[-1]}], got {k}")
    probs_TE = torch.softmax(logits_TE, dim=-1, dtype=torch.float32)
    weights_TK, ids_TK = probs_TE.topk(k, dim=-1)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return ids_TK, weights_TK


def synthetic_routing(
    kind: str,
    num_tokens: int,
    num_experts: int,
    top_k: int,
    *,
    seed: int = 0,
    zipf_exponent: float = 1.2,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible routing of `num_tokens` tokens to `top_k` distinct experts out of `num_experts`.

    - `uniform`: each token picks k experts uniformly at random;
    - `skewed`: expert e is picked with probability proportional to 1 / (e+1)**zipf_exponent;
    - `hot`: expert 0 is in every token's top-k, the other k-1 are uniform;
    - `balanced`: round-robin, so every expert gets T*K/E pairs (±1).
    Weights are a softmax over k seeded random logits.
    """
    if kind not in ROUTINGS:
        raise ValueError(f"unknown routing {kind!r}; valid: {', '.join(ROUTINGS)}")
    if num_tokens < 0 or num_experts < 1:
        raise ValueError(f"need num_tokens >= 0 and num_experts >= 1, got {num_tokens} and {num_experts}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    gen = torch.Generator().manual_seed(seed)
    T, E, K = num_tokens, num_experts, top_k
    if kind == "uniform":
        ids_TK = torch.rand(T, E, generator=gen).argsort(dim=-1)[:, :K]
    elif kind == "skewed":
        probs_E = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** zipf_exponent
        ids_TK = torch.multinomial(probs_E.expand(T, E), K, replacement=False, generator=gen) if T else \
            torch.empty(0, K, dtype=torch.int64)
    elif kind == "hot":
        others_TK = 1 + torch.rand(T, E - 1, generator=gen).argsort(dim=-1)[:, : K - 1]
        ids_TK = torch.cat([torch.zeros(T, 1, dtype=torch.int64), others_TK], dim=1)
    else:  # balanced
        ids_TK = (torch.arange(T)[:, None] * K + torch.arange(K)[None, :]) % E
    weights_TK = torch.softmax(torch.randn(T, K, generator=gen), dim=-1)
    return ids_TK.to(device), weights_TK.to(device)
