"""benchmarks/ncu_summary.py: the metrics read from Nsight Compute's raw pages, in one unit each (CPU)."""

from __future__ import annotations

from pathlib import Path

import ncu_summary
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

NCU = ROOT / "data" / "results" / "h100" / "triton_gpu_run15" / "ncu"


def test_one_row_per_kernel_in_launch_order():
    table = ncu_summary.summarize(NCU / "olmoe-1b-7b_512_raw.csv")
    assert table["point"].unique().tolist() == ["olmoe-1b-7b_512"]
    assert table["kernel"].tolist()[:5] == ["_align_count_kernel", "_align_scatter_kernel", "_gate_up_grouped_kernel",
                                            "_down_grouped_kernel", "_topk_sum_kernel"]
    assert table["kernel"].str.startswith("nvjet_sm90").sum() == 2  # cuBLAS on the balanced products
    assert (table["device"] == "NVIDIA H100 80GB HBM3").all()


def test_units_are_converted_to_one_per_column():
    """The same column read in MB whether ncu wrote Mbyte or Gbyte (qwen3's gate/up reads over a GB)."""
    raw = pd.read_csv(NCU / "qwen3-30b-a3b_8192_raw.csv", low_memory=False)
    assert raw["dram__bytes_read.sum"].iloc[0] == "Gbyte" and raw["dram__bytes_write.sum"].iloc[0] == "Mbyte"
    table = ncu_summary.summarize(NCU / "qwen3-30b-a3b_8192_raw.csv")
    row = raw.iloc[1 + table["kernel"].tolist().index("_topk_sum_kernel")]
    summed = table.set_index("kernel").loc["_topk_sum_kernel"]
    assert summed["dram_read_mb"] == pytest.approx(float(row["dram__bytes_read.sum"]) * 1e3, rel=1e-3)
    assert summed["dram_write_mb"] == pytest.approx(float(row["dram__bytes_write.sum"]), rel=1e-3)
    assert summed["smem_kb"] == 0 and 200 < table["smem_kb"].max() <= 227 * 1.024  # KB (1000 bytes): <= 227 KiB


def test_a_unit_it_does_not_know_is_refused(tmp_path):
    raw = pd.read_csv(NCU / "olmoe-1b-7b_512_raw.csv", low_memory=False)
    raw.loc[0, "gpu__time_duration.sum"] = "fortnight"
    raw.to_csv(tmp_path / "odd_raw.csv", index=False)
    with pytest.raises(ValueError, match="does not convert"):
        ncu_summary.summarize(tmp_path / "odd_raw.csv")
