"""benchmarks/ncu_stalls.py: the instructions where a kernel's warps wait, from Nsight Compute's source page
(CPU, on run 17's committed page and on a tiny one)."""

from __future__ import annotations

from pathlib import Path

import ncu_stalls
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

PAGE = ROOT / "data" / "results" / "h100" / "triton_gpu_run17" / "ncu_source" / "qwen3-30b-a3b_8192_source.csv.gz"
HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed",'
          '"stall_barrier","stall_long_sb","stall_barrier (Not Issued)"\n')


def test_one_table_per_kernel_of_the_committed_page():
    tables = ncu_stalls.read_source_page(PAGE)
    assert [name for name, _ in tables] == ["_ws_grouped_kernel"] * 2  # gate/up, then down
    gate_up = tables[0][1]
    assert gate_up["Source"].str.contains("HGMMA.64x256x16").any()  # ONE_MMA: one n256 wgmma per step
    top = ncu_stalls.top_stalls(gate_up, 5)
    assert top["samples_pct"].is_monotonic_decreasing and top["samples_pct"].sum() <= 100


def test_shares_counts_and_reasons(tmp_path):
    page = tmp_path / "page.csv"
    page.write_text('"Kernel Name","k_a",\n' + HEADER + '"0x10","BRA 0x40","30","8","0","30","0"\n'
                    '"0x20","HGMMA","10","16","9","1","5"\n"0x30","NOP","","16","","",""\n'
                    '"Kernel Name","k_b",\n' + HEADER + '"0x10","BAR.SYNC","4","2","4","0","4"\n')
    (name_a, table_a), (name_b, table_b) = ncu_stalls.read_source_page(page)
    assert (name_a, name_b) == ("k_a", "k_b")
    top = ncu_stalls.top_stalls(table_a, 2)
    assert top["sass"].tolist() == ["BRA 0x40", "HGMMA"]
    assert top["samples_pct"].tolist() == [75.0, 25.0]
    assert top["executed"].tolist() == [8, 16]
    assert top["reasons"].tolist() == ["long_sb 100%", "barrier 90%, long_sb 10%"]  # not-issued columns left out
    assert ncu_stalls.top_stalls(table_b, 5)["samples_pct"].tolist() == [pytest.approx(100.0)]


def test_main_writes_every_kernels_rows(tmp_path):
    out = tmp_path / "stalls.csv"
    assert ncu_stalls.main([str(PAGE), "--top", "3", "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert rows["kernel"].tolist() == ["0:_ws_grouped_kernel"] * 3 + ["1:_ws_grouped_kernel"] * 3
