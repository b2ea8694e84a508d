"""The `efficientvit` command: a table of subcommands. Each lives in the module that does its work, as `HELP`,
`add_arguments(parser)` and `run(args)`, and explains itself with --help."""

from __future__ import annotations

import argparse
import sys

from . import export, subnet, train
from .commands import bench, evaluate, info, list_models, make_data
from .errors import exit_status

COMMANDS = {
    "list": list_models,
    "info": info,
    "make-data": make_data,
    "train": train,
    "eval": evaluate,
    "subnet": subnet,
    "bench": bench,
    "export": export,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientvit",
        description="EfficientViT (CVPR 2023) models and the tools that reproduce the paper's analyses.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(f"efficientvit {args.command}", COMMANDS[args.command].run, args)


if __name__ == "__main__":
    sys.exit(main())
