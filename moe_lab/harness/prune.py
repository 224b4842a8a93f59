"""Drop rows from results CSVs so that a sweep measures those cells again (`moe-lab prune`).

For rows that a change has made stale: a backend's code changed, or a status (`oom`, `error`) came from
a bug fixed since (or a tuned config changed for some token counts: `--tokens`). Rows are chosen by exact
values of cell fields (numbers as the CSV writes them), by status (the whole status or its
kind, the part before the first colon: `oom` matches `oom: out of memory on cuda`), and by `--before`
(rows that finished before a UTC time); every filter given must match. A resumed `moe-lab sweep`, or
`moe-lab batch --force` (each notebook again, measuring only the cells without a row), then reruns
exactly those cells. Files are rewritten atomically; git keeps what was there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from moe_lab.harness.sweep import RESULTS_MARKER, expand_paths, load_results, read_rows, rewrite_rows

FILTER_FIELDS = ("level", "model", "backend", "compile_mode", "dtype", "device", "routing", "batch_size", "seq_len",
                 "tokens", "status")


def _utc(value: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def status_kind(status: str) -> str:
    """`oom` of `oom: out of memory on cuda`, `fallback` of `fallback:batched_mm: ...`, `ok` of `ok`."""
    return status.split(":", 1)[0].strip()


def row_matches(row: dict, filters: dict[str, list[str]], before: pd.Timestamp | None) -> bool:
    """Every filter matches: the row's field is one of the values given (a status also by its kind), and it
    finished before `before`."""
    for field, values in filters.items():
        value = row.get(field, "")
        if value not in values and not (field == "status" and status_kind(value) in values):
            return False
    return before is None or (row.get("timestamp", "") != "" and _utc(row["timestamp"]) < before)


def prune(paths, *, before: str | None = None, dry_run: bool = False,
          **filters: list[str]) -> list[tuple[Path, int, int]]:
    """Drop the matching rows of every results CSV under `paths` (files, directories, globs); returns
    (file, rows dropped, rows before) per file. At least one filter or `before` is required; files that hold
    the same cell twice (a superseded copy beside the current one) are refused before anything changes."""
    unknown = sorted(set(filters) - set(FILTER_FIELDS))
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; valid: {', '.join(FILTER_FIELDS)}")
    filters = {k: [str(v) for v in vs] for k, vs in filters.items() if vs}
    if not filters and before is None:
        raise ValueError("give at least one filter or --before: pruning would drop every row")
    cutoff = _utc(before) if before is not None else None
    files = []
    for path, explicit in expand_paths(paths):
        with open(path, newline="") as f:
            header = set(f.readline().strip().split(","))
        if RESULTS_MARKER <= header:
            files.append(path)
        elif explicit:
            raise ValueError(f"{path} is not a results CSV (it lacks {', '.join(sorted(RESULTS_MARKER))})")
    if files:
        load_results(files)  # one row per cell across them, or a ValueError naming the files
    out = []
    for path in files:
        rows = read_rows(path)
        keep = [r for r in rows if not row_matches(r, filters, cutoff)]
        dropped = len(rows) - len(keep)
        if dropped and not dry_run:
            rewrite_rows(path, keep)
        out.append((path, dropped, len(rows)))
    return out


def add_prune_parser(sub) -> None:
    """Register `moe-lab prune` on the CLI's subparsers."""
    p = sub.add_parser("prune", help="drop results rows (stale backends, fixed failures) so a sweep measures them "
                                     "again", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="results CSVs, directories of them, or globs")
    for field in FILTER_FIELDS:
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, metavar="A,B",
                       help=f"rows whose {field} is one of these (comma-separated)")
    p.add_argument("--before", metavar="TIME", help="rows that finished before this time (ISO 8601, UTC if no zone)")
    p.add_argument("--dry-run", action="store_true", help="count what would be dropped, change nothing")
    p.set_defaults(func=_prune_command)


def _prune_command(args: argparse.Namespace) -> int:
    filters = {f: getattr(args, f).split(",") for f in FILTER_FIELDS if getattr(args, f)}
    try:
        result = prune(args.paths, before=args.before, dry_run=args.dry_run, **filters)
    except (ValueError, FileNotFoundError) as exc:
        print(f"moe-lab prune: {exc}")
        return 2
    verb = "would drop" if args.dry_run else "dropped"
    for path, dropped, total in result:
        print(f"{path}: {verb} {dropped} of {total} rows")
    if any(d for _, d, _ in result) and not args.dry_run:
        print("rerun the sweep (or `moe-lab batch FILE --force`) to measure those cells again")
    return 0
