"""One cell -> one row; a sweep appends rows to a CSV as they finish and resumes where it stopped.

A row is written in one `write` and flushed to disk as soon as its cell finishes, so a sweep killed
with SIGKILL loses at most the cell in progress (a torn last line is cut off on the next start), and
the same command run again skips every cell that already has a row (whatever its status).
"""

from __future__ import annotations

import csv
import glob
import io
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch

from moe_lab.harness.compile import capture_fallbacks, compat, min_warmup, reset_compiler
from moe_lab.harness.env import env_info
from moe_lab.harness.grid import DTYPES, KEY_FIELDS, Cell, SweepGrid
from moe_lab.harness.levels import Unsupported, build_workload, clear_caches, free_memory
from moe_lab.harness.memory import GiB, PeakMemory, cpu_skip_reason
from moe_lab.harness.roofline import floor_ms, measure_roofline
from moe_lab.harness.timing import time_calls, warm_up

# (column, meaning): the README's table is generated from this list (`columns_markdown()`).
COLUMN_DOCS = [
    ("level", "`layer` (experts call alone), `model` (one prefill forward of the whole model), `decode` (one "
              "decode step with a KV cache after a prompt of `seq_len`), `train` (experts forward + backward)"),
    ("model", "model shape name (data/model_shapes.yaml)"),
    ("backend", "moe_lab backend (bare name) or transformers' own (`transformers:<name>`)"),
    ("compile_mode", "`none`, `default`, `reduce-overhead`, `max-autotune-no-cudagraphs` or `max-autotune`"),
    ("dtype", "weights and activations dtype"),
    ("device", "torch device the cell ran on"),
    ("device_name", "GPU name, or the CPU model"),
    ("batch_size", "sequences per call"),
    ("seq_len", "tokens per sequence (the prompt length at the decode level)"),
    ("tokens", "tokens through the experts per timed call: batch_size x seq_len, or batch_size when decoding"),
    ("routing", "synthetic routing at the layer/train levels (`uniform`, `skewed`, `hot`, `balanced`); "
                "`router` at model/decode: the model's own router (random weights)"),
    ("num_layers", "decoder layers of the model built at the model/decode levels (a cut for large models); "
                   "empty at layer/train"),
    ("experts", "routed experts E"),
    ("top_k", "experts per token K"),
    ("hidden", "hidden size H"),
    ("intermediate", "expert intermediate size I"),
    ("mean_ms", "mean latency of one timed call, ms"),
    ("median_ms", "median latency, ms"),
    ("p90_ms", "90th percentile latency, ms"),
    ("min_ms", "fastest timed call, ms"),
    ("std_ms", "standard deviation of the timed calls, ms"),
    ("peak_mem_mb", "CUDA: peak allocated during the timed calls (absolute); CPU: peak resident memory of the "
                    "process during them (absolute), MiB"),
    ("extra_mem_mb", "peak above the allocated (CUDA) or resident (CPU) memory just before the timed calls, MiB"),
    ("compile_s", "wall time of the warm-up calls of a compiled cell (compilation, autotuning, CUDA-graph "
                  "recording), s; empty without compile. Never part of the latencies"),
    ("gflop", "flops of the experts computation per call (2*T*K*(H*N + I*H), N = 2I gated; x3 for train; "
              "summed over the MoE layers at model level), 1e9"),
    ("mbytes", "bytes the experts computation must move per call: weights of the experts hit + input + "
               "output (train: 3x weights + 4 activations), 1e6"),
    ("experts_hit", "distinct experts hit per experts layer (mean over layers at model/decode)"),
    ("tflops", "achieved TFLOP/s of the experts computation: gflop / median (at model/decode: over the "
               "whole forward)"),
    ("gbps", "achieved GB/s of the experts computation: mbytes / median"),
    ("floor_ms", "roofline floor of the experts computation: max(mbytes / roof_gbps, gflop / roof_tflops), ms"),
    ("floor_frac", "floor_ms / median_ms: 1 is at the roofline"),
    ("roof_gbps", "copy bandwidth used for the floor, GB/s (measured once per run, see roof_method)"),
    ("roof_tflops", "dense matmul peak used for the floor in the cell's dtype, TFLOP/s (measured once per run)"),
    ("roof_method", "how roof_gbps and roof_tflops were measured"),
    ("cell_s", "wall time of the whole cell (building, warm-up/compilation, timing, counting), s: for planning"),
    ("status", "`ok`; `fallback:<what ran>: <why>` (measured, but not as asked: transformers' table, decode "
               "switch, no CUDA graphs on CPU, a backend's announced fallback); no latency: `unsupported: ...`, "
               "`skipped: needs X GiB, Y GiB available`, `oom: ...`, `error: <exception>`"),
    ("error", "the exception message for `oom`/`error` rows"),
    ("implementation", "what was called: moe_lab function, or transformers' experts_implementation that ran"),
    ("warmup", "warm-up calls asked for (compiled cells get at least 1, with CUDA graphs 3)"),
    ("iters", "timed calls"),
    ("seed", "seed of weights, inputs and routing"),
    ("timer", "`cuda_events` (events around each call) or `wall_clock` (perf_counter around each call)"),
    ("mem_method", "`cuda_max_memory_allocated`, `rss_vmhwm` (Linux peak RSS, reset before the calls) or "
                   "`rss_sampled` (psutil sampling)"),
    ("cpu_threads", "torch.get_num_threads() when the cell ran"),
    ("torch", "torch version"),
    ("transformers", "transformers version"),
    ("triton", "triton version (empty when absent)"),
    ("python", "Python version"),
    ("timestamp", "when the cell finished, UTC ISO 8601"),
]
COLUMNS = [name for name, _ in COLUMN_DOCS]
INT_COLUMNS = ["batch_size", "seq_len", "tokens", "num_layers", "experts", "top_k", "hidden", "intermediate",
               "warmup", "iters", "seed", "cpu_threads"]
