"""The sweep engine: the CSV's columns, rows appended as cells finish, resume without duplicates, OOM/skip rows."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

import moe_lab
from moe_lab.harness import COLUMNS, KEY_FIELDS, SweepGrid, columns_markdown, load_results, run_sweep, summarize
from moe_lab.harness.sweep import append_row, read_rows

ISSUE_COLUMNS = ["level", "model", "backend", "compile_mode", "dtype", "device", "device_name", "batch_size",
                 "seq_len", "tokens", "routing", "mean_ms", "median_ms", "p90_ms", "peak_mem_mb", "extra_mem_mb",
                 "compile_s", "tflops", "gbps", "floor_ms", "status", "error", "torch", "transformers", "timestamp"]
RECORDED = ["iters", "warmup", "cpu_threads", "triton", "roof_gbps", "roof_tflops", "experts", "top_k", "hidden",
            "intermediate", "num_layers", "seed", "python", "timer", "cell_s"]

SMALL = dict(level="layer", model="tiny", batch_size=1, seq_len=[4, 8], warmup=1, iters=2)


def header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_columns():
    assert set(ISSUE_COLUMNS) <= set(COLUMNS) and set(RECORDED) <= set(COLUMNS) and set(KEY_FIELDS) <= set(COLUMNS)
    assert len(set(COLUMNS)) == len(COLUMNS)
    table = columns_markdown()
    assert all(f"| `{c}` |" in table for c in COLUMNS)


def test_sweep_writes_rows_and_resumes_without_duplicates(tmp_path, monkeypatch):
    out = tmp_path / "runs" / "sweep.csv"
    grid = SweepGrid(backend=["eager", "transformers:batched_mm"], **SMALL)
    df = run_sweep(grid, out, progress=False)
    assert header(out) == COLUMNS
    assert len(df) == 4 and (df.status == "ok").all() and df.median_ms.gt(0).all()
    assert set(df.backend) == {"eager", "transformers:batched_mm"}
    first = out.read_text()

    calls = []
    monkeypatch.setattr("moe_lab.harness.sweep.run_cell", lambda *a, **k: calls.append(a))
    again = run_sweep(grid, out, progress=False)
    assert calls == [] and out.read_text() == first and len(again) == 4

    monkeypatch.undo()
    bigger = SweepGrid(backend=["eager", "transformers:batched_mm", "grouped_mm"], **SMALL)
    df = run_sweep(bigger, out, progress=False)
    assert len(df) == 6 and out.read_text().startswith(first)
    assert not df.duplicated(subset=list(KEY_FIELDS)).any()


def test_torn_last_line_is_cut_and_its_cell_rerun(tmp_path):
    out = tmp_path / "sweep.csv"
    grid = SweepGrid(backend="eager", **SMALL)
    run_sweep(grid, out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:25])  # killed in the middle of the last write
    df = run_sweep(grid, out, progress=False)
    assert len(df) == 2 and len(read_rows(out)) == 2 and (df.status == "ok").all()


def test_skip_and_oom_rows_beside_ok_rows(tmp_path, monkeypatch):
    """A CPU cell estimated over budget is skipped, an OOM raised in a backend is a row; the others run."""
    def out_of_memory(experts, x, ids, w):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 140.00 GiB")

    monkeypatch.setitem(moe_lab.BACKENDS, "out_of_memory", out_of_memory)
    # tiny at 4096 tokens: batched_mm's 8192 weight copies need ~1.2 GB, over a 0.5 GB budget; grouped_mm fits
    grid = SweepGrid(level="layer", model="tiny", backend=["batched_mm", "out_of_memory", "grouped_mm"],
                     batch_size=1, seq_len=[8, 4096], warmup=0, iters=1, max_mem_gb=0.5)
    df = run_sweep(grid, tmp_path / "oom.csv", progress=False).set_index(["backend", "seq_len"])
    skipped = df.loc[("batched_mm", 4096)]
    assert skipped.status.startswith("skipped: needs 1.") and skipped.status.endswith("GiB, 0.5 GiB available")
    assert df.loc[("out_of_memory", 8)].status == "oom: out of memory"
    assert "140.00 GiB" in df.loc[("out_of_memory", 8)].error
    for ok in [("batched_mm", 8), ("grouped_mm", 8), ("grouped_mm", 4096)]:
        assert df.loc[ok].status == "ok" and df.loc[ok].median_ms > 0


def test_errors_are_rows(tmp_path, monkeypatch):
    def broken(experts, x, ids, w):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(moe_lab.BACKENDS, "broken", broken)
    df = run_sweep(SweepGrid(backend=["broken", "eager"], **SMALL), tmp_path / "e.csv", progress=False)
    bad = df[df.backend == "broken"]
    assert (bad.status == "error: RuntimeError").all() and bad.error.str.contains("kernel exploded").all()
    assert (df[df.backend == "eager"].status == "ok").all()


def test_load_results_types_and_sources(tmp_path):
    run_sweep(SweepGrid(backend="eager", **SMALL), tmp_path / "a.csv", progress=False)
    run_sweep(SweepGrid(backend="grouped_mm", **SMALL), tmp_path / "b.csv", progress=False)
    df = load_results(tmp_path)
    assert len(df) == 4 and list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.batch_size.dtype == "Int64" and df.median_ms.dtype == "float64"
    assert df.num_layers.isna().all() and set(df.source.map(lambda s: s[-5:])) == {"a.csv", "b.csv"}
    assert len(load_results([tmp_path / "a.csv"])) == 2 and len(load_results(str(tmp_path / "*.csv"))) == 4
    table = summarize(df)
    assert {"backend", "seq_len", "median_ms", "status"} <= set(table.columns)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing.csv")
    (tmp_path / "batch_log.csv").write_text("name,seconds,status\nslice-1,12.5,ok\n")  # not results
    assert len(load_results(tmp_path)) == 4
    with pytest.raises(ValueError, match="not a results CSV"):
        load_results(tmp_path / "batch_log.csv")


def test_a_cell_in_two_files_is_an_error_not_an_average(tmp_path):
    """A superseded copy of a results file below the folder read (an archived first pass) would be averaged
    into every figure: reading both is refused, naming the files; a glob of the current one reads it."""
    run_sweep(SweepGrid(backend="eager", **SMALL), tmp_path / "a.csv", progress=False)
    (tmp_path / "old").mkdir()
    shutil.copy(tmp_path / "a.csv", tmp_path / "old" / "a.csv")
    with pytest.raises(ValueError, match=r"2 cell\(s\) have rows in more than one file.*old/a\.csv"):
        load_results(tmp_path)
    assert len(load_results(str(tmp_path / "*.csv"))) == 2


def test_other_columns_are_not_appended_to(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns moe_lab does not write"):
        run_sweep(SweepGrid(backend="eager", **SMALL), out, progress=False)
    assert out.read_text() == "a,b\n1,2\n"


def test_a_file_of_an_older_version_is_upgraded_and_resumed(tmp_path):
    """Rows written before a column was added keep their values; the sweep goes on in the same file."""
    out = tmp_path / "older.csv"
    grid = SweepGrid(backend="eager", **SMALL)
    run_sweep(grid, out, progress=False)
    older = [c for c in COLUMNS if c not in ("cell_s", "min_ms")]
    rows = read_rows(out)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, older, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[:1])  # one row of two, written by the older version
    df = run_sweep(grid, out, progress=False)
    assert header(out) == COLUMNS and len(df) == 2
    assert df.cell_s.isna().sum() == 1 and df.median_ms.notna().all()
    append_row(tmp_path / "new.csv", {"level": "layer"})
    assert header(tmp_path / "new.csv") == COLUMNS
