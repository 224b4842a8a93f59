"""The `moe-lab` command line: `check` backends, run a `sweep`, describe the `env`ironment, run a `batch` of
sweep notebooks, `tune` auto's dispatch table, `tune-kernels` for triton_fused's tile configs, `prune` stale
results rows."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_OUT = "runs/sweep.csv"


def _check(args: argparse.Namespace) -> int:
    from moe_lab.check import check_backends

    table = check_backends(args.model, args.tokens, DTYPES[args.dtype], args.device, args.routing)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0 if table.ok.all() else 1


# sweep flags: (flag, grid field, help); each takes one value or several, comma-separated
GRID_FLAGS = [
    ("--level", "level", "layer, model, decode, train"),
    ("--model", "model", "model shape names (data/model_shapes.yaml)"),
    ("--backend", "backend", "moe_lab backends by name, transformers' as transformers:<name>; "
                             "'all', 'moe_lab' and 'transformers' name groups"),
    ("--compile-mode", "compile_mode", "none, default, reduce-overhead, max-autotune-no-cudagraphs, max-autotune"),
    ("--dtype", "dtype", "float32, bfloat16, float16"),
    ("--device", "device", "cpu, cuda, cuda:N"),
    ("--batch-size", "batch_size", "sequences per call"),
    ("--seq-len", "seq_len", "tokens per sequence (prompt length when decoding)"),
    ("--routing", "routing", "uniform, skewed, hot, balanced (layer and train levels)"),
    ("--num-layers", "num_layers", "decoder layers of the whole model at model/decode levels ('all' = the model's)"),
]


def grid_from_args(args: argparse.Namespace):
    """The sweep grid: SweepGrid's defaults (the CPU tiny sweep), then --config's YAML, then the flags."""
    from moe_lab.harness import SweepGrid

    overrides = {field: getattr(args, field) for _, field, _ in GRID_FLAGS}
    overrides.update(warmup=args.warmup, iters=args.iters, seed=args.seed, max_mem_gb=args.max_mem_gb)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.config:
        return SweepGrid.from_yaml(args.config, **overrides)
    return SweepGrid(**overrides)


def _sweep(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    from moe_lab.harness import run_sweep, summarize

    try:
        grid = grid_from_args(args).validate()
    except ValueError as e:
        print(f"moe-lab sweep: {e}", file=sys.stderr)
        return 2
    cells = grid.cells()
    if args.dry_run:
        from moe_lab.harness.sweep import pending_cells

        todo = pending_cells(grid, args.out)
        for cell in todo:
            print(cell.label())
        print(f"{len(cells)} cells, {len(cells) - len(todo)} already in {args.out}, {len(todo)} to run",
              file=sys.stderr)
        return 0
    print(f"sweep: {len(cells)} cells -> {args.out}", file=sys.stderr)
    start = time.perf_counter()
    df = run_sweep(grid, args.out, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 60):
        print(summarize(df).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    counts = df["status"].str.split(":").str[0].value_counts().to_dict()
    print(f"\n{len(df)} rows in {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
          f"this run took {elapsed:.1f} s", file=sys.stderr)
    return 0


def _env(args: argparse.Namespace) -> int:
    from moe_lab.harness import describe_environment

    print(describe_environment(measure=not args.no_roofline))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="every backend against the float64 reference, with a quick latency",
                           description="Every moe_lab backend against the float64 reference on one shape.")
    check.add_argument("--model", default="tiny", help="model shape name (data/model_shapes.yaml)")
    check.add_argument("--tokens", type=int, default=64, help="number of tokens")
    check.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    check.add_argument("--device", default="cpu")
    check.add_argument("--routing", default="uniform")
    check.set_defaults(func=_check)

    sweep = sub.add_parser(
        "sweep", help="latency and memory over a grid of cells, into a resumable CSV",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every cell of a grid (the product of the lists given), one CSV row per cell.\n"
                    "Without flags: the CPU tiny sweep (every level and backend, batch 1,4 x seq 16,128).\n"
                    "Rows are appended and flushed as cells finish; the same command again resumes.",
        epilog="examples:\n"
               "  moe-lab sweep --level layer --backend all --batch-size 1 --seq-len 1,16,128 --out runs/l.csv\n"
               "  moe-lab sweep --config grid.yaml --device cuda --dtype bfloat16 --out runs/h100.csv")
    for flag, field, help_text in GRID_FLAGS:
        sweep.add_argument(flag, dest=field, metavar="A,B", help=f"{help_text} (comma-separated)")
    sweep.add_argument("--config", metavar="GRID.yaml", help="grid fields as YAML; flags given override it")
    sweep.add_argument("--out", default=DEFAULT_OUT, help=f"results CSV, appended to (default {DEFAULT_OUT})")
    sweep.add_argument("--warmup", type=int, help="warm-up calls per cell (default 2; compiled cells at least 1, "
                                                  "with CUDA graphs 3)")
    sweep.add_argument("--iters", type=int, help="timed calls per cell (default 10)")
    sweep.add_argument("--seed", type=int, help="seed of weights, inputs and routing (default 0)")
    sweep.add_argument("--max-mem-gb", type=float, help="skip CPU cells estimated to need more (default: available)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--dry-run", action="store_true", help="list the cells still to run (not in --out), run none")
    sweep.set_defaults(func=_sweep)

    env = sub.add_parser("env", help="versions, devices and the measured roofline",
                         description="Versions, devices and the measured roofline (copy bandwidth, matmul peak): "
                                     "bf16 on a GPU, float32 on the CPU.")
    env.add_argument("--no-roofline", action="store_true", help="skip measuring the roofline")
    env.set_defaults(func=_env)

    from moe_lab.batch import add_parser as add_batch_parser  # `moe-lab batch`: the sweep notebook per parameter set

    add_batch_parser(sub)
    from moe_lab.tune import add_tune_parser  # `moe-lab tune`: time the backends, write auto's dispatch table

    add_tune_parser(sub)
    from moe_lab.kernels.search import add_tune_kernels_parser  # `moe-lab tune-kernels`: triton_fused's tile configs

    add_tune_kernels_parser(sub)
    from moe_lab.harness.prune import add_prune_parser  # `moe-lab prune`: drop stale rows so a sweep remeasures them

    add_prune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