FLOAT_COLUMNS = ["mean_ms", "median_ms", "p90_ms", "min_ms", "std_ms", "peak_mem_mb", "extra_mem_mb", "compile_s",
                 "gflop", "mbytes", "experts_hit", "tflops", "gbps", "floor_ms", "floor_frac", "roof_gbps",
                 "roof_tflops", "cell_s"]


def columns_markdown() -> str:
    """The CSV columns as a Markdown table (for the README)."""
    lines = ["| column | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {doc} |" for name, doc in COLUMN_DOCS]
    return "\n".join(lines)


class CellFailed(RuntimeError):
    """A cell ran but its result is not valid (e.g. no gradient reached the weights)."""


def _base_row(cell: Cell) -> dict:
    from moe_lab.shapes import get_shape

    shape = get_shape(cell.model)
    row = {f: getattr(cell, f) for f in KEY_FIELDS}
    row.update(tokens=cell.tokens, experts=shape.experts, top_k=shape.top_k, hidden=shape.hidden,
               intermediate=shape.intermediate, status="", error="")
    row.update(env_info(cell.device))
    return row


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _measure(cell: Cell, notes: list[str]) -> dict:
    """Build, warm up (compile), time and measure memory; return the measured columns."""
    device = torch.device(cell.device)
    warmup = max(cell.warmup, min_warmup(cell))
    if cell.is_compiled:
        reset_compiler()
    with capture_fallbacks() as announced:
        workload = build_workload(cell, warmup)
        try:
            warmup_s = warm_up(workload.fn, warmup, device)
            with PeakMemory(device) as mem:
                timing = time_calls(workload.fn, cell.iters, device)
            problem = workload.check() if workload.check is not None else None
        finally:
            workload.close()
    if problem:
        raise CellFailed(problem)
    notes += workload.notes + [f"fallback:{m}" for m in announced if f"fallback:{m}" not in notes]
    roof = measure_roofline(device, cell.torch_dtype)
    cost, median = workload.cost, timing.median_ms
    floor = floor_ms(cost, roof) if math.isfinite(cost.flops) else math.nan
    return dict(
        mean_ms=timing.mean_ms, median_ms=median, p90_ms=timing.p90_ms, min_ms=timing.min_ms, std_ms=timing.std_ms,
        peak_mem_mb=mem.peak_mb, extra_mem_mb=mem.extra_mb, compile_s=warmup_s if cell.is_compiled else math.nan,
        gflop=cost.flops / 1e9, mbytes=cost.bytes / 1e6, experts_hit=cost.experts_hit,
        tflops=cost.flops / (median * 1e-3) / 1e12, gbps=cost.bytes / (median * 1e-3) / 1e9,
        floor_ms=floor, floor_frac=floor / median, roof_gbps=roof.bandwidth_gbps, roof_tflops=roof.peak_tflops,
        roof_method=roof.method, implementation=workload.implementation, timer=timing.timer,
        mem_method=mem.method)


