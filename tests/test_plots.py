"""moe_lab.plots on synthetic results: figures draw only ok rows, name the others, and are written as PNG + SVG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from moe_lab import plots  # noqa: E402

COLUMNS = ["level", "model", "backend", "compile_mode", "dtype", "device", "device_name", "batch_size", "seq_len",
           "tokens", "routing", "mean_ms", "median_ms", "p90_ms", "peak_mem_mb", "extra_mem_mb", "compile_s", "tflops",
           "gbps", "floor_ms", "status", "error", "torch", "transformers", "timestamp"]
BACKENDS = ("eager", "batched_mm", "grouped_mm", "transformers:grouped_mm")
MODES = ("none", "max-autotune-no-cudagraphs")
# latency model of the synthetic backends: ms = a + b * tokens
COST = {"eager": (1.0, 0.05), "batched_mm": (0.1, 0.02), "grouped_mm": (0.5, 0.001)}


def synthetic_results(*, level="layer", model="tiny", device="cpu", device_name="cpu", batch_sizes=(1,),
                      seq_lens=(1, 4, 16, 64, 256), routing="uniform", with_bad_rows=True) -> pd.DataFrame:
    """Rows shaped like the harness's, with a skipped, an oom and a fallback row when `with_bad_rows`."""
    rows = []
    for mode in MODES:
        for backend in BACKENDS:
            a, b = COST[backend.removeprefix("transformers:")]
            for bs in batch_sizes:
                for seq in seq_lens:
                    tokens = bs * seq
                    ms = (a + b * tokens) * (0.5 if mode != "none" else 1.0)
                    rows.append(dict(
                        level=level, model=model, backend=backend, compile_mode=mode, dtype="float32", device=device,
                        device_name=device_name, batch_size=bs, seq_len=seq, tokens=tokens, routing=routing,
                        mean_ms=ms * 1.02, median_ms=ms, p90_ms=ms * 1.1,
                        peak_mem_mb=100 + (5.0 if "batched" in backend else 0.1) * tokens,
                        extra_mem_mb=(5.0 if "batched" in backend else 0.1) * tokens,
                        compile_s=0.0 if mode == "none" else 2.0, tflops=0.1, gbps=1.0, floor_ms=0.05 + 0.0005 * tokens,
                        status="ok", error="", torch="2.13.0", transformers="5.23.0",
                        timestamp="2025-01-01T00:00:00+00:00"))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if with_bad_rows:
        largest = df["tokens"].max()
        i = df.index[(df.backend == "batched_mm") & (df.tokens == largest) & (df.compile_mode == "none")][0]
        df.loc[i, ["status", "mean_ms", "median_ms", "p90_ms"]] = ["skipped: needs 140 GiB, 60 GiB available",
                                                                   np.nan, np.nan, np.nan]
        j = df.index[(df.backend == "eager") & (df.tokens == largest) & (df.compile_mode != "none")][0]
        df.loc[j, ["status", "error", "mean_ms", "median_ms", "p90_ms"]] = ["oom", "CUDA out of memory", np.nan,
                                                                            np.nan, np.nan]
        smallest = df["tokens"].min()
        k = df.index[(df.backend == "grouped_mm") & (df.tokens == smallest) & (df.compile_mode != "none")][0]
        df.loc[k, "status"] = "fallback:batched_mm"  # measured, but not grouped_mm: must not be drawn as it
    return df


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_synthetic_rows_have_the_harness_columns():
    harness = pytest.importorskip("moe_lab.harness")
    assert set(COLUMNS) <= set(harness.COLUMNS)


def _points_per_panel(fig) -> dict[str, int]:
    return {ax.get_title().removeprefix("compile: "): sum(len(line.get_xdata()) for line in ax.get_lines()
                                                          if line.get_gid() != "floor")
            for ax in fig.axes if ax.get_title().startswith("compile: ")}


@pytest.mark.parametrize("draw", [plots.latency_vs_tokens, plots.memory_vs_tokens, plots.roofline_fraction])
def test_curves_draw_every_ok_row_and_only_those(draw):
    df = synthetic_results()
    fig = draw(df)
    assert isinstance(fig, plt.Figure)
    ok = df[df.status == "ok"]
    assert _points_per_panel(fig) == {mode: int((ok.compile_mode == mode).sum()) for mode in MODES}


