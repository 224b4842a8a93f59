"""Figure: fraction of the roofline floor against tokens, every backend and compile mode, one panel per model.

    python benchmarks/plot_triton_gpu.py [--passes N] BENCH.csv [MORE.csv ...] figures/h100_triton_fused_roofline.png

Reads the rows `benchmarks/triton_gpu.py` writes (model, T, backend, compile_mode, ms, floor_ms, frac). With
several files, a (model, T, backend, compile_mode) point comes from the first file that has it: later files
only fill in what the first lacks (e.g. a second call's max-autotune rows). With --passes N the first N files
are passes of one command and count as one, each point the median of its passes' times (as
`targets_table.py --passes`).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def roofline_figure(df: pd.DataFrame) -> plt.Figure:
    df = df[pd.to_numeric(df["frac"], errors="coerce").notna()].copy()
    df["frac"] = df["frac"].astype(float)
    df["label"] = df["backend"] + " (" + df["compile_mode"] + ")"
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.8), sharey=True, squeeze=False)
    labels = sorted(set(df["label"]), key=lambda s: (not s.startswith("triton"), not s.startswith("auto"), s))
    cmap = plt.get_cmap("tab10")
    style = {lab: (cmap(i % 10), "-" if lab.startswith(("triton", "auto")) else "--") for i, lab in enumerate(labels)}
    for ax, model in zip(axes[0], models):
        sub = df[df["model"] == model]
        for lab in labels:
            d = sub[sub["label"] == lab].sort_values("T")
            if d.empty:
                continue
            color, ls = style[lab]
            marker = "*" if "cuda-graph" in lab else "o"
            ax.plot(d["T"], d["frac"], ls, marker=marker, color=color, label=lab, ms=4 if marker == "o" else 10)
        ax.set_xscale("log", base=2)
        ax.set_title(model)
        ax.set_xlabel("tokens T")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("fraction of the roofline floor (floor / time)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    device = df["device"].iloc[0] if "device" in df else ""
    dtypes = ", ".join(dict.fromkeys(df["dtype"])) if "dtype" in df else "bfloat16"
    fig.suptitle(f"experts layer, {dtypes}, uniform routing, {device}: floor = max(hit-expert bytes / copy "
                 "bandwidth, flops / matmul peak)", fontsize=9)
    fig.tight_layout()
    return fig


KEYS = ["model", "T", "backend", "compile_mode"]


def first_of(frames: list[pd.DataFrame], passes: int = 1) -> pd.DataFrame:
    """One row per point: the median over the first `passes` frames (frac = floor / that median), then what
    the later frames add."""
    runs = pd.concat(frames[:passes], ignore_index=True)
    runs["ms"] = pd.to_numeric(runs["ms"], errors="coerce")
    first = runs.groupby(KEYS, as_index=False, sort=False).agg(
        ms=("ms", "median"), floor_ms=("floor_ms", "first"), dtype=("dtype", "first"), device=("device", "first"))
    first["frac"] = first["floor_ms"] / first["ms"]
    df = pd.concat([first, *frames[passes:]], ignore_index=True)
    return df.drop_duplicates(subset=KEYS, keep="first")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="bench CSVs, then the PNG to write")
    p.add_argument("--passes", type=int, default=1, help="the first N CSVs are passes of one command")
    args = p.parse_args(argv)
    *srcs, dst = args.files
    roofline_figure(first_of([pd.read_csv(src) for src in srcs], args.passes)).savefig(dst, dpi=130,
                                                                                    bbox_inches="tight")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
