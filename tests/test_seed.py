"""moe_lab.seed: the published table's layout, ratios, and the verdict on each claim, on synthetic rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moe_lab import seed

H100 = "NVIDIA H100 80GB HBM3"


def as_our_results(published: pd.DataFrame, *, family: str = "transformers", device_name: str = H100,
                   scale: float = 0.5) -> pd.DataFrame:
    """The published rows turned into harness rows of another device (latencies x `scale`)."""
    prefix = "transformers:" if family == "transformers" else ""
    return pd.DataFrame(dict(
        level="model", model=seed.SEED_MODEL, backend=prefix + published["backend"],
        compile_mode=published["compile_mode"],
        dtype="bfloat16", device="cuda", device_name=device_name, batch_size=published["batch_size"],
        seq_len=published["seq_len"], tokens=published["tokens"], routing="uniform",
        mean_ms=published["mean_ms"] * scale, median_ms=published["median_ms"] * scale,
        p90_ms=published["p90_ms"] * scale, peak_mem_mb=published["peak_mem_mb"], status="ok", error="",
        timestamp="2025-01-02T00:00:00+00:00"))


@pytest.fixture(scope="module")
def published():
    return seed.load_published()


def _set(df, backend, mode, cells, **values):
    """Change `values` of the rows of `backend` in compile `mode` at (batch, seq) `cells`."""
    df = df.copy()
    pick = df["backend"].str.endswith(backend) & (df["compile_mode"] == mode) & \
        pd.Series(list(zip(df["batch_size"], df["seq_len"])), index=df.index).isin(cells)
    for col, v in values.items():
        df.loc[pick, col] = v
    return df


def verdict(table, claim, source):
    return table.set_index(["claim", "source"]).loc[(claim, source), "verdict"]


def test_published_table_reads_in_our_compile_modes(published):
    assert len(published) == 36
    assert set(published["compile_mode"]) == set(seed.SEED_COMPILE_MODES)
    row = published[(published.batch_size == 4) & (published.seq_len == 128) & (published.backend == "batched_mm")
                    & (published.compile_mode == "none")].iloc[0]
    assert row.median_ms == pytest.approx(1235.33) and row.peak_mem_mb == pytest.approx(61465.85)


def test_every_claim_holds_on_the_published_table_itself(published):
    table = seed.verdicts(published)
    assert list(table["claim"]) == list(seed.CLAIMS)
    assert set(table["verdict"]) == {"holds"}
    assert dict(zip(table["claim"], table["cells"])) == {
        "batched_mm_small_compiled": 2, "grouped_mm_larger": 9, "batched_mm_memory_spike": 4, "compile_effect": 4}


def test_layout_is_the_published_one_with_a_column_block_per_source(published):
    ours = as_our_results(published)
    tidy = seed.seed_data(ours)
    layout = seed.published_layout(tidy)
    assert list(dict.fromkeys(layout.columns.get_level_values(0))) == [
        seed.PUBLISHED_SOURCE, seed.H100_REFERENCE_SOURCE, "h100-80gb-hbm3 · transformers"]
    layout = seed.published_layout(seed.seed_data(ours, reference=None))
    assert layout.index.names == ["Batch Size", "Seq Length", "Torch Compile", "Implementation"]
    raw = pd.read_csv(seed.PUBLISHED_CSV, dtype={"torch_compile": str})
    assert list(layout.index) == list(zip(raw.batch_size, raw.seq_len, raw.torch_compile, raw.backend))
    sources = list(dict.fromkeys(layout.columns.get_level_values(0)))
    assert sources == [seed.PUBLISHED_SOURCE, "h100-80gb-hbm3 · transformers"]
    assert layout[(seed.PUBLISHED_SOURCE, "median_ms")].astype(float).tolist() == raw.median_ms.tolist()
    assert np.allclose(layout[("h100-80gb-hbm3 · transformers", "median_ms")].astype(float), raw.median_ms * 0.5)


def test_the_h100_reference_has_uncompiled_cells_only():
    tidy = seed.seed_data(published=None)
    assert set(tidy["source"]) == {seed.H100_REFERENCE_SOURCE} and len(tidy) == 12
    table = seed.verdicts(tidy).set_index("claim")["verdict"]
    assert table.to_dict() == {"batched_mm_small_compiled": "no data", "grouped_mm_larger": "holds",
                               "batched_mm_memory_spike": "holds", "compile_effect": "no data"}
    assert seed.missing_cells(tidy).empty  # references are not ours: nothing to run


def test_ratios_per_cell(published):
    ratios = seed.cell_ratios(published)
    row = ratios.loc[(seed.PUBLISHED_SOURCE, 1, 16, "max-autotune-no-cudagraphs")]
    assert row["batched_mm / grouped_mm"] == pytest.approx(23.86 / 59.55)
    assert row["fastest"] == "batched_mm"
    assert ratios.loc[(seed.PUBLISHED_SOURCE, 4, 128, "none"), "peak batched_mm / grouped_mm"] == \
        pytest.approx(61465.85 / 27762.45)


def test_compile_speedups(published):
    speedups = seed.compile_speedups(published).set_index(["backend", "compile_mode"])
    assert speedups.loc[("batched_mm", "max-autotune-no-cudagraphs"), "geomean"] == pytest.approx(2.13, abs=0.01)
    assert speedups.loc[("eager", "default"), "max"] < 1  # compile makes eager slower in the seed


def test_a_claim_that_fails_on_our_data_says_so(published):
    ours = as_our_results(published)
    # grouped_mm beats batched_mm at 1x16 under default compile: claim 1 holds only partly
    ours = _set(ours, "batched_mm", "default", [(1, 16)], median_ms=100.0)
    # and max-autotune no longer removes the memory spike
    ours = _set(ours, "batched_mm", "max-autotune-no-cudagraphs", [(4, 128)], peak_mem_mb=60000.0)
    table = seed.verdicts(seed.seed_data(ours))
    src = "h100-80gb-hbm3 · transformers"
    assert verdict(table, "batched_mm_small_compiled", src) == "partly"
    assert verdict(table, "grouped_mm_larger", src) == "holds"
    assert verdict(table, "compile_effect", src) == "partly"
    assert verdict(table, "compile_effect", seed.PUBLISHED_SOURCE) == "holds"
    evidence = table.set_index(["claim", "source"]).loc[("batched_mm_small_compiled", src), "evidence"]
    assert "1x16 default: grouped_mm fastest" in evidence


def test_no_memory_spike_does_not_hold(published):
    ours = as_our_results(published)
    flat = ours.assign(peak_mem_mb=27000.0)
    table = seed.verdicts(seed.seed_data(flat, published=None, reference=None))
    assert verdict(table, "batched_mm_memory_spike", "h100-80gb-hbm3 · transformers") == "does not hold"


def test_missing_and_failed_cells_are_excluded_and_listed(published):
    ours = as_our_results(published, family="moe_lab")
    ours = _set(ours, "batched_mm", "none", [(4, 128)], status="oom: out of memory on cuda", median_ms=np.nan,
                peak_mem_mb=np.nan)
    ours = ours[~((ours.compile_mode == "default") & (ours.backend == "eager"))]
    tidy = seed.seed_data(ours)
    src = "h100-80gb-hbm3 · moe_lab"
    missing = seed.missing_cells(tidy)
    assert len(missing) == 1 + 4
    assert set(missing["status"]) == {"oom: out of memory on cuda", "not run"}
    table = seed.verdicts(tidy)
    assert table.set_index(["claim", "source"]).loc[("batched_mm_memory_spike", src), "cells"] == 3
    layout = seed.published_layout(tidy)
    assert layout.loc[(4, 128, "False", "batched_mm"), (src, "median_ms")] == "oom"


def test_no_rows_of_ours_gives_no_data(published):
    table = seed.verdicts(seed.seed_data(pd.DataFrame()))
    assert set(table["source"]) == {seed.PUBLISHED_SOURCE, seed.H100_REFERENCE_SOURCE}
    ours_only = seed.verdicts(seed.seed_data(as_our_results(published).iloc[:0], published=None, reference=None))
    assert ours_only.empty


def test_only_the_seed_cells_of_our_results_count_and_the_latest_row_wins(published):
    ours = as_our_results(published)
    other = ours.assign(model="olmoe-1b-7b")  # another model
    layer = ours.assign(level="layer")  # another level
    fp32 = ours.assign(dtype="float32")
    older = ours.assign(median_ms=ours["median_ms"] * 10, timestamp="2024-12-31T00:00:00+00:00")
    both = pd.concat([as_our_results(published, family="moe_lab"), other, layer, fp32, older, ours])
    tidy = seed.our_rows(both)
    assert sorted(set(tidy["source"])) == ["h100-80gb-hbm3 · moe_lab", "h100-80gb-hbm3 · transformers"]
    assert len(tidy) == 2 * 36
    t = tidy[tidy.source.str.endswith("transformers")].sort_values(["batch_size", "seq_len", "backend", "compile_mode"])
    p = published.sort_values(["batch_size", "seq_len", "backend", "compile_mode"])
    assert np.allclose(t["median_ms"].to_numpy(float), p["median_ms"].to_numpy(float) * 0.5)


def test_other_cells_can_be_checked_the_same_way(published):
    """The same layout on another model's rows (how the notebook runs on CPU-sized data)."""
    tiny = as_our_results(published).assign(model="tiny", dtype="float32")
    tidy = seed.seed_data(tiny, published=None, reference=None, model="tiny", dtype="float32")
    assert len(tidy) == 36 and set(seed.verdicts(tidy)["verdict"]) == {"holds"}