def test_latency_panels_are_log_log_with_a_p90_band():
    fig = plots.latency_vs_tokens(synthetic_results())
    panels = [ax for ax in fig.axes if ax.get_title().startswith("compile: ")]
    assert [ax.get_title() for ax in panels] == [f"compile: {m}" for m in MODES]
    for ax in panels:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(ax.collections) == len(BACKENDS)  # one band per backend


def test_figures_name_the_rows_they_leave_out():
    df = synthetic_results()
    for draw in plots.FIGURES.values():
        note = " ".join(" ".join(t.get_text().split()) for t in draw(df).texts)
        assert "3 rows without status ok" in note
        for word in ("skipped: needs 140 GiB", "oom", "fallback:batched_mm"):
            assert word in note
    excluded = plots.excluded_rows(df)
    assert sorted(excluded["status"].map(plots.status_kind)) == ["fallback", "oom", "skipped"]


def test_a_group_without_ok_rows_gives_a_figure_not_an_error():
    df = synthetic_results().assign(status="oom", median_ms=np.nan)
    for draw in plots.FIGURES.values():
        fig = draw(df)
        assert "no " in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_speedup_is_uncompiled_eager_over_the_backend_and_nan_where_not_ok():
    df = synthetic_results()
    table = plots.speedup_table(df)
    assert set(table["baseline"]) == {"eager (none)"}
    eager = df[(df.backend == "eager") & (df.compile_mode == "none")].set_index("tokens")["median_ms"]
    row = table[(table.backend == "grouped_mm") & (table.compile_mode == "none") & (table.tokens == 64)].iloc[0]
    assert row.speedup == pytest.approx(eager[64] / (0.5 + 0.001 * 64))
    skipped = table[(table.backend == "batched_mm") & (table.compile_mode == "none") & (table.tokens == 256)].iloc[0]
    assert np.isnan(skipped.speedup) and skipped.status.startswith("skipped")
    assert not ((table.backend == "eager") & (table.compile_mode == "none")).any()  # the baseline itself


def test_speedup_heatmap_has_a_panel_per_compile_mode_and_labels_bad_cells():
    fig = plots.speedup_heatmap(synthetic_results(batch_sizes=(1, 4), seq_lens=(16, 128)))
    assert [ax.get_title() for ax in fig.axes] == [f"compile: {m}" for m in MODES]
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert "skipped" in cells and "baseline" in cells
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["1x16", "4x16", "1x128", "4x128"]


def test_figure_names_come_from_device_level_model():
    gpu = synthetic_results(level="model", model="qwen1.5-moe-a2.7b", device="cuda",
                            device_name="NVIDIA H100 80GB HBM3")
    assert plots.figure_stem(gpu, "latency") == "h100-80gb-hbm3_model_qwen1.5-moe-a2.7b_float32_uniform_latency"
    assert plots.figure_stem(synthetic_results(), "memory") == "cpu_layer_tiny_float32_uniform_memory"


def test_decode_curves_are_drawn_against_batch_size():
    df = synthetic_results(level="decode", batch_sizes=(1, 4, 16), seq_lens=(128,), with_bad_rows=False)
    df["tokens"] = df["batch_size"]
    fig = plots.latency_vs_tokens(df)
    assert fig.axes[0].get_xlabel() == "batch size"


def test_write_figures_writes_png_and_svg_per_group_and_kind(tmp_path):
    df = pd.concat([synthetic_results(), synthetic_results(routing="skewed", with_bad_rows=False)])
    written = plots.write_figures(df, tmp_path, kinds=("latency", "speedup"))
    assert len(written) == 4
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"cpu_layer_tiny_float32_{r}_{k}.{ext}" for r in ("skewed", "uniform")
                           for k in ("latency", "speedup") for ext in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="valid: latency, memory, speedup, roofline"):
        plots.write_figures(df, tmp_path, kinds=("latncy",))


def test_summary_table_shows_status_for_cells_without_a_number():
    table = plots.summary_table(synthetic_results())
    assert list(table.columns) == ["eager", "batched_mm", "grouped_mm", "transformers:grouped_mm"]
    assert table.loc[("layer", "tiny", "none", 1, 256, 256), "batched_mm"] == "skipped"
