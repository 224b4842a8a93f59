"""`moe-lab`: --help everywhere, `sweep` from flags or YAML with a summary, bad grids refused, `env`."""

from __future__ import annotations

import pytest

from moe_lab.cli import GRID_FLAGS, build_parser, main
from moe_lab.harness import COLUMNS, load_results


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["sweep", "--help"], ["env", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: moe-lab" in text
    if argv[0] == "sweep":
        for flag, _, _ in GRID_FLAGS:
            assert flag in text
        assert "--config" in text and "--out" in text and "--warmup" in text and "--iters" in text


def test_sweep_from_flags(tmp_path, capsys):
    out = tmp_path / "cli.csv"
    code = main(["sweep", "--level", "layer,train", "--model", "tiny", "--backend", "grouped_mm,transformers:eager",
                 "--compile-mode", "none", "--dtype", "float32", "--device", "cpu", "--batch-size", "2",
                 "--seq-len", "4", "--routing", "skewed", "--warmup", "1", "--iters", "2", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "sweep:" in captured.err and "4 cells" in captured.err
    assert "layer tiny grouped_mm none float32 cpu 2x4 skewed" in captured.err  # the progress bar names the cell
    assert "median_ms" in captured.out and "transformers:eager" in captured.out  # the summary table
    df = load_results(out)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == 4 and set(df.level) == {"layer", "train"} and set(df.routing) == {"skewed"}
    assert (df.status == "ok").all() and (df.iters == 2).all()


def test_dry_run_lists_what_is_left(tmp_path, capsys):
    out = tmp_path / "dry.csv"
    argv = ["sweep", "--level", "layer", "--backend", "eager,grouped_mm", "--seq-len", "4", "--batch-size", "1",
            "--iters", "1", "--no-progress", "--out", str(out)]
    assert main(argv + ["--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["layer tiny eager none float32 cpu 1x4 uniform",
                                                    "layer tiny grouped_mm none float32 cpu 1x4 uniform"]
    assert not out.exists()
    assert main(argv[:4] + ["eager"] + argv[5:]) == 0
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["layer tiny grouped_mm none float32 cpu 1x4 uniform"]
    assert "1 already in" in captured.err


def test_sweep_from_yaml_with_flags_overriding(tmp_path, capsys):
    config = tmp_path / "grid.yaml"
    config.write_text("level: model\nmodel: tiny\nbackend: [eager]\nbatch_size: [1]\nseq_len: [4, 8]\n"
                      "num_layers: [1]\niters: 5\n")
    out = tmp_path / "yaml.csv"
    assert main(["sweep", "--config", str(config), "--iters", "2", "--warmup", "0", "--no-progress",
                 "--out", str(out)]) == 0
    df = load_results(out)
    assert len(df) == 2 and (df.num_layers == 1).all() and (df.iters == 2).all() and (df.status == "ok").all()


def test_bad_grid_is_refused_with_the_valid_values(tmp_path, capsys):
    out = tmp_path / "bad.csv"
    assert main(["sweep", "--backend", "eager,warp_mm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'warp_mm'" in err and "transformers:grouped_mm" in err
    assert not out.exists()
    assert main(["sweep", "--batch-size", "0", "--out", str(out)]) == 2
    assert "batch_size must be a positive integer, got 0" in capsys.readouterr().err


def test_env_prints_versions_and_devices(capsys):
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    for word in ("torch", "transformers", "triton", "cpu", "cuda", "backends", "roofline"):
        assert word in text


def test_check_is_kept():
    assert "check" in build_parser()._subparsers._group_actions[0].choices
