"""The `efficientvit` command. Every subcommand explains itself with --help."""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from .errors import UserError


def parse_img_size(text: str) -> tuple[int, int]:
    """'224' or '224x320' (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW with positive numbers, got {text!r}")
    return parts[0], parts[1]


def cmd_list(args: argparse.Namespace) -> None:
    from .models import list_models, model_family

    for name in list_models(args.family):
        print(f"{name:24s} {model_family(name)}")


def describe(name: str, img_size: tuple[int, int] | None, throughput: bool, threads: int | None) -> dict:
    from .bench import measure_throughput
    from .flops import count_flops, count_params
    from .fuse import fuse
    from .models import create_model

    model = create_model(name, **({"img_size": img_size} if img_size else {})).eval()
    fused = fuse(model)
    row = {
        "model": name,
        "img_size": "x".join(map(str, model.img_size)),
        "params": count_params(model),
        "params_fused": count_params(fused),
        "mflops_fused": round(count_flops(fused) / 1e6, 1),
        "mflops_unfused": round(count_flops(model) / 1e6, 1),
    }
    if throughput:
        if threads:
            torch.set_num_threads(threads)
        row["cpu_img_s_b16_fused"] = round(measure_throughput(fused, batch_size=16), 1)
    return row, model


def cmd_info(args: argparse.Namespace) -> None:
    rows = []
    for name in args.models:
        row, model = describe(name, args.img_size, args.throughput, args.threads)
        rows.append(row)
    if len(rows) == 1:
        row = rows[0]
        print(f"{row['model']}  ({row['img_size']} input)")
        print(f"  parameters  {row['params']:,}   (BN fused: {row['params_fused']:,})")
        print(f"  FLOPs       {row['mflops_fused']} M BN fused   ({row['mflops_unfused']} M unfused; fvcore)")
        if "cpu_img_s_b16_fused" in row:
            print(f"  throughput  {row['cpu_img_s_b16_fused']} img/s (CPU, batch 16, fused, {torch.get_num_threads()} threads)")
        if getattr(model, "stage_info", None):
            stages = pd.DataFrame(model.stage_info)
            for col in ("resolution", "window"):
                stages[col] = stages[col].map(lambda hw: f"{hw[0]}x{hw[1]}")
            print("\n" + stages.to_string(index=False))
    else:
        table = pd.DataFrame(rows)
        print(table.to_string(index=False, formatters={c: "{:,}".format for c in ("params", "params_fused")}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientvit",
        description="EfficientViT (CVPR 2023) models and the tools that reproduce the paper's analyses.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("--family", help="only this family (efficientvit, deit, swin)")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("info", help="parameters, FLOPs and per-stage shapes of one or more models",
                       description="Parameters (as built and with BatchNorm folded), fvcore FLOPs per image "
                                   "(multiply-adds, attention matmuls included) and, for one model, the resolution, "
                                   "width, depth, heads and attention window of every stage.")
    p.add_argument("models", nargs="+", metavar="NAME", help="registered model names (see `efficientvit list`)")
    p.add_argument("--img-size", type=parse_img_size, help="input size, N or HxW (default: the model's, 224)")
    p.add_argument("--throughput", action="store_true",
                   help="also time the BN-fused model on this CPU (batch 16, about one second per model)")
    p.add_argument("--threads", type=int, help="CPU threads for --throughput (default: torch's choice)")
    p.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"efficientvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
