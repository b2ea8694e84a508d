"""Figure 3: accuracy of throughput-matched DeiT/Swin subnets as the share of MHSA layers varies.

The paper shrinks Swin-T and DeiT-T into subnets 1.25x and 1.5x faster, varies the proportion of attention layers
from 0 to 1, trains each, and finds 20-40% MHSA best. For every point (family, speed-up, proportion, seed) this
script builds the subnet with `efficientvit.subnet.find_subnet` (widths searched until the measured speed-up
matches), trains it with the training pipeline under the sweep config, and appends one row to the CSV: the
requested and the actual MHSA proportion (whole layers: 0.2 of 12 layers is 2, i.e. 0.167), the target and the
measured speed-up, and `speedup_met` (False: more than 5% off even after a wider search; the report marks it).

Resumable and shardable: finished points are skipped, an interrupted training resumes from its checkpoint,
`--shard i/n` runs every n-th point starting at i (for several processes or machines), `--merge` joins shard
CSVs. The CSV is rewritten atomically after every point.

Example: python analysis/mhsa_sweep.py --families deit_tiny --speedups 1.25 1.5 --proportions 0 0.2 0.4 0.6 1.0 \
             --config experiments/cpu/sweep.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import yaml

import efficientvit
from efficientvit.errors import UserError, exit_status
from efficientvit.flops import count_flops, count_params
from efficientvit.results import read_results, write_results
from efficientvit.subnet import FAMILIES, find_subnet
from efficientvit.train import make_config, train

KEY = ["family", "speedup_target", "mhsa_proportion", "seed"]
COLUMNS = (
    KEY[:2]
    + ["speedup_measured", "speedup_met"]
    + KEY[2:3]
    + [
        "mhsa_proportion_actual",
        "layout",
        "widths",
        "params",
        "flops",
        "throughput",
        "top1",
        "top5",
        "epochs",
        "seed",
        "train_seconds",
        "checkpoint",
    ]
)


def read_sweep_config(path: str | Path) -> dict:
    """The sweep YAML: `train` (training config keys), `families` (the full model of each family at this scale),
    `subnet` (timing budget of the subnet search), `runs` (folder for the trainings)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    train_config = config.get("train") or {}
    if not train_config.get("data"):
        raise UserError(f"sweep config {path} has no train.data: fashion-mnist, or the ImageFolder root to train on")
    return {
        "train": train_config,
        "families": config.get("families") or {},
        "subnet": config.get("subnet") or {},
        "runs": config.get("runs", "runs/mhsa_sweep"),
    }


def grid(families: list[str], speedups: list[float], proportions: list[float], seeds: list[int]) -> list[dict]:
    for family in families:
        if family not in FAMILIES:
            raise UserError(f"unknown family {family!r}: choose from {', '.join(FAMILIES)}")
    for p in proportions:
        if not 0 <= p <= 1:
            raise UserError(f"MHSA proportions must be within [0, 1], got {p}")
    for s in speedups:
        if s < 1:
            raise UserError(f"speed-ups must be at least 1 (subnets are faster than the full model), got {s}")
    return [
        dict(family=f, speedup_target=s, mhsa_proportion=p, seed=seed)
        for f in families
        for s in speedups
        for p in proportions
        for seed in seeds
    ]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def point_name(point: dict) -> str:
    return f"{point['family']}_s{point['speedup_target']}_p{point['mhsa_proportion']}_seed{point['seed']}"


def run_point(point: dict, sweep: dict, device: str) -> dict:
    """Find the subnet, train it (resuming a checkpoint if one is there), and describe the result."""
    base = sweep["families"].get(point["family"], {})
    subnet = find_subnet(
        point["family"], point["speedup_target"], point["mhsa_proportion"], base=base, device=device, **sweep["subnet"]
    )
    kwargs = {k: v for k, v in subnet["kwargs"].items() if k != "img_size"}
    out = Path(sweep["runs"]) / point_name(point)
    config = make_config(
        {**sweep["train"], "model": point["family"], "model_kwargs": kwargs, "out": str(out), "seed": point["seed"]}
    )
    train(config, resume=True)
    metrics = pd.read_csv(out / "metrics.csv")
    final = metrics.iloc[-1]
    model = efficientvit.create_model(point["family"], img_size=config.img_size, **kwargs)
    layout = kwargs["layout"] if isinstance(kwargs["layout"], str) else ",".join(kwargs["layout"])
    return {
        **point,
        "speedup_measured": subnet["speedup_measured"],
        "speedup_met": subnet["met"],
        "mhsa_proportion_actual": subnet["mhsa_proportion_actual"],
        "layout": layout,
        "widths": str(kwargs["embed_dim"]),
        "params": count_params(model),
        "flops": count_flops(model),
        "throughput": subnet["throughput"],
        "top1": final["val_top1"],
        "top5": final["val_top5"],
        "epochs": int(final["epoch"]),
        "train_seconds": round(metrics["epoch_seconds"].sum(), 1),
        "checkpoint": str(out / "checkpoint.pth"),
    }


