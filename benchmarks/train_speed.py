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

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from efficientvit.checkpoint import read_checkpoint
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import collate
from efficientvit.data.sources import Augment, open_split
from efficientvit.errors import exit_status
from efficientvit.results import atomic_write_text, markdown_table, write_results
from efficientvit.runtime import Speed
from efficientvit.train import train
from efficientvit.train_config import TrainConfig, make_config

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "experiments" / "cpu"
PROXIES = ["deit_tiny_proxy_full", "swin_tiny_proxy_full", "efficientvit_m0"]


@dataclass
class TrainSpeedConfig:
    proxies: list[str] = knob(PROXIES, "configs in experiments/cpu")
    rounds: int = knob(3, "interleaved rounds")
    images: int = knob(5120, "training images per timed run (5120: 80 steps of 64)")
    accuracy_images: int = knob(0, "also compare top-1 after this many images")
    seeds: list[int] = knob([0, 1], "seeds of the accuracy runs")
    compile: bool = knob(False, "also time fast mode under torch.compile")
    out: Path = knob(HERE / "train_cpu.csv", "the samples (CSV, with a .json sidecar and the .md table beside it)")


def proxy_config(name: str, out: Path, images: int, seed: int = 0, **overrides) -> TrainConfig:
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


def loader_img_s(config: TrainConfig, batches: int) -> float:
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


def ran_as(config: TrainConfig) -> str:
    """The mode the trainer chose for this run, as its checkpoint records it."""
    return Speed(**read_checkpoint(Path(config.out) / "checkpoint.pth")["speed"]).describe()


def training_row(kind: str, name: str, mode: str, config: TrainConfig, round_: int = 0) -> dict:
    """One training run as configured, as a row of the samples."""
    last = train(config)[-1]
    return {
        "kind": kind,
        "proxy": name,
        "mode": mode,
        "round": round_,
        "seed": config.seed,
        "images": config.train_images,
        "train_img_s": last["train_img_s"],
        "top1": last["val_top1"],
        "ran_as": ran_as(config),
    }


def measure(config: TrainSpeedConfig, tmp: Path) -> pd.DataFrame:
    """The timed runs (modes alternating round by round), the loader alone, and the accuracy runs."""
    rows = []
    for round_ in range(config.rounds):
        for name in config.proxies:
            for mode, overrides in modes_to_time(config.compile).items():
                run = proxy_config(name, tmp / f"{name}_{mode}_{round_}", config.images, **overrides)
                rows.append(training_row("speed", name, mode, run, round_))
    for name in config.proxies:
        loader = loader_img_s(proxy_config(name, tmp / "loader", config.images), 40)
        rows.append(
            dict(kind="loader", proxy=name, mode=None, round=0, seed=0, images=config.images, train_img_s=loader)
        )
    if config.accuracy_images:
        for seed in config.seeds:
            for name in config.proxies:
                for mode, overrides in modes_to_time(False).items():
                    out = tmp / f"acc_{name}_{mode}_{seed}"
                    run = proxy_config(name, out, config.accuracy_images, seed=seed, **overrides)
                    rows.append(training_row("accuracy", name, mode, run))
    return pd.DataFrame(
        rows, columns=["kind", "proxy", "mode", "round", "seed", "images", "train_img_s", "top1", "ran_as"]
    )


def speed_table(samples: pd.DataFrame, config: TrainSpeedConfig) -> pd.DataFrame:
    """Per proxy: the mode fast chose, fp32 eager's img/s, each other mode's img/s and its ratio to fp32 over rounds,
    and the loader's img/s alone."""
    speed = samples[samples["kind"] == "speed"]
    modes = list(modes_to_time(config.compile))
    others = [m for m in modes if m != "fp32"]
    rows = []
    for name in config.proxies:
        runs = {
            m: speed[(speed["proxy"] == name) & (speed["mode"] == m)].sort_values("round")["train_img_s"] for m in modes
        }
        loader = samples[(samples["kind"] == "loader") & (samples["proxy"] == name)]["train_img_s"].iloc[0]
        row = {
            "proxy": name,
            "fast mode": " / ".join(sorted(set(speed[(speed["proxy"] == name) & (speed["mode"] == "fast")]["ran_as"]))),
            "fp32 eager img/s": f"{runs['fp32'].median():.0f}",
        }
        for m in others:
            ratios = [a / b for a, b in zip(runs[m], runs["fp32"])]
            row[f"{m} img/s"] = f"{runs[m].median():.0f}"
            row[f"{m} / fp32 (median [min-max] over rounds)"] = (
                f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            )
        rows.append({**row, "data loader alone img/s": f"{loader:.0f}"})
    return pd.DataFrame(rows)


def accuracy_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (name, seed), group in accuracy.groupby(["proxy", "seed"]):
        by_mode = dict(zip(group["mode"], group["top1"]))
        rows.append(
            {
                "proxy": name,
                "seed": seed,
                "fast top-1": f"{by_mode['fast']:.2f}",
                "fp32 top-1": f"{by_mode['fp32']:.2f}",
            }
        )
    return pd.DataFrame(rows)


def table(samples: pd.DataFrame, config: TrainSpeedConfig) -> str:
    """The Markdown of train_cpu.md: the speed table, then (with accuracy runs) top-1 per seed in both modes."""
    lines = markdown_table(speed_table(samples, config))
    accuracy = samples[samples["kind"] == "accuracy"]
    if len(accuracy):
        lines += [
            "",
            f"Top-1 after one pass over {config.accuracy_images:,} images, per seed (fast / fp32 eager):",
            "",
            *markdown_table(accuracy_table(accuracy)),
        ]
    return "\n".join(lines) + "\n"


def run(config: TrainSpeedConfig) -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        samples = measure(config, Path(tmp))
    write_results(samples, config.out, config_arguments(config))
    atomic_write_text(config.out.with_suffix(".md"), table(samples, config))
    print(config.out.with_suffix(".md").read_text())


def parse_args(argv: list[str] | None = None) -> TrainSpeedConfig:
    return parse_config(TrainSpeedConfig, argv, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/train_speed.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
