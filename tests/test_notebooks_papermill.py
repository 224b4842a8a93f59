"""The notebooks through papermill with non-default parameters, and how they are committed.

nbval runs every notebook with its defaults (`pytest --nbval-lax`, see pyproject.toml); these tests
inject other values, lists included, the way `papermill ... -y '<yaml>'` and `moe-lab batch` do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SWEEP = NOTEBOOKS / "01_sweep.ipynb"
SWEEP_PARAMETERS = ["device", "dtype", "model", "level", "backends", "compile_modes", "batch_sizes", "seq_lens",
                    "routing", "warmup", "iters", "results_path"]
ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("*.ipynb"))


def papermill_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "papermill", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """The sweep notebook run by papermill's command line with list parameters given as YAML (-y)."""
    tmp = tmp_path_factory.mktemp("sweep")
    params = dict(backends=["eager", "grouped_mm"], batch_sizes=[1, 2], seq_lens=[4], compile_modes=["none"],
                  warmup=0, iters=2, routing="skewed", results_path=str(tmp / "results.csv"))
    proc = papermill_cli(str(SWEEP), str(tmp / "sweep.ipynb"), "--no-progress-bar", "-y", yaml.safe_dump(params))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, params


def test_sweep_notebook_takes_list_parameters_from_yaml(sweep_run):
    from moe_lab.harness import COLUMNS

    tmp, params = sweep_run
    df = pd.read_csv(tmp / "results.csv")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2 * 2 * 1
    assert sorted(set(df["backend"])) == ["eager", "grouped_mm"]
    assert sorted(set(df["batch_size"])) == [1, 2] and set(df["seq_len"]) == {4}
    assert set(df["routing"]) == {"skewed"} and set(df["iters"]) == {2}
    assert set(df["status"]) == {"ok"}
    executed = nbformat.read(tmp / "sweep.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "batch_sizes = [1, 2]" in injected[0].source


def test_figures_notebook_writes_png_and_svg_named_after_the_data(sweep_run):
    import papermill

    tmp, _ = sweep_run
    out = tmp / "figures"
    papermill.execute_notebook(str(NOTEBOOKS / "02_figures.ipynb"), str(tmp / "figures.ipynb"), progress_bar=False,
                               parameters=dict(results=[str(tmp / "*.csv")], out_dir=str(out),
                                               kinds=["latency", "speedup"]))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"cpu_layer_tiny_float32_skewed_{kind}.{ext}" for kind in ("latency", "speedup")
                           for ext in ("png", "svg"))


def test_seed_notebook_checks_the_claims_on_injected_results(tmp_path):
    import papermill

    from moe_lab import seed
    from moe_lab.harness import COLUMNS

    published = seed.load_published()
    ours = pd.DataFrame({c: "" for c in COLUMNS}, index=published.index).assign(
        level="model", model="qwen1.5-moe-a2.7b", backend="transformers:" + published["backend"],
        compile_mode=published["compile_mode"], dtype="bfloat16", device="cuda", device_name="NVIDIA H100 80GB HBM3",
        batch_size=published["batch_size"], seq_len=published["seq_len"], tokens=published["tokens"],
        median_ms=published["median_ms"] / 2, mean_ms=published["mean_ms"] / 2, p90_ms=published["p90_ms"] / 2,
        peak_mem_mb=published["peak_mem_mb"], status="ok", timestamp="2025-01-01T00:00:00+00:00")
    ours.to_csv(tmp_path / "h100.csv", index=False)
    papermill.execute_notebook(str(NOTEBOOKS / "03_seed_reproduction.ipynb"), str(tmp_path / "seed.ipynb"),
                               progress_bar=False,
                               parameters=dict(results=[str(tmp_path / "h100.csv")], out_dir=str(tmp_path / "seed")))
    verdicts = pd.read_csv(tmp_path / "seed" / "seed_verdicts.csv")
    ours = "h100-80gb-hbm3 · transformers"
    assert set(verdicts["source"]) == {seed.PUBLISHED_SOURCE, seed.H100_REFERENCE_SOURCE, ours}
    assert set(verdicts.loc[verdicts["source"] == ours, "verdict"]) == {"holds"}
    layout = pd.read_csv(tmp_path / "seed" / "seed_layout.csv", header=[0, 1], index_col=[0, 1, 2, 3])
    assert len(layout) == 36


TOUR_CHECK_OUTPUT = ("backends that disagree with the float64 reference: none\n"
                     "eager, batched_mm, grouped_mm: pass, pass, pass\n")


def test_tour_notebook_check_cell_prints_the_expected_verdict(tmp_path):
    """The tour's `# NBVAL_CHECK_OUTPUT` cell, run with its defaults, prints exactly the expected verdict. The
    notebook is committed cleared, so nbval (which compares with stored outputs and skips cells stored
    unrun) compares it only in a copy saved with outputs; this test is the comparison CI makes."""
    import papermill

    out = tmp_path / "tour.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "00_tour.ipynb"), str(out), progress_bar=False)
    checked = [c for c in nbformat.read(out, as_version=4).cells
               if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert len(checked) == 1
    printed = "".join(o.get("text", "") for o in checked[0].outputs if o.output_type == "stream")
    assert printed == TOUR_CHECK_OUTPUT


def test_help_notebook_documents_every_sweep_parameter():
    proc = papermill_cli("--help-notebook", str(SWEEP))
    assert proc.returncode == 0, proc.stderr
    for name in SWEEP_PARAMETERS:
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(f"{name}:"))
        assert "(default" in line, line
    assert "tokens per sequence" in proc.stdout  # the help comments come through


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert not c.outputs and c.execution_count is None, "outputs must be cleared"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and code.index(tagged[0]) == 0, "one `parameters` cell, the first code cell"
    for line in tagged[0].source.splitlines():
        assert ":" in line.split("=")[0] and "#" in line, f"parameters are typed and commented: {line!r}"
    for cell in code:
        src = cell.source
        assert "def " not in src and "lambda" not in src and "class " not in src, "no function definitions"
        assert "import *" not in src and "sys.path" not in src
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_every_notebook_is_collected_by_nbval():
    config = (ROOT / "pyproject.toml").read_text()
    assert "--nbval-lax" in config and '"notebooks"' in config
    assert [p.name for p in ALL_NOTEBOOKS] == ["00_tour.ipynb", "01_sweep.ipynb", "02_figures.ipynb",
                                              "03_seed_reproduction.ipynb"]


def test_notebooks_read_results_files_only_and_paths_from_the_repo_root(tmp_path):
    from moe_lab.harness import COLUMNS
    from moe_lab.notebook import REPO_ROOT, project_path, read_results

    row = {c: "" for c in COLUMNS} | dict(level="layer", model="tiny", backend="eager", compile_mode="none",
                                          batch_size=1, seq_len=4, tokens=4, median_ms=1.0, status="ok")
    (tmp_path / "sub").mkdir()
    pd.DataFrame([row]).to_csv(tmp_path / "sub" / "a.csv", index=False)
    pd.DataFrame([dict(name="a", status="ok", error="")]).to_csv(tmp_path / "sub" / "batch_log.csv", index=False)
    assert len(read_results([tmp_path])) == 1  # a directory: its CSVs, the batch log passed over
    assert len(read_results([str(tmp_path / "**" / "*.csv")])) == 1
    assert read_results([str(tmp_path / "none*.csv")], must_exist=False).empty
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results([tmp_path / "missing.csv"])
    assert project_path("runs/x.csv") == REPO_ROOT / "runs" / "x.csv"
    assert project_path(tmp_path) == tmp_path
