"""Where a kernel's warps wait, per SASS instruction, from Nsight Compute's source page.

    ncu --profile-from-start off --clock-control none --set full --import-source yes --section SourceCounters \\
        -k regex:_ws_grouped -o OUT/src python benchmarks/ncu_call.py --model M --tokens T     (on the GPU)
    ncu -i OUT/src.ncu-rep --page source --csv --print-source sass > OUT/source.csv
    python benchmarks/ncu_stalls.py OUT/source.csv[.gz] --top 15 [--out stalls.csv]

The page holds one table per profiled kernel (in launch order): each SASS instruction's warp-stall samples
and how often it ran. Printed (and with --out written) per kernel: the instructions with the most samples,
each with its share of the kernel's samples, its execution count (a warp's count over the whole grid, so
the producer's and the consumers' loop bodies tell apart by it) and its two largest stall reasons.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

import pandas as pd

SAMPLES = "Warp Stall Sampling (All Samples)"
KERNEL_ROW = '"Kernel Name",'


def read_source_page(path: Path) -> list[tuple[str, pd.DataFrame]]:
    """(kernel name, its per-instruction table) for each kernel of an exported source page."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        text = f.read()
    tables = []
    for chunk in text.split(KERNEL_ROW)[1:]:
        name_line, _, body = chunk.partition("\n")
        name = next(csv.reader([name_line]))[0]
        table = pd.read_csv(io.StringIO(body))
        table[SAMPLES] = pd.to_numeric(table[SAMPLES], errors="coerce").fillna(0)
        tables.append((name, table))
    return tables


def top_stalls(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` instructions by stall samples: share of the kernel's samples, execution count, the two
    largest stall reasons (their share of the instruction's samples)."""
    reasons = [c for c in table.columns if c.startswith("stall_") and "Not Issued" not in c]
    total = table[SAMPLES].sum()
    rows = []
    for _, r in table.nlargest(top, SAMPLES).iterrows():
        counts = pd.to_numeric(r[reasons], errors="coerce").fillna(0).sort_values(ascending=False)
        rows.append({"address": r["Address"], "sass": " ".join(str(r["Source"]).split()),
                     "samples_pct": round(100 * r[SAMPLES] / total, 1),
                     "executed": int(pd.to_numeric(r["Instructions Executed"], errors="coerce") or 0),
                     "reasons": ", ".join(f"{k.removeprefix('stall_')} {100 * v / max(r[SAMPLES], 1):.0f}%"
                                          for k, v in counts.head(2).items() if v)})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", type=Path, help="also write the rows here (CSV, a `kernel` column first)")
    args = p.parse_args(argv)
    frames = []
    for i, (name, table) in enumerate(read_source_page(args.source)):
        rows = top_stalls(table, args.top)
        print(f"kernel {i}: {name}, {int(table[SAMPLES].sum())} samples")
        print(rows.to_string(index=False))
        frames.append(rows.assign(kernel=f"{i}:{name}"))
    if args.out:
        out = pd.concat(frames)
        out[["kernel"] + [c for c in out.columns if c != "kernel"]].to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
