"""benchmarks/bench_rows.py: the columns every GPU benchmark row carries, and the one CSV its rows become."""

from __future__ import annotations

import pandas as pd
import torch
from bench_rows import versions, write_rows


def test_rows_become_one_csv_with_every_key_in_first_seen_order(tmp_path):
    rows = [dict(model="a", us=1.5), dict(model="b", us=2.0, status="timeout")]
    path = write_rows(rows, tmp_path / "new" / "dir", "x.csv")
    assert path == tmp_path / "new" / "dir" / "x.csv"
    df = pd.read_csv(path)
    assert list(df.columns) == ["model", "us", "status"] and df["us"].tolist() == [1.5, 2.0]
    assert df["status"].isna().tolist() == [True, False]


def test_no_rows_no_file(tmp_path):
    assert write_rows([], tmp_path, "x.csv") is None and not (tmp_path / "x.csv").exists()


def test_versions_name_the_gpu_and_the_libraries(monkeypatch):
    import transformers
    import triton

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert versions() == {"device": "NVIDIA H100 80GB HBM3", "torch": torch.__version__,
                          "triton": triton.__version__, "transformers": transformers.__version__}
