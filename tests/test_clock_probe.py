"""benchmarks/clock_probe.py: reading nvidia-smi's samples and summarizing calls (CPU, no timing), and the
committed run's summary against its calls."""

from __future__ import annotations

from pathlib import Path

import clock_probe
import pandas as pd
import pytest

RUN30 = Path(__file__).resolve().parent.parent / "data/results/h100/triton_gpu_run30/clocks"


def test_samples_read_wall_time_and_the_power_cap_bit(tmp_path):
    path = tmp_path / "smi.csv"
    path.write_text("2026/11/24 06:03:52.637, 1980, 122.29, 0x0000000000000000\n"
                    "2026/11/24 06:03:52.657, 1605, 691.70, 0x0000000000000004\n"
                    "2026/11/24 06:03:52.677, 1710, 400.00, 0x0000000000000001\n")
    s = clock_probe.smi_samples(path)
    assert list(s["capped"]) == [False, True, False]  # 0x1 (idle) is not the power cap
    assert list(s["sm_mhz"]) == [1980, 1605, 1710]
    assert s["wall_s"].diff().iloc[1:].round(3).tolist() == [0.02, 0.02]


def test_summary_splits_first_calls_from_sustained_ones():
    rows = [dict(model="m", T=8, call=i, ms=1.0 if i < 8 else 1.25, floor_ms=0.5, sm_mhz=1980 if i < 8 else 1600,
                 power_w=700.0, capped=i >= 8 and i % 2 == 0) for i in range(200)]
    s = clock_probe.summarize(pd.DataFrame(rows)).iloc[0]
    assert (s["first_ms"], s["first_frac"], s["sustained_ms"], s["sustained_frac"]) == (1.0, 0.5, 1.25, 0.4)
    assert (s["sustained_sm_mhz"], s["sustained_capped_share"], s["calls"]) == (1600, 0.5, 200)


@pytest.mark.skipif(not (RUN30 / "calls.csv").exists(), reason="run 30's data not in this checkout")
def test_committed_summary_is_the_one_its_calls_give(tmp_path):
    calls = pd.read_csv(RUN30 / "calls.csv")
    clock_probe.write_summary(calls, tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), pd.read_csv(RUN30 / "summary.csv"))
