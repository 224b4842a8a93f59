"""benchmarks/plot_triton_gpu.py: which row stands for a point when several bench files are given (CPU)."""

from __future__ import annotations

import math

import pandas as pd
import plot_triton_gpu


def bench(rows):
    return pd.DataFrame([(*r, "bfloat16", "H100") for r in rows],
                        columns=["model", "T", "backend", "compile_mode", "ms", "floor_ms", "dtype", "device"])


def test_passes_count_as_one_file_by_their_median_and_later_files_only_fill_in():
    passes = [bench([("m", 16, "triton_fused", "none", ms, 0.24), ("m", 16, "transformers:grouped_mm", "none",
                                                                     0.5, 0.24)]) for ms in (0.30, 0.50, 0.32)]
    compiled = bench([("m", 16, "triton_fused", "none", 0.10, 0.24),  # a point the passes have: not taken
                      ("m", 16, "transformers:grouped_mm", "max-autotune-no-cudagraphs", 0.33, 0.24)])
    df = plot_triton_gpu.first_of([*passes, compiled], passes=3).set_index(["backend", "compile_mode"])
    assert df.loc[("triton_fused", "none"), "ms"] == 0.32
    assert math.isclose(df.loc[("triton_fused", "none"), "frac"], 0.24 / 0.32)
    assert df.loc[("transformers:grouped_mm", "max-autotune-no-cudagraphs"), "ms"] == 0.33
    assert len(df) == 3
    one = plot_triton_gpu.first_of([*passes, compiled]).set_index(["backend", "compile_mode"])
    assert one.loc[("triton_fused", "none"), "ms"] == 0.30  # without --passes the first file alone
