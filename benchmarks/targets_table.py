"""Issue 6's targets table (markdown) from `benchmarks/triton_gpu.py` bench CSVs and the harness's compiled rows.

    python benchmarks/targets_table.py BENCH.csv [MORE.csv ...] [--harness data/results/h100/layer-compiled-*.csv]
        [--passes N]

triton_fused and auto come from the first bench file, or with --passes N are the median of the first N files
(passes of one command, so that one pass's slow cell does not stand for the point); "best transformers" is the
fastest transformers row
(uniform routing, any compile mode) over every file given, bench and harness alike, so no faster
measurement of theirs is left out. frac = floor / ms; auto <= best compares auto's ms with that minimum.
Only the (model, T) points the first file measured are rows: a later file's extra points have nothing to compare.
"""

from __future__ import annotations

import argparse

import pandas as pd


def transformers_rows(bench: list[pd.DataFrame], harness: list[pd.DataFrame]) -> pd.DataFrame:
    rows = [b[b["backend"].str.startswith("transformers:")][["model", "T", "backend", "compile_mode", "ms"]]
            for b in bench]
    for h in harness:
        h = h[(h["routing"] == "uniform") & h["backend"].str.startswith("transformers:") & (h["status"] == "ok")]
        rows.append(h.rename(columns={"seq_len": "T", "median_ms": "ms"})[["model", "T", "backend", "compile_mode",
                                                                           "ms"]])
    out = pd.concat(rows, ignore_index=True).dropna(subset=["ms"])
    return out.loc[out.groupby(["model", "T"])["ms"].idxmin()].set_index(["model", "T"])


def targets_table(bench: list[pd.DataFrame], harness: list[pd.DataFrame], passes: int = 1) -> pd.DataFrame:
    first = bench[0][bench[0]["compile_mode"] == "none"]
    runs = pd.concat(b[b["compile_mode"] == "none"] for b in bench[:passes])
    ours = runs.pivot_table(index=["model", "T"], columns="backend", values="ms", aggfunc="median")[["triton_fused",
                                                                                                       "auto"]]
    floor = first.groupby(["model", "T"])["floor_ms"].first()
    best = transformers_rows(bench, harness)
    t = pd.DataFrame({"floor ms": floor, "triton_fused ms": ours["triton_fused"],
                      "frac": floor / ours["triton_fused"], "auto ms": ours["auto"], "best transformers ms": best["ms"],
                      "its backend/mode": best["backend"].str.removeprefix("transformers:") + "/"
                      + best["compile_mode"]})
    t = t.loc[ours.index]
    t["auto <= best"] = (t["auto ms"] <= t["best transformers ms"]).map({True: "yes", False: "no"})
    order = list(dict.fromkeys(first["model"]))
    return t.reset_index().sort_values(["model", "T"], key=lambda c: c.map(order.index) if c.name == "model" else c)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", nargs="+")
    p.add_argument("--harness", nargs="*", default=[])
    p.add_argument("--passes", type=int, default=1, help="ours: the median of the first N bench files")
    args = p.parse_args(argv)
    t = targets_table([pd.read_csv(f) for f in args.bench], [pd.read_csv(f) for f in args.harness], args.passes)
    print(markdown(t))
    return 0


def markdown(t: pd.DataFrame) -> str:
    """A markdown table: ms to 4 decimals, frac to 3 (so that 0.697 does not read as 70%), numbers right-aligned."""
    digits = {"frac": 3}
    cells = [[f"{v:.{digits.get(c, 4)}f}" if isinstance(v, float) else str(v) for c, v in row.items()]
             for _, row in t.iterrows()]
    align = ["---:" if pd.api.types.is_numeric_dtype(t[c]) else "---" for c in t.columns]
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


if __name__ == "__main__":
    raise SystemExit(main())
