"""The `moe-lab` command line."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check(args: argparse.Namespace) -> int:
    from moe_lab.check import check_backends

    table = check_backends(args.model, args.tokens, DTYPES[args.dtype], args.device, args.routing)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0 if table.ok.all() else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="every backend against the float64 reference, with a quick latency")
    check.add_argument("--model", default="tiny", help="model shape name (data/model_shapes.yaml)")
    check.add_argument("--tokens", type=int, default=64, help="number of tokens")
    check.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    check.add_argument("--device", default="cpu")
    check.add_argument("--routing", default="uniform")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
