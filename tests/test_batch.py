"""The batch driver: one papermill run per parameter set; failures are recorded, the batch goes on, a rerun
runs only what did not finish. Mostly a small stand-in notebook (each run costs only a kernel start), and once
the sweep notebook itself."""

from __future__ import annotations

import textwrap

import nbformat
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from moe_lab import batch


@pytest.fixture()
def notebook(tmp_path):
    """Parameters `mode` and `results_path`; `mode` 'raise' raises while `<tmp>/broken` exists, 'die' kills
    the kernel while it exists, anything else writes one line to results_path."""
    params = new_code_cell(textwrap.dedent("""\
        mode: str = "ok"  # ok, raise or die
        results_path: str = ""  # where to write"""), metadata={"tags": ["parameters"]})
    body = new_code_cell(textwrap.dedent(f"""\
        import os, pathlib
        broken = pathlib.Path({str(tmp_path / "broken")!r}).exists()
        if mode == "raise" and broken:
            raise ValueError("asked to fail")
        if mode == "die" and broken:
            os._exit(1)
        pathlib.Path(results_path).write_text(mode)"""))
    nb = new_notebook(cells=[params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "stand_in.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "broken").touch()
    return path


def write_spec(tmp_path, notebook, **spec):
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({"notebook": str(notebook), "out_dir": str(tmp_path / "out"), **spec}))
    return path


def test_failed_runs_are_recorded_the_batch_goes_on_and_a_rerun_runs_only_those(tmp_path, notebook):
    spec = write_spec(tmp_path, notebook, runs=[{"name": "fine", "mode": "ok"}, {"name": "raises", "mode": "raise"},
                                                {"name": "dies", "mode": "die"}, {"name": "last", "mode": "ok"}])
    out = tmp_path / "out"
    first = batch.run_batch(spec, echo=lambda *a: None).set_index("name")
    assert first["status"].to_dict() == {"fine": "ok", "raises": "failed", "dies": "dead kernel", "last": "ok"}
    assert "ValueError: asked to fail" in first.loc["raises", "error"]
    assert (out / "fine.csv").read_text() == "ok" and (out / "last.csv").read_text() == "ok"
    assert (out / "raises.ipynb").exists()  # the executed notebook is kept, error and all
    log = batch.read_log(out)
    assert list(log["name"]) == ["fine", "raises", "dies", "last"]

    (tmp_path / "broken").unlink()  # whatever broke is fixed; the same command again
    second = batch.run_batch(spec, echo=lambda *a: None).set_index("name")
    assert set(second["status"]) == {"ok"}
    assert second["note"].to_dict() == {"fine": "finished before, skipped", "raises": "ran now", "dies": "ran now",
                                        "last": "finished before, skipped"}
    log = batch.read_log(out)
    assert list(log["name"]) == ["fine", "raises", "dies", "last", "raises", "dies"]
    assert (out / "dies.csv").read_text() == "die"

    third = batch.run_batch(spec, echo=lambda *a: None)
    assert set(third["note"]) == {"finished before, skipped"}
    assert len(batch.read_log(out)) == 6


def test_changed_parameters_run_again(tmp_path, notebook):
    (tmp_path / "broken").unlink()
    spec = write_spec(tmp_path, notebook, runs=[{"name": "a", "mode": "ok"}])
    batch.run_batch(spec, echo=lambda *a: None)
    spec = write_spec(tmp_path, notebook, runs=[{"name": "a", "mode": "again"}])
    again = batch.run_batch(spec, echo=lambda *a: None)
    assert again.loc[0, "note"] == "ran now" and (tmp_path / "out" / "a.csv").read_text() == "again"


def test_the_cli_subcommand_returns_1_when_a_run_failed(tmp_path, notebook, capsys):
    from moe_lab.cli import main

    spec = write_spec(tmp_path, notebook, runs=[{"name": "ok", "mode": "ok"}, {"name": "bad", "mode": "raise"}])
    assert main(["batch", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "1 run(s) failed" in out and "ValueError: asked to fail" in out


def test_matrix_and_defaults_expand_into_named_runs(tmp_path, notebook):
    spec = write_spec(tmp_path, notebook, defaults={"mode": "ok"}, matrix={"results_path": ["x", "y"]},
                      runs=[{"mode": "raise"}, {"name": "named", "parameters": {"mode": "die"}}])
    loaded = batch.load_batch(spec)
    assert [r.name for r in loaded.runs] == ["x", "y", "raise", "named"]
    assert loaded.runs[0].parameters == {"mode": "ok", "results_path": "x"}
    # a run that names no results_path gets its own file in out_dir
    assert loaded.runs[2].parameters["results_path"] == str(tmp_path / "out" / "raise.csv")


@pytest.mark.parametrize("spec, message", [
    ({"runs": [{"name": "a", "modee": "ok"}]}, "unknown parameter 'modee'"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
    ({"runs": []}, "no runs"),
    ({"rnus": [{"mode": "ok"}]}, "unknown key"),
])
def test_bad_batch_files_are_rejected_before_anything_runs(tmp_path, notebook, spec, message):
    with pytest.raises(ValueError, match=message):
        batch.run_batch(write_spec(tmp_path, notebook, **spec), echo=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_broken_batch_file_is_a_message_not_a_traceback(tmp_path, capsys):
    from moe_lab.cli import main

    assert main(["batch", str(tmp_path / "nope.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("runs: [unclosed")
    assert main(["batch", str(tmp_path / "bad.yaml")]) == 2
    out = capsys.readouterr().out
    assert "does not exist" in out and "not valid YAML" in out


def test_the_default_notebook_is_the_sweep_notebook():
    params = batch.notebook_parameters(batch.DEFAULT_NOTEBOOK)
    assert {"device", "dtype", "model", "level", "backends", "compile_modes", "batch_sizes", "seq_lens", "routing",
            "warmup", "iters", "results_path"} <= set(params)


def test_a_batch_of_the_real_sweep_notebook(tmp_path):
    """One parameter set through the sweep notebook itself: its results land in out_dir/<name>.csv."""
    spec = tmp_path / "cpu.yaml"
    spec.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "out"),
        "defaults": {"level": "layer", "backends": ["grouped_mm"], "batch_sizes": [1], "warmup": 0, "iters": 1},
        "matrix": {"seq_lens": [[2, 4]]},
    }))
    summary = batch.run_batch(spec, echo=lambda *a: None)
    assert list(summary["status"]) == ["ok"]
    name = summary.loc[0, "name"]
    rows = pd.read_csv(tmp_path / "out" / f"{name}.csv")
    assert sorted(rows["seq_len"]) == [2, 4] and set(rows["backend"]) == {"grouped_mm"}
    assert (tmp_path / "out" / f"{name}.ipynb").exists()