def run_cell(cell: Cell, *, max_mem_gb: float | None = None) -> dict:
    """Measure one cell; always return its row (a dict over `COLUMNS`), whatever happened.

    Unsupported combinations (transformers' table), CPU cells whose estimated memory exceeds what is
    available (or `max_mem_gb`), out-of-memory errors and any other exception become the row's status.
    """
    start = time.perf_counter()
    row = _base_row(cell)
    row["status"], row["error"] = _fill(row, cell, max_mem_gb)
    row["timestamp"] = env_info(cell.device)["timestamp"]
    row["cell_s"] = time.perf_counter() - start
    return row


def _fill(row: dict, cell: Cell, max_mem_gb: float | None) -> tuple[str, str]:
    """Run the cell into `row`; return its (status, error)."""
    decision = compat(cell)
    if not decision.run:
        return "; ".join(decision.notes), ""
    if torch.device(cell.device).type == "cpu":
        reason = cpu_skip_reason(cell, None if max_mem_gb is None else int(max_mem_gb * GiB))
        if reason:
            return reason, ""
    notes = list(decision.notes)
    failure = None
    try:
        row.update(_measure(cell, notes))
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        if isinstance(e, Unsupported):
            failure = (f"unsupported: {e}", "")
        elif _is_oom(e):
            failure = ("oom: out of memory" + (f" on {cell.device}" if cell.device != "cpu" else ""), _one_line(e))
        else:
            where = traceback.extract_tb(e.__traceback__)[-1]
            failure = (f"error: {type(e).__name__}",
                       _one_line(f"{e} (at {Path(where.filename).name}:{where.lineno})"))
        del e
    finally:  # the failed cell's tensors are unreachable here, so the cache can really be emptied
        if cell.is_compiled:
            reset_compiler()
        free_memory(cell.device)
    if failure is not None:
        return failure
    return ("; ".join(notes) if notes else "ok"), ""


# --- the CSV -----------------------------------------------------------------------------------------


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".6g")
    return str(value)


