"""benchmarks/targets_table.py: the issue's targets table from bench and harness rows (CPU, tiny frames)."""

from __future__ import annotations

import pandas as pd
import targets_table


def bench(rows):
    return pd.DataFrame(rows, columns=["model", "T", "backend", "compile_mode", "ms", "floor_ms"])


def test_best_transformers_is_the_fastest_row_of_every_file_and_auto_is_compared_with_it():
    first = bench([("m", 16, "triton_fused", "none", 0.30, 0.24), ("m", 16, "auto", "none", 0.31, 0.24),
                   ("m", 16, "transformers:grouped_mm", "none", 0.50, 0.24),
                   ("m", 16, "transformers:grouped_mm", "default", None, 0.24),  # not run: no time left
                   ("m", 1, "triton_fused", "none", 0.04, 0.02), ("m", 1, "auto", "none", 0.05, 0.02),
                   ("m", 1, "transformers:batched_mm", "none", 0.20, 0.02)])
    second = bench([("m", 16, "transformers:grouped_mm", "max-autotune-no-cudagraphs", 0.33, 0.24),
                    ("m", 16, "auto", "none", 0.20, 0.24),  # later files give transformers rows only
                    ("m", 4, "transformers:batched_mm", "none", 0.30, 0.03)])  # not in the first: no row
    harness = pd.DataFrame([
        dict(model="m", seq_len=1, backend="transformers:batched_mm", compile_mode="max-autotune-no-cudagraphs",
             routing="uniform", median_ms=0.045, status="ok"),
        dict(model="m", seq_len=1, backend="transformers:batched_mm", compile_mode="default",
             routing="skewed", median_ms=0.001, status="ok"),  # other routing: not a target row
        dict(model="m", seq_len=16, backend="transformers:grouped_mm", compile_mode="default",
             routing="uniform", median_ms=0.001, status="oom"),  # no measurement
    ])
    t = targets_table.targets_table([first, second], [harness]).set_index("T")
    assert t.loc[16, "best transformers ms"] == 0.33
    assert t.loc[16, "its backend/mode"] == "grouped_mm/max-autotune-no-cudagraphs"
    assert t.loc[16, "auto ms"] == 0.31 and t.loc[16, "auto <= best"] == "yes"
    assert t.loc[16, "frac"] == 0.24 / 0.30
    assert t.loc[1, "best transformers ms"] == 0.045 and t.loc[1, "auto <= best"] == "no"
    assert list(t.index) == [1, 16]
    lines = targets_table.markdown(t.reset_index()).splitlines()
    assert lines[2] == ("| 1 | m | 0.0200 | 0.0400 | 0.500 | 0.0500 | 0.0450 | batched_mm/max-autotune-no-cudagraphs"
                        " | no |")


def test_passes_take_the_median_of_ours_over_the_first_files():
    """--passes 3: triton_fused and auto are each the median of the first three files, so one pass's slow cell
    does not stand for the point; transformers' rows still come from every file."""
    passes = [bench([("m", 16, "triton_fused", "none", ms, 0.24), ("m", 16, "auto", "none", ms + 0.01, 0.24),
                     ("m", 16, "transformers:grouped_mm", "none", 0.50, 0.24)]) for ms in (0.30, 0.45, 0.31)]
    compiled = bench([("m", 16, "transformers:grouped_mm", "max-autotune-no-cudagraphs", 0.33, 0.24)])
    t = targets_table.targets_table([*passes, compiled], [], passes=3).set_index("T")
    assert t.loc[16, "triton_fused ms"] == 0.31 and t.loc[16, "auto ms"] == 0.32
    assert t.loc[16, "best transformers ms"] == 0.33
    assert targets_table.targets_table([*passes, compiled], []).set_index("T").loc[16, "triton_fused ms"] == 0.30
