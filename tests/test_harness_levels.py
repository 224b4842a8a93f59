"""Every level and compile mode gives a row; transformers' table decides statuses; gradients flow at train level."""

from __future__ import annotations

import math

import pytest
import torch

import moe_lab
from moe_lab.harness import COMPILE_MODES, Cell, build_workload, compat, run_cell

REQUIRED = ["mean_ms", "median_ms", "p90_ms", "peak_mem_mb", "extra_mem_mb", "tflops", "gbps", "floor_ms"]


def measured(row: dict) -> bool:
    return all(isinstance(row[c], float) and math.isfinite(row[c]) for c in REQUIRED)


@pytest.mark.parametrize("level", ["layer", "model", "decode", "train"])
def test_every_level_measures_moe_lab_and_transformers(level):
    for name in ("grouped_mm", "transformers:grouped_mm"):
        row = run_cell(Cell(level, "tiny", name, batch_size=2, seq_len=8, warmup=1, iters=3))
        assert row["status"] == "ok", row
        assert measured(row) and row["tokens"] == (2 if level == "decode" else 16)
        assert row["gflop"] > 0 and row["experts_hit"] >= 1
        assert row["torch"] == torch.__version__ and row["timer"] == "wall_clock" and row["cpu_threads"] >= 1


def test_transformers_baselines_are_rows():
    rows = [run_cell(Cell("layer", "tiny", f"transformers:{b}", batch_size=1, seq_len=8, warmup=1, iters=2))
            for b in ("eager", "batched_mm", "grouped_mm")]
    assert [r["implementation"] for r in rows] == [f"transformers experts_implementation={b}"
                                                   for b in ("eager", "batched_mm", "grouped_mm")]
    assert all(r["status"] == "ok" and measured(r) for r in rows)


def test_rows_for_every_compile_mode():
    """Compiled on CPU: CUDA-graph modes still give a measured row, whose status says they ran without graphs."""
    rows = {mode: run_cell(Cell("layer", "tiny", "batched_mm", compile_mode=mode, batch_size=1, seq_len=8,
                                warmup=1, iters=2)) for mode in COMPILE_MODES}
    for mode, row in rows.items():
        assert measured(row), (mode, row)
        if mode == "none":
            assert row["status"] == "ok" and math.isnan(row["compile_s"])
        else:
            assert row["compile_s"] > 0
        if mode in ("reduce-overhead", "max-autotune"):
            assert row["status"].startswith("fallback:no-cudagraphs"), row["status"]


def test_a_backends_announced_fallback_is_the_status():
    """moe_lab's grouped_mm announces its per-expert loop when compiled outside bf16: the row says so."""
    row = run_cell(Cell("layer", "tiny", "grouped_mm", compile_mode="default", batch_size=1, seq_len=8,
                        warmup=1, iters=2))
    assert measured(row) and row["status"].startswith("fallback:") and "grouped_mm" in row["status"]


def test_transformers_compatibility_table():
    """grouped_mm with CUDA graphs: unsupported; compiled grouped_mm outside bf16: its per-expert loop."""
    on_gpu = dict(model="tiny", backend="transformers:grouped_mm", device="cuda")
    graphs = compat(Cell("layer", compile_mode="reduce-overhead", dtype="bfloat16", **on_gpu))
    assert not graphs.run and graphs.notes[0].startswith("unsupported: transformers' compatibility table")
    assert compat(Cell("layer", compile_mode="max-autotune-no-cudagraphs", dtype="bfloat16", **on_gpu)).notes == []
    fp32 = compat(Cell("layer", compile_mode="default", dtype="float32", **on_gpu))
    assert fp32.run and fp32.notes[0].startswith("fallback:grouped_mm_fallback")
    # decoding on a GPU, transformers switches grouped_mm to batched_mm, which CUDA graphs support
    assert compat(Cell("decode", compile_mode="reduce-overhead", dtype="bfloat16", **on_gpu)).run
    assert compat(Cell("layer", compile_mode="max-autotune", model="tiny", backend="transformers:batched_mm",
                       device="cuda")).notes == []


