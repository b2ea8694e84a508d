"""`efficientvit info`: parameters, FLOPs and per-stage shapes of models."""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from ..bench.measure import measure_throughput
from ..flops import count_flops, count_params
from ..fuse import fuse
from ..models import create_model

HELP = "parameters, FLOPs and per-stage shapes of one or more models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Parameters (as built and with BatchNorm folded), fvcore FLOPs per image "
        "(multiply-adds, attention matmuls included) and, for one model, the resolution, "
        "width, depth, heads and attention window of every stage."
    )
    parser.add_argument("models", nargs="+", metavar="NAME", help="registered model names (see `efficientvit list`)")
    parser.add_argument("--img-size", type=parse_img_size, help="input size, N or HxW (default: the model's, 224)")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="also time the BN-fused model on this CPU (batch 16, about one second per model)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for --throughput (default: torch's choice)")


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


def describe(
    name: str, img_size: tuple[int, int] | None, throughput: bool, threads: int | None
) -> tuple[dict, torch.nn.Module]:
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


def run(args: argparse.Namespace) -> None:
    rows = []
    for name in args.models:
        row, model = describe(name, args.img_size, args.throughput, args.threads)
        rows.append(row)
    if len(rows) == 1:
        row = rows[0]
        print(f"{row['model']}  ({row['img_size']} input)")
        if row["params"] == row["params_fused"]:  # no BatchNorm to fold
            print(f"  parameters  {row['params']:,}")
            print(f"  FLOPs       {row['mflops_fused']} M (fvcore)")
        else:
            print(f"  parameters  {row['params']:,}   (BN fused: {row['params_fused']:,})")
            print(f"  FLOPs       {row['mflops_fused']} M BN fused   ({row['mflops_unfused']} M unfused; fvcore)")
        if "cpu_img_s_b16_fused" in row:
            threads = torch.get_num_threads()
            print(f"  throughput  {row['cpu_img_s_b16_fused']} img/s (CPU, batch 16, fused, {threads} threads)")
        if getattr(model, "stage_info", None):
            stages = pd.DataFrame(model.stage_info)
            for col in ("resolution", "window"):
                if col in stages:
                    stages[col] = stages[col].map(lambda hw: f"{hw[0]}x{hw[1]}")
            print("\n" + stages.to_string(index=False))
    else:
        table = pd.DataFrame(rows)
        print(table.to_string(index=False, formatters={c: "{:,}".format for c in ("params", "params_fused")}))