def search_subnets(points: list[dict], sweep: dict, device: str) -> None:
    """Time every point's subnet once, filling the cache, so that later runs (and every torchrun process) read
    the same configurations instead of timing them again."""
    for point in points:
        base = sweep["families"].get(point["family"], {})
        result = find_subnet(
            point["family"],
            point["speedup_target"],
            point["mhsa_proportion"],
            base=base,
            device=device,
            **sweep["subnet"],
        )
        print(
            f"{point_name(point)}: {result['kwargs']['layout']} widths {result['kwargs']['embed_dim']}, "
            f"{result['speedup_measured']}x{'' if result['met'] else ' (misses the target by more than 5%)'}",
            flush=True,
        )


def sweep_points(points: list[dict], sweep: dict, out: Path, arguments: dict, device: str) -> pd.DataFrame:
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun only the first process writes the CSV
    done = read_results(out)
    rows = [] if done is None else done.to_dict("records")
    finished = {tuple(r[k] for k in KEY) for r in rows}
    for n, point in enumerate(points, start=1):
        if tuple(point[k] for k in KEY) in finished:
            continue
        print(f"[{n}/{len(points)}] {point_name(point)}", flush=True)
        row = run_point(point, sweep, device)
        rows.append(row)
        if writer:
            write_results(pd.DataFrame(rows)[COLUMNS], out, arguments)
    return pd.DataFrame(rows, columns=COLUMNS)


def merge(paths: list[str], out: Path, arguments: dict) -> pd.DataFrame:
    frames = []
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"shard CSV {path} does not exist")
        frames.append(pd.read_csv(path))
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(subset=KEY, keep="last")
    merged = merged.sort_values(KEY, ignore_index=True)
    write_results(merged, out, arguments)
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train throughput-matched DeiT/Swin subnets over MHSA proportions (the paper's Fig. 3); "
        "writes one row per point to results/mhsa_sweep/<run>.csv."
    )
    parser.add_argument("--families", nargs="+", default=["deit_tiny", "swin_tiny"], help="deit_tiny, swin_tiny")
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.25, 1.5], help="target speed-ups (1.25 1.5)")
    parser.add_argument(
        "--proportions",
        nargs="+",
        type=float,
        default=[0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0],
        help="MHSA proportions, 0 to 1",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (0)")
    parser.add_argument("--config", help="sweep YAML (experiments/cpu/sweep.yaml, experiments/paper/sweep.yaml)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="i/n", help="run every n-th point from i")
    parser.add_argument("--device", default="cpu", help="where the subnets are timed (cpu)")
    parser.add_argument("--out", type=Path, help="CSV (default results/mhsa_sweep/<config>[_shard_i_of_n].csv)")
    parser.add_argument("--merge", nargs="+", metavar="CSV", help="join these shard CSVs into --out and stop")
    parser.add_argument(
        "--subnets-only",
        action="store_true",
        help="only search (and cache) the subnets; do this once before running under torchrun",
    )
    return parser.parse_args(argv)


def command(args: argparse.Namespace) -> None:
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.merge:
        if not args.out:
            raise UserError("--merge needs --out, the merged CSV to write")
        frame = merge(args.merge, args.out, arguments)
    else:
        if not args.config:
            raise UserError("give --config, the sweep YAML (e.g. experiments/cpu/sweep.yaml)")
        sweep = read_sweep_config(args.config)
        points = grid(args.families, args.speedups, args.proportions, args.seeds)
        index, count = args.shard
        shard = f"_shard_{index}_of_{count}" if count > 1 else ""
        out = args.out or Path("results/mhsa_sweep") / f"{Path(args.config).stem}{shard}.csv"
        if args.subnets_only:
            search_subnets(points[index::count], sweep, args.device)
            return
        frame = sweep_points(points[index::count], sweep, out, arguments, args.device)
    print(
        frame[
            [
                "family",
                "speedup_target",
                "speedup_measured",
                "speedup_met",
                "mhsa_proportion",
                "mhsa_proportion_actual",
                "seed",
                "top1",
            ]
        ].to_string(index=False)
    )


def main(argv: list[str] | None = None) -> int:
    return exit_status("mhsa_sweep", command, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