def format_row(row: dict) -> str:
    """One CSV line (with its newline) over `COLUMNS`."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_format(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a write interrupted by a kill) so the file ends at a complete row."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a results CSV as dicts of strings, over `COLUMNS`.

    A file written by an older moe_lab whose columns are all still in `COLUMNS` is rewritten (atomically)
    with today's header, the new columns empty, so a sweep can go on appending to it; a file with
    columns moe_lab no longer writes is refused.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    _repair_tail(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if fields == COLUMNS:
        return rows
    unknown = [c for c in fields if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{path} has columns moe_lab does not write ({', '.join(unknown)}): not a results CSV of "
                         f"this version; write this sweep to another --out")
    rows = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    rewrite_rows(path, rows)
    return rows


def rewrite_rows(path: str | Path, rows: list[dict]) -> None:
    """Replace a results CSV by today's header and `rows`, atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".rewriting")
    with open(tmp, "w", newline="") as f:
        f.write(format_row(dict(zip(COLUMNS, COLUMNS))) + "".join(format_row(r) for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_row(path: str | Path, row: dict) -> None:
    """Append one row (the header first if the file is new) in a single write, flushed to disk."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    text = (format_row(dict(zip(COLUMNS, COLUMNS))) if new else "") + format_row(row)
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _row_key(row: dict) -> tuple[str, ...]:
    return tuple(row.get(f, "") for f in KEY_FIELDS)


def pending_cells(grid: SweepGrid, out_csv: str | Path) -> list[Cell]:
    """The cells of `grid` that `out_csv` has no row for yet (what `run_sweep` would run)."""
    done = {_row_key(r) for r in read_rows(out_csv)}
    return [c for c in grid.validate().cells() if c.key() not in done]


def run_sweep(grid: SweepGrid, out_csv: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """Run every cell of `grid` that `out_csv` has no row for yet; return this grid's rows.

    The grid is validated before any cell runs. Each row is appended and flushed as its cell
    finishes, so the same call after a crash (or SIGKILL) resumes where the sweep stopped.
    """
    from tqdm.auto import tqdm

    grid.validate()
    cells = grid.cells()
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {_row_key(r) for r in read_rows(out)}
    todo = [c for c in cells if c.key() not in done]
    # the roofline of each (device, dtype), measured once per run before any model takes memory
    for device, dtype in dict.fromkeys((c.device, c.dtype) for c in todo):
        measure_roofline(device, DTYPES[dtype])
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", desc="sweep", disable=not progress,
               dynamic_ncols=True)
    try:
        for cell in todo:
            bar.set_postfix_str(cell.label(), refresh=True)
            row = run_cell(cell, max_mem_gb=grid.max_mem_gb)
            append_row(out, row)
            if row["status"].startswith(("error", "oom", "skipped")):  # unsupported and fallbacks are expected
                bar.write(f"{cell.label()}: {row['status']} {row['error']}".rstrip(), file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        clear_caches()
    keys = {c.key() for c in cells}
    rows = [r for r in read_rows(out) if _row_key(r) in keys]
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


# --- reading results ---------------------------------------------------------------------------------


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c].replace("", pd.NA), errors="coerce").astype("Int64")
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c].replace("", pd.NA), errors="coerce").astype("float64")
    for c in ("status", "error"):
        df[c] = df[c].fillna("").astype(str)
    return df


def expand_paths(paths) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for every file, directory (its *.csv, recursively) or glob given."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[tuple[Path, bool]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += [(f, False) for f in sorted(p.rglob("*.csv"))]
        elif any(ch in str(p) for ch in "*?["):
            files += [(Path(g), False) for g in sorted(glob.glob(str(p), recursive=True))]
        elif p.exists():
            files.append((p, True))
        else:
            raise FileNotFoundError(f"no results at {p}")
    return files


RESULTS_MARKER = {"level", "model", "backend", "status"}  # columns that tell a results CSV from other CSVs


def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Rows of one or more results CSVs (files, directories searched for *.csv, or globs) as one DataFrame.

    Columns are `COLUMNS` with numbers typed, plus `source` (the file each row came from); rows with a
    latency have status `ok` or `fallback:...`. CSVs found in a directory or by a glob that are not
    results (no level/model/backend/status columns, e.g. a batch log) are passed over; a file named
    explicitly must be results. A cell with rows in two of the files read (`one_row_per_cell`) is an error.
    """
    frames = []
    for path, explicit in expand_paths(paths):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not RESULTS_MARKER <= set(df.columns):
            if explicit:
                raise ValueError(f"{path} is not a results CSV (it lacks {', '.join(sorted(RESULTS_MARKER))})")
            continue
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        return _typed(pd.DataFrame(columns=COLUMNS + ["source"]))
    df = pd.concat(frames, ignore_index=True).fillna("")
    one_row_per_cell(df)
    return _typed(df)[COLUMNS + ["source"] + [c for c in df.columns if c not in COLUMNS + ["source"]]]


def one_row_per_cell(df: pd.DataFrame) -> None:
    """ValueError if a cell (its `KEY_FIELDS` and the device's name) has rows from more than one file in `df`'s
    `source`: figures and tables would average a superseded measurement into the current one."""
    keys = [k for k in (*KEY_FIELDS, "device_name") if k in df]
    files = df.groupby(keys, sort=False)["source"].unique()
    repeated = files[files.map(len) > 1]
    if len(repeated):
        cell = dict(zip(keys, repeated.index[0]))
        raise ValueError(f"{len(repeated)} cell(s) have rows in more than one file, e.g. {cell} in "
                         f"{', '.join(sorted(repeated.iloc[0]))}: name the files to read (a glob such as "
                         f"data/results/h100/*.csv), not a folder that holds superseded copies")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """The columns that vary between rows, with latency, memory, floor and status: a table to print."""
    ident = ["level", "model", "backend", "compile_mode", "dtype", "device", "batch_size", "seq_len", "tokens",
             "routing", "num_layers"]
    varying = [c for c in ident if c in df and df[c].astype(str).nunique() > 1] or ["backend"]
    metrics = ["median_ms", "p90_ms", "peak_mem_mb", "compile_s", "floor_ms", "status"]
    out = df[varying + metrics].copy()
    if out["compile_s"].isna().all():
        out = out.drop(columns="compile_s")
    out["status"] = out["status"].str.slice(0, 60)
    return out.reset_index(drop=True)
