"""`moe-lab batch`: run the sweep notebook once per parameter set of a YAML file, through papermill.

A batch file:

    notebook: notebooks/01_sweep.ipynb      # optional (this is the default)
    out_dir: runs/batch/h100                # optional (default: runs/batch/<file stem>)
    defaults:                               # parameters every run gets
      device: cuda
      dtype: bfloat16
    matrix:                                 # optional: one run per combination of these values
      model: [qwen1.5-moe-a2.7b, olmoe-1b-7b]
      level: [layer, train]
    runs:                                   # optional: runs listed one by one (with or without a name)
      - name: seed
        parameters: {model: qwen1.5-moe-a2.7b, level: model, batch_sizes: [1, 4], seq_lens: [16, 128]}
      - {model: gpt-oss-20b, level: layer}

Every run writes `<out_dir>/<name>.ipynb` (the executed notebook, kept whether it succeeded or not) and,
unless its parameters say otherwise, its results into `<out_dir>/<name>.csv`. Each attempt is
appended to `<out_dir>/batch_log.csv` as soon as it ends: a run that raised in a cell
(`PapermillExecutionError`), whose kernel died (`DeadKernelError`) or that timed out is recorded as
failed and the batch goes on. Run again, the batch skips runs whose last attempt succeeded with the
same parameters and runs the others; the sweep inside resumes from its results file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from moe_lab.notebook import REPO_ROOT

DEFAULT_NOTEBOOK = REPO_ROOT / "notebooks" / "01_sweep.ipynb"
LOG_NAME = "batch_log.csv"
LOG_COLUMNS = ["name", "status", "error", "seconds", "started", "params_hash", "notebook", "parameters"]
SPEC_KEYS = ("notebook", "out_dir", "defaults", "matrix", "runs", "kernel")


@dataclass(frozen=True)
class Run:
    """One execution of the notebook: a name (its output files) and the parameters papermill injects."""

    name: str
    parameters: dict = field(hash=False)

    @property
    def params_hash(self) -> str:
        text = json.dumps(self.parameters, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Batch:
    notebook: Path
    out_dir: Path
    runs: tuple[Run, ...]
    kernel: str | None = None


def _slug(value) -> str:
    if isinstance(value, (list, tuple)):
        value = "+".join(map(str, value))
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", str(value)).strip("-").lower() or "x"


def _default_name(params: dict, keys: list[str]) -> str:
    keys = keys or sorted(params)
    return "_".join(_slug(params[k]) for k in keys if k in params)[:100] or "run"


def notebook_parameters(notebook: str | Path) -> dict:
    """The notebook's declared parameters (name -> papermill's description: type, default, help)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def load_batch(path: str | Path, *, out_dir: str | Path | None = None, notebook: str | Path | None = None) -> Batch:
    """Read and check a batch file: every run's parameters must be parameters the notebook declares,
    and run names must be unique. Raises ValueError naming the problem before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"batch file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if isinstance(raw, list):
        raw = {"runs": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a batch file is a mapping (or a list of parameter sets), got {type(raw).__name__}")
    unknown = set(raw) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    nb = Path(notebook or raw.get("notebook") or DEFAULT_NOTEBOOK)
    if not nb.is_absolute() and not nb.exists():
        nb = REPO_ROOT / nb
    if not nb.exists():
        raise ValueError(f"{path}: notebook {nb} does not exist")
    out = Path(out_dir or raw.get("out_dir") or Path("runs") / "batch" / path.stem).absolute()
    defaults = dict(raw.get("defaults") or {})

    runs: list[Run] = []
    matrix = raw.get("matrix") or {}
    if matrix:
        keys = list(matrix)
        values = [v if isinstance(v, list) else [v] for v in matrix.values()]
        for combo in itertools.product(*values):
            params = {**defaults, **dict(zip(keys, combo))}
            runs.append(Run(_default_name(params, keys), params))
    for i, item in enumerate(raw.get("runs") or []):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: run {i} is not a mapping: {item!r}")
        if "parameters" in item:
            extra = set(item) - {"name", "parameters"}
            if extra:
                raise ValueError(f"{path}: run {i} has key(s) {sorted(extra)} beside 'name' and 'parameters'")
            own = dict(item["parameters"] or {})
        else:
            own = {k: v for k, v in item.items() if k != "name"}
        params = {**defaults, **own}
        runs.append(Run(str(item.get("name") or _default_name(params, sorted(own))), params))
    if not runs:
        raise ValueError(f"{path}: no runs (give `runs:` and/or `matrix:`)")

    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: run names must be unique; repeated: {', '.join(dupes)} (give each a `name:`)")
    declared = notebook_parameters(nb)
    problems = [f"run {r.name!r} sets unknown parameter {k!r}" for r in runs for k in r.parameters if k not in declared]
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems) + f"; {nb.name} declares: {', '.join(declared)}")
    if "results_path" in declared:  # each run its own results file, unless it names one
        runs = [r if "results_path" in r.parameters else
                Run(r.name, {**r.parameters, "results_path": str(out / f"{r.name}.csv")}) for r in runs]
    return Batch(notebook=nb, out_dir=out, runs=tuple(runs), kernel=raw.get("kernel"))


def read_log(out_dir: str | Path) -> pd.DataFrame:
    """Every attempt recorded in `out_dir`, oldest first."""
    log = Path(out_dir) / LOG_NAME
    if not log.exists():
        return pd.DataFrame(columns=LOG_COLUMNS)
    return pd.read_csv(log, dtype=str, keep_default_na=False)


def finished(batch: Batch) -> set[str]:
    """Names of runs whose last attempt succeeded with the parameters they have now (and kept their notebook)."""
    log = read_log(batch.out_dir)
    last = log.groupby("name").tail(1).set_index("name") if len(log) else log
    done = set()
    for run in batch.runs:
        if run.name in last.index:
            row = last.loc[run.name]
            if row["status"] == "ok" and row["params_hash"] == run.params_hash \
                    and (batch.out_dir / f"{run.name}.ipynb").exists():
                done.add(run.name)
    return done


def _append_log(out_dir: Path, row: dict) -> None:
    log = out_dir / LOG_NAME
    new = not log.exists()
    with log.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()


def _failure(exc: BaseException) -> tuple[str, str]:
    """(status, one-line error) of a failed run."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return "failed", f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    if isinstance(exc, DeadKernelError):
        return "dead kernel", str(exc).strip().splitlines()[0] if str(exc).strip() else "the kernel died"
    if isinstance(exc, (CellTimeoutError, TimeoutError)):
        return "timeout", str(exc).strip().splitlines()[0] if str(exc).strip() else "a cell timed out"
    lines = traceback.format_exception_only(type(exc), exc)
    return "error", " ".join(line.strip() for line in lines)[:500]


