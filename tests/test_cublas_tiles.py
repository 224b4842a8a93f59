"""benchmarks/cublas_tiles.py: the fields read from cuBLAS's kernel names, and filling them in again (CPU)."""

from __future__ import annotations

import cublas_tiles
import pandas as pd

NVJET = "nvjet_sm90_tst_128x184_64x5_2x1_v_bz_coopA_TNT"
CUTLASS = "_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9x"


def test_a_cublas_name_spells_its_tile_k_step_stages_and_cluster():
    assert cublas_tiles.name_fields(NVJET) == dict(tile="128x184", k_step="64", stages="5", cluster="2x1")
    assert cublas_tiles.name_fields(CUTLASS) == dict(tile=None, k_step=None, stages=None, cluster=None)


def test_reparse_fills_the_fields_in_from_the_names(tmp_path):
    path = tmp_path / "cublas_tiles.csv"
    pd.DataFrame(dict(kernel=[NVJET, CUTLASS], us=[266.95, 362.22], tile=[None, None])).to_csv(path, index=False)
    assert cublas_tiles.main(["--reparse", str(path)]) == 0
    df = pd.read_csv(path, dtype=str)
    assert list(df.columns) == ["kernel", "us", "tile", "k_step", "stages", "cluster"]
    assert df.loc[0, ["tile", "k_step", "stages", "cluster"]].tolist() == ["128x184", "64", "5", "2x1"]
    assert df.loc[1, ["tile", "cluster"]].isna().all()
    assert df["us"].tolist() == ["266.95", "362.22"]
