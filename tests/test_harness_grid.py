"""Sweep grids: names discovered from the registries, bad grids rejected (naming the valid values) before work."""

from __future__ import annotations

import pytest
import torch

import moe_lab
from moe_lab.harness import COMPILE_MODES, LEVELS, Cell, SweepGrid, backend_names, run_sweep
from moe_lab.shapes import get_shape


def test_backend_names_follow_the_registry(monkeypatch):
    """moe_lab's backends are read from BACKENDS when asked (a backend registered later counts), then transformers'."""
    names = backend_names()
    assert names[: len(moe_lab.BACKENDS)] == list(moe_lab.BACKENDS)
    assert names[-3:] == ["transformers:eager", "transformers:batched_mm", "transformers:grouped_mm"]
    monkeypatch.setitem(moe_lab.BACKENDS, "late_backend", moe_lab.BACKENDS["eager"])
    assert "late_backend" in backend_names()
    assert "late_backend" in SweepGrid(backend="all").backend
    assert SweepGrid(backend="transformers").backend == tuple(names[-3:])


def test_fields_take_lists_scalars_and_comma_strings():
    grid = SweepGrid(level="layer", model=["tiny"], backend="eager,grouped_mm", batch_size="1,4", seq_len=16,
                     num_layers="all")
    assert grid.level == ("layer",)
    assert grid.backend == ("eager", "grouped_mm")
    assert grid.batch_size == (1, 4) and grid.seq_len == (16,) and grid.num_layers == (None,)
    assert len(grid.validate().cells()) == 4


def test_cells_normalise_num_layers_per_level():
    grid = SweepGrid(level=["layer", "model"], backend="eager", batch_size=1, seq_len=16, num_layers=[None, 1])
    cells = grid.cells()
    layer_cells = [c for c in cells if c.level == "layer"]
    model_cells = [c for c in cells if c.level == "model"]
    assert [c.num_layers for c in layer_cells] == [None]  # one cell, not one per num_layers
    assert {c.routing for c in model_cells} == {"router"} and {c.routing for c in layer_cells} == {"uniform"}
    assert sorted(c.num_layers for c in model_cells) == [1, get_shape("tiny").layers]
    assert len(set(cells)) == len(cells)


def test_whole_model_cells_use_the_models_router():
    grid = SweepGrid(level=["layer", "decode"], backend="eager", batch_size=1, seq_len=16, routing="uniform,skewed")
    cells = grid.cells()
    assert len(cells) == 3 and sorted(c.routing for c in cells) == ["router", "skewed", "uniform"]


def test_tokens_per_level():
    assert Cell("layer", "tiny", "eager", batch_size=4, seq_len=16).tokens == 64
    assert Cell("decode", "tiny", "eager", batch_size=4, seq_len=16).tokens == 4


@pytest.mark.parametrize("field, bad, valid_hint", [
    ("backend", "fast_mm", "grouped_mm"),
    ("backend", "transformers:sonic", "transformers:grouped_mm"),
    ("model", "gpt-5", "qwen1.5-moe-a2.7b"),
    ("dtype", "float8", "bfloat16"),
    ("compile_mode", "turbo", "max-autotune-no-cudagraphs"),
    ("level", "serve", "decode"),
    ("routing", "zipf", "skewed"),
    ("batch_size", 0, "positive"),
    ("seq_len", -3, "positive"),
    ("num_layers", 99, "1..2"),
    ("iters", 0, ">= 1"),
])
def test_bad_values_are_named_with_the_valid_ones(field, bad, valid_hint):
    grid = SweepGrid(**{"level": "layer", "backend": "eager", field: [bad]})
    with pytest.raises(ValueError) as info:
        grid.validate()
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)
    assert valid_hint in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_asked_for_where_there_is_none():
    with pytest.raises(ValueError, match=r"'cuda' is not available \(no GPU.*valid: cpu"):
        SweepGrid(device="cuda").validate()


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        SweepGrid(backend="nope", dtype="int8", batch_size=0).validate()
    message = str(info.value)
    assert "'nope'" in message and "'int8'" in message and "batch_size" in message


def test_bad_grid_rejected_before_any_cell_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr("moe_lab.harness.sweep.run_cell", lambda *a, **k: ran.append(a))
    out = tmp_path / "never.csv"
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        run_sweep(SweepGrid(level="layer", backend=["eager", "nope"]), out, progress=False)
    assert ran == [] and not out.exists()


def test_from_yaml(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("level: [layer, train]\nbackend: eager,transformers:grouped_mm\nbatch-size: 2\n"
                    "seq_len: [8, 16]\nnum_layers: null\niters: 3\n")
    grid = SweepGrid.from_yaml(path, iters=5)
    assert grid.level == ("layer", "train") and grid.backend == ("eager", "transformers:grouped_mm")
    assert grid.batch_size == (2,) and grid.seq_len == (8, 16) and grid.iters == 5
    assert len(grid.validate().cells()) == 8
    assert SweepGrid(**grid.to_dict()) == grid
    path.write_text("levels: [layer]\n")
    with pytest.raises(ValueError, match="unknown grid field.*'levels'.*valid: level"):
        SweepGrid.from_yaml(path)


def test_defaults_are_the_cpu_tiny_sweep():
    grid = SweepGrid().validate()
    assert grid.level == LEVELS and grid.model == ("tiny",) and grid.device == ("cpu",)
    assert grid.compile_mode == ("none",) and set(grid.backend) == set(backend_names())
    assert set(COMPILE_MODES) == {"none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"}
