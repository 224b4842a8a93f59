"""Figure: fraction of the roofline floor against tokens, every backend and compile mode, one panel per model.

    python benchmarks/plot_triton_gpu.py BENCH.csv [MORE.csv ...] figures/h100_triton_fused_roofline.png

Reads the rows `benchmarks/triton_gpu.py` writes (model, T, backend, compile_mode, ms, floor_ms, frac). With
several files, a (model, T, backend, compile_mode) point comes from the first file that has it: later files
only fill in what the first lacks (e.g. a second call's max-autotune rows).
"""

from __future__ import annotations

import sys

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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    *srcs, dst = argv
    df = pd.concat([pd.read_csv(src) for src in srcs], ignore_index=True)
    df = df.drop_duplicates(subset=["model", "T", "backend", "compile_mode"], keep="first")
    roofline_figure(df).savefig(dst, dpi=130, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
