"""Training speed of the CPU proxies: the trainer's fast mode against its plain fp32 eager loop, same run.

    python benchmarks/train_speed.py                      # about 10 minutes on 2 idle cores
    python benchmarks/train_speed.py --rounds 5 --images 7680
    python benchmarks/train_speed.py --accuracy-images 20000 --seeds 0 1    # also: does bf16 cost accuracy?
    python benchmarks/train_speed.py --compile --images 12800              # also torch.compile (slow to build)

Each entry is a real `efficientvit.train` run (data loading included) on the first --images images of
Fashion-MNIST, one epoch; `fast: true` (what the trainer picks on this machine) and `fast: false` (plain fp32
eager) alternate round by round, so the ratio of their train img/s compares like with like. The data loader is
also timed alone (same transform, same workers), to show whether it could hold a training step back. With
--compile, fast mode under torch.compile is a third entry; its compile time counts in its img/s, as in a run.
With --accuracy-images, each model is also trained on that many images per seed in both modes, and the top-1
of the two modes is set beside the spread over seeds. Writes benchmarks/train_cpu.csv and train_cpu.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from efficientvit.checkpoint import read_checkpoint
from efficientvit.data.pipeline import collate
from efficientvit.data.sources import Augment, open_split
from efficientvit.results import atomic_write_text, write_results
from efficientvit.runtime import Speed
from efficientvit.train import train
from efficientvit.train_config import make_config

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "experiments" / "cpu"
PROXIES = ["deit_tiny_proxy_full", "swin_tiny_proxy_full", "efficientvit_m0"]


def proxy_config(name: str, out: Path, images: int, seed: int = 0, **overrides):
    values = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return make_config(
        {**values, "epochs": 1, "train_images": images, "out": str(out), "seed": seed, "ema_decay": None, **overrides}
    )


def modes_to_time(compile: bool) -> dict[str, dict]:
    return {
        "fast": {"fast": True, "precision": "auto"},
        "fp32": {"fast": False, "precision": "fp32"},
        **({"fast+compile": {"fast": True, "precision": "auto", "compile": True}} if compile else {}),
    }


def loader_img_s(config, batches: int) -> float:
    """Images per second the training DataLoader alone delivers (its transform, its workers)."""
    dataset = open_split(
        config.data,
        "train",
        config.img_size,
        Augment(config.auto_augment, config.reprob, tuple(config.crop_scale), config.color_jitter),
    )
    loader = DataLoader(
        dataset, config.batch_size, shuffle=True, num_workers=config.workers, collate_fn=collate, drop_last=True
    )
    started, seen = None, 0
    for step, (images, _, _) in enumerate(loader):
        if step == 1:  # the first batch includes starting the workers
            started, seen = time.perf_counter(), 0
        seen += len(images)
        if step == batches:
            break
    return seen / (time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proxies", nargs="+", default=PROXIES, help=f"configs in experiments/cpu ({' '.join(PROXIES)})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--images", type=int, default=5120, help="training images per timed run (5120: 80 steps of 64)")
    parser.add_argument("--accuracy-images", type=int, default=0, help="also compare top-1 after this many images")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of the accuracy runs (0 1)")
    parser.add_argument("--compile", action="store_true", help="also time fast mode under torch.compile")
    parser.add_argument("--out", type=Path, default=HERE / "train_cpu.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in args.proxies:
                for mode, overrides in modes_to_time(args.compile).items():
                    config = proxy_config(name, Path(tmp) / f"{name}_{mode}_{round_}", args.images, **overrides)
                    history = train(config)
                    rows.append(
                        {
                            "kind": "speed",
                            "proxy": name,
                            "mode": mode,
                            "round": round_,
                            "seed": 0,
                            "images": args.images,
                            "train_img_s": history[-1]["train_img_s"],
                            "top1": history[-1]["val_top1"],
                            "ran_as": ran_as(config),
                        }
                    )
        for name in args.proxies:
            config = proxy_config(name, Path(tmp) / "loader", args.images)
            rows.append(
                {
                    "kind": "loader",
                    "proxy": name,
                    "mode": None,
                    "round": 0,
                    "seed": 0,
                    "images": args.images,
                    "train_img_s": loader_img_s(config, 40),
                    "top1": None,
                }
            )
        if args.accuracy_images:
            for seed in args.seeds:
                for name in args.proxies:
                    for mode, overrides in modes_to_time(False).items():
                        config = proxy_config(
                            name, Path(tmp) / f"acc_{name}_{mode}_{seed}", args.accuracy_images, seed=seed, **overrides
                        )
                        history = train(config)
                        rows.append(
                            {
                                "kind": "accuracy",
                                "proxy": name,
                                "mode": mode,
                                "round": 0,
                                "seed": seed,
                                "images": args.accuracy_images,
                                "train_img_s": history[-1]["train_img_s"],
                                "top1": history[-1]["val_top1"],
                                "ran_as": ran_as(config),
                            }
                        )
    samples = pd.DataFrame(rows)
    write_results(samples, args.out, vars(args) | {"out": str(args.out)})
    atomic_write_text(args.out.with_suffix(".md"), table(samples, args))
    print(args.out.with_suffix(".md").read_text())
    return 0


def ran_as(config) -> str:
    """The mode the trainer chose for this run, as its checkpoint records it."""
    return Speed(**read_checkpoint(Path(config.out) / "checkpoint.pth")["speed"]).describe()


def table(samples: pd.DataFrame, args) -> str:
    speed = samples[samples["kind"] == "speed"]
    others = [m for m in modes_to_time(args.compile) if m != "fp32"]
    lines = [
        "| proxy | fast mode | fp32 eager img/s | "
        + " | ".join(f"{m} img/s | {m} / fp32 (median [min-max] over rounds)" for m in others)
        + " | data loader alone img/s |",
        "|---|---|---|" + "---|---|" * len(others) + "---|",
    ]
    for name in args.proxies:
        runs = {
            m: speed[(speed["proxy"] == name) & (speed["mode"] == m)].sort_values("round")["train_img_s"]
            for m in modes_to_time(args.compile)
        }
        loader = samples[(samples["kind"] == "loader") & (samples["proxy"] == name)]["train_img_s"].iloc[0]
        cells = []
        for m in others:
            ratios = [a / b for a, b in zip(runs[m], runs["fp32"])]
            cells.append(
                f"{runs[m].median():.0f} | {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            )
        chosen = " / ".join(sorted(set(speed[(speed["proxy"] == name) & (speed["mode"] == "fast")]["ran_as"])))
        lines.append(f"| {name} | {chosen} | {runs['fp32'].median():.0f} | " + " | ".join(cells) + f" | {loader:.0f} |")
    accuracy = samples[samples["kind"] == "accuracy"]
    if len(accuracy):
        lines += [
            "",
            f"Top-1 after one pass over {args.accuracy_images:,} images, per seed (fast / fp32 eager):",
            "",
            "| proxy | seed | fast top-1 | fp32 top-1 |",
            "|---|---|---|---|",
        ]
        for (name, seed), group in accuracy.groupby(["proxy", "seed"]):
            by_mode = dict(zip(group["mode"], group["top1"]))
            lines.append(f"| {name} | {seed} | {by_mode['fast']:.2f} | {by_mode['fp32']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
