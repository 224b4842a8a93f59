"""benchmarks/triton_profile.py: the balanced batched GEMMs it times and its per-point summary (CPU, no timing)."""

from __future__ import annotations

import pytest
import torch
import triton_profile

from moe_lab.backends.common import down_weight_EIH, up_weight_EHN
from moe_lab.shapes import build_experts


@pytest.mark.parametrize("S", [3, 8, 13], ids=["fewer_pairs_than_experts", "one_row_each", "unaligned"])
def test_balanced_gemms_give_every_hit_expert_the_same_rows_and_its_own_weights(S):
    experts = build_experts("tiny", dtype=torch.float32)
    E = up_weight_EHN(experts).shape[0]
    hit, M = min(E, S), -(-S // min(E, S))
    (x_EMH, w_up, h_EMN), (a_EMI, w_down, y_EMH) = triton_profile.balanced_gemms(experts, S)
    assert x_EMH.shape[:2] == a_EMI.shape[:2] == h_EMN.shape[:2] == y_EMH.shape[:2] == (hit, M)
    assert hit * M >= S > hit * (M - 1)  # every pair has a row, no row block more than needed
    assert torch.equal(w_up, up_weight_EHN(experts)[:hit]) and torch.equal(w_down, down_weight_EIH(experts)[:hit])
    assert torch.bmm(x_EMH, w_up).shape == h_EMN.shape and torch.bmm(a_EMI, w_down).shape == y_EMH.shape


def _row(kernel, us, T=512):
    return dict(model="m", T=T, floor_us=100.0, floor_balanced_us=120.0, kernel=kernel, us=us, device="d", torch="t",
                triton="tr")


def test_ceiling_rows_sum_each_side_s_gemms_and_divide_their_routing_s_floor_by_them():
    rows = [_row("_gate_up_grouped_kernel", 80.0), _row("_down_grouped_kernel", 45.0), _row("_topk_sum_kernel", 5.0),
            _row("whole call, CUDA-graph replay", 140.0), _row("whole call, end to end", 150.0),
            _row("whole call, balanced routing, CUDA-graph replay", 130.0),
            _row("torch._grouped_mm gate/up, tokens pre-sorted", 90.0),
            _row("torch._grouped_mm down, tokens pre-sorted", 60.0),
            _row("cuBLAS bmm gate/up + down, balanced groups", 110.0), _row("whole call, CUDA-graph replay", 50.0, T=1)]
    by_T = {r["T"]: r for r in triton_profile.ceiling_rows(rows)}
    c = by_T[512]
    assert (c["whole_call_us"], c["whole_call_balanced_us"], c["ours_gemms_us"]) == (140.0, 130.0, 125.0)
    assert (c["torch_grouped_mm_gemms_us"], c["cublas_bmm_balanced_us"]) == (150.0, 110.0)
    assert c["ours_gemms_frac"] == 0.8 and c["whole_call_frac"] == round(100 / 140, 3)
    assert c["cublas_bmm_balanced_frac"] == round(120 / 110, 3)  # balanced times against the balanced floor
    assert c["whole_call_balanced_frac"] == round(120 / 130, 3)
    assert by_T[1]["cublas_bmm_balanced_us"] is None and by_T[1]["cublas_bmm_balanced_frac"] is None  # not timed there


def test_ceiling_rows_take_the_dense_gemm_s_fastest_tile_per_product_and_our_balanced_kernels():
    dense = "Triton TMA bmm"
    rows = [_row(f"{dense} gate/up, balanced groups, tile 128x128x64 w4 s3", 70.0),
            _row(f"{dense} gate/up, balanced groups, tile 128x256x64 w8 s3", 60.0),
            _row(f"{dense} down, balanced groups, tile 128x128x64 w4 s3", 30.0),
            _row(f"{dense} down, balanced groups, tile 128x256x64 w8 s3", 40.0),
            _row("balanced routing: _gate_up_grouped_kernel", 75.0),
            _row("balanced routing: _down_grouped_kernel", 45.0), _row("_gate_up_grouped_kernel", 80.0),
            _row(f"{dense} gate/up, balanced groups, tile 128x128x64 w4 s3", 50.0, T=1)]
    by_T = {r["T"]: r for r in triton_profile.ceiling_rows(rows)}
    c = by_T[512]
    assert c["triton_tma_bmm_balanced_us"] == 90.0 and c["triton_tma_bmm_balanced_frac"] == round(120 / 90, 3)
    assert c["ours_gemms_balanced_us"] == 120.0 and c["ours_gemms_balanced_frac"] == 1.0
    assert c["ours_gemms_us"] == 80.0  # our balanced-routing rows are not summed into the uniform ones
    assert by_T[1]["triton_tma_bmm_balanced_us"] is None  # one product timed only: no sum


def test_ceiling_rows_count_the_warp_specialized_gemms_and_the_gluon_bmm():
    """A config's "ws" entry runs one kernel twice (gate/up, down): its summed row is our GEMMs' time; the Gluon
    batched GEMM's fastest tile per product is its own column, apart from the plain Triton one's."""
    gluon = "Gluon WS bmm"
    rows = [_row("_ws_grouped_kernel", 110.0), _row("_topk_sum_kernel", 5.0),
            _row("balanced routing: _ws_grouped_kernel", 100.0),
            _row(f"{gluon} gate/up, balanced groups, tile 128x128x64 s4 w8", 55.0),
            _row(f"{gluon} gate/up, balanced groups, tile 128x256x64 s3 w8", 65.0),
            _row(f"{gluon} down, balanced groups, tile 128x128x64 s4 w8", 25.0)]
    c = triton_profile.ceiling_rows(rows)[0]
    assert (c["ours_gemms_us"], c["ours_gemms_balanced_us"]) == (110.0, 100.0)
    assert c["gluon_ws_bmm_balanced_us"] == 80.0 and c["gluon_ws_bmm_balanced_frac"] == 1.5
    assert c["triton_tma_bmm_balanced_us"] is None
