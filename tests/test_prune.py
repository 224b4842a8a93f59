"""`moe-lab prune`: which rows go, what stays, and that a resumed sweep then measures exactly those cells."""

from __future__ import annotations

import pytest

from moe_lab.cli import main
from moe_lab.harness import COLUMNS, SweepGrid, append_row, load_results, run_sweep
from moe_lab.harness.prune import prune, status_kind
from moe_lab.harness.sweep import pending_cells, read_rows

ROWS = [  # backend, status, timestamp
    ("eager", "ok", "2026-11-22T10:00:00Z"),
    ("triton_fused", "ok", "2026-11-22T10:00:00Z"),
    ("triton_fused", "ok", "2026-11-22T16:00:00Z"),
    ("batched_mm", "oom: out of memory on cuda", "2026-11-22T10:00:00Z"),
    ("batched_mm", "ok", "2026-11-22T10:00:00Z"),
]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "r.csv"
    for i, (backend, status, stamp) in enumerate(ROWS):
        append_row(path, {"level": "layer", "model": "tiny", "backend": backend, "status": status, "seq_len": i + 1,
                          "timestamp": stamp, "median_ms": 1.0 if status == "ok" else None})
    return path


def kept(path):
    return [(r["backend"], r["status"], r["timestamp"]) for r in read_rows(path)]


def test_prune_by_backend_keeps_the_rest(results):
    assert prune(results, backend=["triton_fused"]) == [(results, 2, 5)]
    assert kept(results) == [ROWS[0], ROWS[3], ROWS[4]]
    assert list(load_results(results).columns[:len(COLUMNS)]) == COLUMNS


def test_a_folder_holding_a_cell_twice_is_refused_untouched(results):
    """Pruning a folder with a superseded copy of a file below it would drop rows from both: refused first."""
    (results.parent / "archive").mkdir()
    copy = results.parent / "archive" / "r.csv"
    copy.write_text(results.read_text())
    with pytest.raises(ValueError, match="more than one file"):
        prune(results.parent, backend=["triton_fused"])
    assert kept(results) == kept(copy) == ROWS
    assert prune(results, backend=["triton_fused"]) == [(results, 2, 5)]


def test_every_filter_must_match(results):
    prune(results, backend=["batched_mm", "eager"], status=["oom", "error"])
    assert kept(results) == [ROWS[0], ROWS[1], ROWS[2], ROWS[4]]


def test_sizes_select_rows_as_written(results):
    """Sizes match as the CSV writes them: the cells of some sequence lengths, of one backend."""
    assert prune(results, backend=["triton_fused"], seq_len=["3", "5"]) == [(results, 1, 5)]
    assert kept(results) == [ROWS[0], ROWS[1], ROWS[3], ROWS[4]]


def test_status_matches_whole_or_by_kind(results):
    assert prune(results, status=["oom: out of memory on cuda"], dry_run=True) == [(results, 1, 5)]
    assert prune(results, status=["oom"], dry_run=True) == [(results, 1, 5)]
    assert prune(results, status=["oo", "out of memory on cuda"], dry_run=True) == [(results, 0, 5)]
    assert prune(results, backend=["oom"], dry_run=True) == [(results, 0, 5)]  # kinds are for status only
    assert status_kind("fallback:batched_mm: transformers decodes with batched_mm") == "fallback"
    assert status_kind("ok") == "ok"


def test_before_drops_older_rows_only(results):
    prune(results, backend=["triton_fused"], before="2026-11-22T12:00")  # no zone: UTC
    assert kept(results) == [r for r in ROWS if r != ROWS[1]]
    prune(results, before="2026-11-22T17:00+01:00")  # 16:00 UTC: the 16:00 row is not before it
    assert kept(results) == [ROWS[2]]


def test_dry_run_changes_nothing(results):
    before = results.read_text()
    assert prune(results, status=["oom"], dry_run=True) == [(results, 1, 5)]
    assert results.read_text() == before


def test_refuses_to_drop_everything_or_unknown_filters(results):
    with pytest.raises(ValueError, match="at least one filter"):
        prune(results)
    with pytest.raises(ValueError, match="unknown filter"):
        prune(results, colour=["red"])
    assert len(read_rows(results)) == 5


def test_directories_pass_over_other_csvs_but_a_named_one_is_refused(results, tmp_path):
    log = tmp_path / "batch_log.csv"
    log.write_text("name,status\nx,ok\n")
    assert prune(tmp_path, status=["oom"]) == [(results, 1, 5)]
    with pytest.raises(ValueError, match="not a results CSV"):
        prune(log, status=["oom"])


def test_cli(results, capsys):
    assert main(["prune", str(results), "--backend", "triton_fused,batched_mm", "--status", "oom", "--dry-run"]) == 0
    assert "would drop 1 of 5 rows" in capsys.readouterr().out
    assert main(["prune", str(results), "--status", "oom"]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 of 5 rows" in out and "measure those cells again" in out
    assert main(["prune", str(results.parent / "missing.csv"), "--status", "oom"]) == 2


def test_a_resumed_sweep_measures_the_pruned_cells_again(tmp_path):
    grid = SweepGrid(level=["layer"], model=["tiny"], backend=["eager", "grouped_mm"], batch_size=[1],
                     seq_len=[2, 4], warmup=0, iters=1)
    out = tmp_path / "s.csv"
    run_sweep(grid, out, progress=False)
    assert pending_cells(grid, out) == []
    prune(out, backend=["grouped_mm"])
    again = pending_cells(grid, out)
    assert [(c.backend, c.seq_len) for c in again] == [("grouped_mm", 2), ("grouped_mm", 4)]
    run_sweep(grid, out, progress=False)
    assert pending_cells(grid, out) == [] and len(read_rows(out)) == 4
