"""The float64 reference that defines correctness, computed independently of every backend.

Dense: every token goes through every expert, and a (T, E) routing matrix combines the results.
No sorting, gathering or looping over hit experts, so it shares no logic with the backends.
"""

from __future__ import annotations

import copy

import torch


CHUNK_BYTES = 2**30  # the (tokens, E, N) float64 intermediate is computed a chunk of tokens at a time, about this big


@torch.no_grad()  # no autograd graph: it would keep every chunk's intermediates alive to the end
def reference_experts(
    experts: torch.nn.Module, x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """out[t] = sum_e R[t,e] * expert_e(x[t]) in float64 on `device` (the CPU; a GPU where T*E is large), R the
    dense routing matrix; tokens taken in chunks, so that memory stays bounded whatever T."""
    ref = copy.deepcopy(experts).to(device=device, dtype=torch.float64)
    x_TH = x_TH.detach().to(device, torch.float64)
    ids_TK = topk_ids_TK.to(device, torch.int64)
    E = ref.down_proj.shape[0]
    routing_TE = torch.zeros(x_TH.shape[0], E, dtype=torch.float64, device=device).scatter_add_(
        1, ids_TK, topk_weights_TK.detach().to(device, torch.float64))
    w_up = ref.gate_up_proj if ref.has_gate else ref.up_proj
    chunk = max(1, CHUNK_BYTES // (8 * E * max(w_up.shape[1:])))
    out_TH = torch.zeros_like(x_TH)
    for t0 in range(0, x_TH.shape[0], chunk):
        out_TH[t0:t0 + chunk] = _dense_chunk(ref, w_up, x_TH[t0:t0 + chunk], routing_TE[t0:t0 + chunk])
    return out_TH


def _dense_chunk(ref: torch.nn.Module, w_up: torch.Tensor, x_TH: torch.Tensor, routing_TE: torch.Tensor):
    """Every token of the chunk through every expert, combined by the routing matrix."""
    eq_up = "th,ehn->ten" if ref.is_transposed else "th,enh->ten"
    h_TEN = torch.einsum(eq_up, x_TH, w_up)
    if ref.has_bias:
        h_TEN = h_TEN + (ref.gate_up_proj_bias if ref.has_gate else ref.up_proj_bias)
    a_TEI = ref._apply_gate(h_TEN) if ref.has_gate else ref.act_fn(h_TEN)
    eq_down = "tei,eih->teh" if ref.is_transposed else "tei,ehi->teh"
    y_TEH = torch.einsum(eq_down, a_TEI, ref.down_proj)
    if ref.has_bias:
        y_TEH = y_TEH + ref.down_proj_bias
    if getattr(ref, "has_post_expert_norm", False):
        y_TEH = ref.post_expert_norm(y_TEH)
    return torch.einsum("te,teh->th", routing_TE, y_TEH)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out64, ref64 = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300))