def test_unsupported_cell_is_a_row_not_a_crash(monkeypatch):
    """An unsupported combination is never run: its row says why and has no latency."""
    row = run_cell(Cell("layer", "tiny", "transformers:grouped_mm", compile_mode="reduce-overhead", device="cuda",
                        dtype="bfloat16"))
    assert row["status"].startswith("unsupported:") and "median_ms" not in row


def test_backend_declarations_are_honoured(monkeypatch):
    def gpu_only(experts, x, ids, w):
        raise AssertionError("must not run")

    gpu_only.device_types = ("cuda",)
    monkeypatch.setitem(moe_lab.BACKENDS, "gpu_only", gpu_only)
    row = run_cell(Cell("layer", "tiny", "gpu_only"))
    assert row["status"] == "unsupported: gpu_only runs on cuda only (its device_types), not cpu"

    def forward_only(experts, x, ids, w):
        return moe_lab.BACKENDS["grouped_mm"](experts, x, ids, w).detach()

    forward_only.differentiable = False
    monkeypatch.setitem(moe_lab.BACKENDS, "forward_only", forward_only)
    assert run_cell(Cell("layer", "tiny", "forward_only", iters=1))["status"] == "ok"
    assert run_cell(Cell("train", "tiny", "forward_only"))["status"].startswith("unsupported: forward_only is forward")


def test_train_gradients_flow(backend):
    """Forward + backward of every differentiable backend reaches the input and every expert weight."""
    if getattr(moe_lab.BACKENDS[backend], "differentiable", True) is False:
        pytest.skip(f"{backend} is forward only")
    workload = build_workload(Cell("train", "tiny", backend, batch_size=2, seq_len=8), warmup=0)
    try:
        workload.fn()
        assert workload.check() is None
    finally:
        workload.close()


def test_train_without_gradient_is_an_error_row(monkeypatch):
    """A backend whose output is cut from the graph is caught by the gradient check, not timed as ok."""
    def detached(experts, x, ids, w):
        return moe_lab.BACKENDS["grouped_mm"](experts, x, ids, w).detach().requires_grad_()

    monkeypatch.setitem(moe_lab.BACKENDS, "detached", detached)
    row = run_cell(Cell("train", "tiny", "detached", iters=1))
    assert row["status"] == "error: CellFailed" and "no gradient reached" in row["error"]


def test_train_on_a_forward_only_path_is_unsupported(monkeypatch):
    """A backend that picks a forward-only path per call (auto -> triton_fused on a GPU) gives an unsupported row."""
    def sometimes_forward_only(experts, x, ids, w):
        return moe_lab.BACKENDS["grouped_mm"](experts, x, ids, w).detach()

    monkeypatch.setitem(moe_lab.BACKENDS, "sometimes_forward_only", sometimes_forward_only)
    row = run_cell(Cell("train", "tiny", "sometimes_forward_only", iters=1))
    assert row["status"].startswith("unsupported: sometimes_forward_only's output carries no gradient")
    assert "median_ms" not in row


def test_decode_prefills_without_the_cells_backend(monkeypatch):
    """The untimed prompt runs transformers' grouped_mm: a backend that cannot take the prompt still decodes."""
    def decode_only(experts, x, ids, w):
        if x.shape[0] > 2:  # like batched_mm's weight copies of a long prompt: more than memory holds
            raise torch.OutOfMemoryError("prompt too large for this backend")
        return moe_lab.BACKENDS["grouped_mm"](experts, x, ids, w)

    monkeypatch.setitem(moe_lab.BACKENDS, "decode_only", decode_only)
    row = run_cell(Cell("decode", "tiny", "decode_only", batch_size=2, seq_len=16, warmup=1, iters=2))
    assert row["status"] == "ok" and measured(row) and row["tokens"] == 2


def test_decode_runs_in_transformers_decode_context():
    workload = build_workload(Cell("decode", "tiny", "transformers:grouped_mm", batch_size=2, seq_len=8), warmup=1)
    try:
        out = workload.fn()
        assert out.logits.shape[:2] == (2, 1)
        assert workload.implementation == "experts_implementation=grouped_mm"  # on CPU: no switch
        assert workload.cost.flops == 2 * 2 * 2 * 2 * (128 * 192 + 96 * 128)  # 2 tokens x K=2 x 2 layers
    finally:
        workload.close()
