"""What the notebooks call that is neither a plot nor the harness: paths and results files.

Relative paths in a notebook's parameters are read from the repository root, whatever directory the
kernel starts in (JupyterLab and nbval start it in notebooks/, papermill in the caller's directory),
so `results_path="runs/notebooks/sweep.csv"` means the same file from every one of them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent


def project_path(path: str | Path) -> Path:
    """`path` itself if absolute, else the same path under the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def results_files(patterns: str | Path | Iterable[str | Path], *, must_exist: bool = True) -> list[Path]:
    """The CSV files that a list of paths or glob patterns names (sorted, without duplicates).

    A plain path that does not exist is an error when `must_exist`; a pattern may match nothing.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    files: list[Path] = []
    for pattern in patterns:
        full = project_path(pattern)
        if full.is_dir():
            files += sorted(full.rglob("*.csv"))
        elif glob.has_magic(str(pattern)):
            files += [Path(p) for p in sorted(glob.glob(str(full), recursive=True))]
        elif full.exists():
            files.append(full)
        elif must_exist:
            raise FileNotFoundError(f"results file {full} does not exist (relative paths are from {REPO_ROOT})")
    return list(dict.fromkeys(files))


def is_results_file(path: str | Path) -> bool:
    """Whether a CSV is a harness results file (its header has the key columns), not e.g. a batch_log.csv."""
    with open(path, newline="") as f:
        header = f.readline().strip().split(",")
    return {"level", "model", "backend", "compile_mode", "median_ms", "status"} <= set(header)


def read_results(patterns: str | Path | Iterable[str | Path], *, must_exist: bool = True) -> pd.DataFrame:
    """Every row of the results CSVs named by `patterns`, through the harness's `load_results`.

    Patterns may be files, directories (every *.csv below them) or globs; CSVs that are not results
    files (a batch's batch_log.csv beside its results) are passed over. No file at all (a pattern
    that matched nothing) gives an empty frame with the harness's columns.
    """
    from moe_lab.harness import COLUMNS, load_results

    files = [f for f in results_files(patterns, must_exist=must_exist) if is_results_file(f)]
    if not files:
        return pd.DataFrame(columns=list(COLUMNS))
    return load_results(files)
