"""Figure: triton_fused's fraction of the roofline floor beside the libraries' GEMMs alone, one panel per model.

    python benchmarks/plot_gemm_ceiling.py data/results/h100/triton_gpu_run10/profile/gemm_ceiling.csv \
        figures/h100_gemm_ceiling.png

Reads the `gemm_ceiling.csv` files `benchmarks/triton_profile.py` writes; a (model, T) point comes from the
first file that has it (a re-measurement given first replaces the run's point). Lines: our whole call on uniform and
on balanced routing, our two GEMMs alone (on both routings), torch's grouped GEMM alone (tokens pre-sorted), and on
balanced groups (the dense best case) cuBLAS's batched GEMM, a plain Triton TMA batched GEMM and a persistent
warp-specialized Gluon one, each at its fastest tile; a line whose column a file lacks (runs before 10, 11) is
left out. Issue 6's targets as grey steps (85% from 16
to 512 tokens, 70% from 2048 to 16384).
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

LINES = {  # column -> (label, style)
    "whole_call_frac": ("triton_fused, whole call", "-o"),
    "whole_call_balanced_frac": ("triton_fused, whole call, balanced routing", ":o"),
    "ours_gemms_frac": ("triton_fused, its two GEMMs alone", "-s"),
    "ours_gemms_balanced_frac": ("triton_fused, its two GEMMs alone, balanced routing", ":s"),
    "torch_grouped_mm_gemms_frac": ("torch._grouped_mm, two GEMMs alone, tokens pre-sorted", "--^"),
    "cublas_bmm_balanced_frac": ("cuBLAS bmm, two GEMMs alone, balanced groups", "--v"),
    "triton_tma_bmm_balanced_frac": ("plain Triton TMA bmm (fastest tile), two GEMMs alone, balanced groups", "--D"),
    "gluon_ws_bmm_balanced_frac": ("Gluon warp-specialized bmm (fastest tile), two GEMMs alone, balanced groups",
                                   "--P"),
}
TARGETS = [((16, 512), 0.85), ((2048, 16384), 0.70)]


def ceiling_figure(df: pd.DataFrame) -> plt.Figure:
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.6), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = df[df["model"] == model].sort_values("T")
        for col, (label, style) in LINES.items():
            if col not in sub or sub[col].isna().all():
                continue
            ax.plot(sub["T"], sub[col], style, label=label, ms=4)
        for (lo, hi), frac in TARGETS:
            lo, hi = max(lo, sub["T"].min()), min(hi, sub["T"].max())  # within the tokens measured
            if lo <= hi:
                ax.hlines(frac, lo, hi, colors="grey", linewidth=3, alpha=0.4)
        ax.set_xscale("log", base=2)
        ax.set_title(model)
        ax.set_xlabel("tokens T")
        ax.set_ylim(0.3, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of the roofline floor (floor / time)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"experts layer, bf16, {df['device'].iloc[0]}, torch {df['torch'].iloc[0]}, triton "
                 f"{df['triton'].iloc[0]}; grey: issue 6's targets", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    *srcs, dst = argv
    df = pd.concat([pd.read_csv(src) for src in srcs], ignore_index=True).drop_duplicates(["model", "T"])
    ceiling_figure(df).savefig(dst, dpi=130, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