def execute(batch: Batch, run: Run, *, kernel_name: str | None = None, cell_timeout: int | None = None,
            log_output: bool = False) -> dict:
    """Run one parameter set; never raises for a failure of the notebook, returns the log row."""
    import papermill

    batch.out_dir.mkdir(parents=True, exist_ok=True)
    output = batch.out_dir / f"{run.name}.ipynb"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(batch.notebook), str(output), parameters=run.parameters, kernel_name=kernel_name or batch.kernel,
            progress_bar=False, log_output=log_output, cwd=str(REPO_ROOT), execution_timeout=cell_timeout)
        status, error = "ok", ""
    except Exception as exc:  # noqa: BLE001 (every failure of a run is recorded, and the batch goes on)
        status, error = _failure(exc)
    row = dict(name=run.name, status=status, error=error, seconds=f"{time.perf_counter() - t0:.1f}",
               started=started, params_hash=run.params_hash, notebook=str(output),
               parameters=json.dumps(run.parameters, sort_keys=True, default=str))
    _append_log(batch.out_dir, row)
    return row


def run_batch(path: str | Path, *, out_dir: str | Path | None = None, notebook: str | Path | None = None,
              kernel_name: str | None = None, cell_timeout: int | None = None, force: bool = False,
              log_output: bool = False, echo=print) -> pd.DataFrame:
    """Run every run of the batch file that has not finished (all of them with `force`); one row per run."""
    batch = load_batch(path, out_dir=out_dir, notebook=notebook)
    done = set() if force else finished(batch)
    todo = [r for r in batch.runs if r.name not in done]
    echo(f"batch {path}: {len(batch.runs)} runs of {batch.notebook.name}, {len(done)} already finished, "
         f"{len(todo)} to run; output in {batch.out_dir}")
    rows = []
    for i, run in enumerate(batch.runs, 1):
        if run.name in done:
            rows.append(dict(name=run.name, status="ok", error="", seconds="", note="finished before, skipped"))
            continue
        echo(f"[{i}/{len(batch.runs)}] {run.name} ...")
        row = execute(batch, run, kernel_name=kernel_name, cell_timeout=cell_timeout, log_output=log_output)
        echo(f"[{i}/{len(batch.runs)}] {run.name}: {row['status']} in {row['seconds']} s"
             + (f" ({row['error']})" if row["error"] else ""))
        rows.append({k: row[k] for k in ("name", "status", "error", "seconds")} | {"note": "ran now"})
    summary = pd.DataFrame(rows, columns=["name", "status", "error", "seconds", "note"])
    summary["notebook"] = [str(batch.out_dir / f"{n}.ipynb") for n in summary["name"]]
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `moe-lab batch` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "batch", help="run the sweep notebook once per parameter set of a YAML file (papermill), resumably",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="batch YAML file (defaults / matrix / runs)")
    p.add_argument("--out-dir", help="where executed notebooks, results and batch_log.csv go "
                                     "(default: the file's out_dir, else runs/batch/<file stem>)")
    p.add_argument("--notebook", help=f"notebook to run (default: the file's, else {DEFAULT_NOTEBOOK.name})")
    p.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's own)")
    p.add_argument("--cell-timeout", type=int, help="seconds a cell may run before the run counts as failed")
    p.add_argument("--force", action="store_true", help="run every parameter set again, finished or not")
    p.add_argument("--log-output", action="store_true", help="echo the notebooks' output while they run")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    try:
        summary = run_batch(args.file, out_dir=args.out_dir, notebook=args.notebook, kernel_name=args.kernel,
                            cell_timeout=args.cell_timeout, force=args.force, log_output=args.log_output)
    except ValueError as exc:
        print(f"moe-lab batch: {exc}")
        return 2
    print(summary.drop(columns="notebook").to_string(index=False))
    failed = summary[summary["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} run(s) failed; run the same command again to retry only those")
    return 1 if len(failed) else 0
