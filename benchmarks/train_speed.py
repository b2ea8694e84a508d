"""Training speed of the CPU proxies over a whole run: the mode the trainer chooses against plain fp32 eager.

    python benchmarks/train_speed.py                                  # about 25 minutes on 2 idle cores
    python benchmarks/train_speed.py --rounds 5 --images 6400
    python benchmarks/train_speed.py --accuracy-images 60000 --seeds 0 1   # also: does the choice cost accuracy?
    python benchmarks/train_speed.py --from-csv a.csv b.csv              # one table from runs of separate proxies

A proxy's run is its YAML as committed (experiments/cpu: 10 epochs of Fashion-MNIST's 60,000 images, batch 64,
evaluation of the 10,000 validation images after every epoch). First the trainer's own choice
(`efficientvit.runtime.choose_speed` for that run's length, timed: its trial is part of the run's cost). Then the
chosen mode and plain fp32 eager (`fast: false`, fp32, no compile) are set up by the trainer (`setup_run`) and
take turns through its epoch loop (`train_one_epoch`, data loading included) over --images images, round after
round, and the evaluation once (fp32 eager in both modes, as the trainer evaluates); the first round pays
each mode's setup (compiling) and is kept apart. A whole run is projected per round: trial + setup + epochs x
(training images / rate + evaluation seconds), and the ratio plain / chosen is given as median [min-max] over
rounds. Inductor's caches are off, so every compilation is paid cold, the trial's and the run's (an upper bound:
a real run's second compilation hits the cache its trial filled). With --accuracy-images, each proxy also trains
one epoch of that many images per seed in both modes (real `train` runs), and their top-1 is set beside the
spread over seeds. Writes benchmarks/train_cpu.csv and .md, the command on the first line of the .md.
"""

from __future__ import annotations

import dataclasses
import json
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

from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import collate
from efficientvit.data.sources import Augment, open_split
from efficientvit.errors import exit_status
from efficientvit.evaluation import evaluate
from efficientvit.models import create_model
from efficientvit.results import atomic_write_text, markdown_table, write_results
from efficientvit.runtime import Speed, choose_speed
from efficientvit.train import setup_run, train, train_one_epoch
from efficientvit.train_config import TrainConfig, make_config

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "experiments" / "cpu"
PROXIES = ["deit_tiny_proxy_full", "swin_tiny_proxy_full"]
PLAIN = Speed()
CPU = torch.device("cpu")
COLUMNS = ["kind", "proxy", "mode", "round", "seed", "ran_as", "img_s", "setup_s", "eval_s", "run_min", "top1"]


@dataclass
class TrainSpeedConfig:
    proxies: list[str] = knob(PROXIES, "configs in experiments/cpu")
    rounds: int = knob(3, "interleaved rounds")
    images: int = knob(6400, "training images per timed epoch (6400: 100 steps of 64)")
    accuracy_images: int = knob(0, "also compare top-1 after one epoch of this many images (0: no accuracy runs)")
    seeds: list[int] = knob([0, 1], "seeds of the accuracy runs")
    out: Path = knob(HERE / "train_cpu.csv", "the samples (CSV, with a .json sidecar and the .md table beside it)")
    from_csv: list[Path] = knob([], "measure nothing: write --out and its table from these samples (joined)")


def proxy_values(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def forced(name: str, speed: Speed, out: Path, **overrides) -> TrainConfig:
    """The proxy's config running in `speed` (nothing left to choose), without snapshots or plateau."""
    mode = {"fast": speed.fused_optimizer, "precision": "bf16" if speed.bf16 else "fp32", "compile": speed.compile}
    return make_config({**proxy_values(name), **mode, "snapshots": [], "plateau": None, "out": str(out), **overrides})


def chosen(name: str) -> tuple[Speed, float]:
    """The mode the trainer picks for the proxy's whole run, and the seconds its trial took."""
    config = make_config(proxy_values(name))
    images = len(open_split(config.data, "train", config.img_size))
    model = create_model(config.model, num_classes=10, img_size=config.img_size, **config.model_kwargs)
    started = time.perf_counter()
    speed = choose_speed(
        config,
        model,
        torch.device("cpu"),
        (config.batch_size, 3, config.img_size, config.img_size),
        config.epochs * (images // config.batch_size),
    )
    print(f"{name}: the trainer chose {speed.describe()} ({time.perf_counter() - started:.0f} s)", flush=True)
    return speed, time.perf_counter() - started


def time_modes(name: str, modes: dict[str, Speed], config: TrainSpeedConfig, tmp: Path) -> list[dict]:
    """The trainer's own epoch loop (`train_one_epoch`) over --images images, the modes in turns, round by round,
    and the evaluation of the validation split, once (fp32 eager in every mode). Round 0 includes each mode's setup
    (compiling); the later rounds give the steady seconds."""
    configs = {mode: forced(name, speed, tmp / mode, train_images=config.images) for mode, speed in modes.items()}
    runs = {mode: setup_run(configs[mode], None, 0, 1, CPU) for mode in modes}
    seconds = {mode: [] for mode in modes}
    for _ in range(config.rounds + 1):
        for mode, run in runs.items():
            started = time.perf_counter()
            train_one_epoch(configs[mode], run.state, run.forward, run.criterion, run.data, 0, CPU, main=False)
            seconds[mode].append(time.perf_counter() - started)
        print(f"{name}: {', '.join(f'{m} {t[-1]:.1f} s' for m, t in seconds.items())}", flush=True)
    started = time.perf_counter()  # the evaluation is the same in every mode (fp32 eager): timed once
    evaluate(runs["plain"].state.model, runs["plain"].data.val_loader, CPU, False, False)
    evaluation = time.perf_counter() - started
    return [
        {
            "kind": "speed",
            "proxy": name,
            "mode": mode,
            "round": round_,
            "ran_as": runs[mode].state.speed.describe(),
            "img_s": config.images / seconds[mode][round_],
            "setup_s": max(0.0, seconds[mode][0] - statistics.median(seconds[mode][1:])),
            "eval_s": evaluation,
        }
        for round_ in range(1, config.rounds + 1)
        for mode in modes
    ]


def run_minutes(name: str, sample: dict, trial_s: float) -> float:
    """The proxy's whole run in this mode: trial, setup, then every epoch's training and evaluation."""
    config = make_config(proxy_values(name))
    images = len(open_split(config.data, "train", config.img_size)) // config.batch_size * config.batch_size
    epochs = config.epochs * (images / sample["img_s"] + sample["eval_s"])
    return (trial_s + sample["setup_s"] + epochs) / 60


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


def measure(config: TrainSpeedConfig, tmp: Path) -> None:
    """The choice per proxy, the timed rounds (modes in turns) and the loader alone, written; then the accuracy
    runs, written again with them (a long accuracy pass that is stopped leaves the speed table)."""
    choices = {name: chosen(name) for name in config.proxies}
    rows = [
        dict(kind="choice", proxy=name, mode="chosen", ran_as=speed.describe(), setup_s=trial_s)
        for name, (speed, trial_s) in choices.items()
    ]
    for name, (speed, trial_s) in choices.items():
        for sample in time_modes(name, {"plain": PLAIN, "chosen": speed}, config, tmp / name):
            sample["run_min"] = run_minutes(name, sample, trial_s if sample["mode"] == "chosen" else 0.0)
            rows.append(sample)
        rows.append(dict(kind="loader", proxy=name, img_s=loader_img_s(forced(name, PLAIN, tmp / "loader"), 40)))
    write(pd.DataFrame(rows, columns=COLUMNS), config, [command(config_arguments(config))])
    for seed in config.seeds if config.accuracy_images else []:
        for name, (speed, _) in choices.items():
            for mode, use in (("plain", PLAIN), ("chosen", speed)):
                out = tmp / f"acc_{name}_{mode}_{seed}"
                run = forced(name, use, out, epochs=1, train_images=config.accuracy_images, seed=seed)
                top1 = train(run)[-1]["val_top1"]
                rows.append(dict(kind="accuracy", proxy=name, mode=mode, seed=seed, ran_as=use.describe(), top1=top1))
        write(pd.DataFrame(rows, columns=COLUMNS), config, [command(config_arguments(config))])


def spread(values: list[float], digits: int = 2, unit: str = "") -> str:
    return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def speed_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per proxy: the chosen mode, each mode's projected run and steady rate, the ratio per round, the setup."""
    rows = []
    for name, group in samples[samples["kind"] == "speed"].groupby("proxy", sort=False):
        plain, chosen_ = (group[group["mode"] == m].sort_values("round") for m in ("plain", "chosen"))
        trial = samples[(samples["kind"] == "choice") & (samples["proxy"] == name)]["setup_s"].iloc[0]
        loader = samples[(samples["kind"] == "loader") & (samples["proxy"] == name)]["img_s"]
        ratios = [a / b for a, b in zip(plain["run_min"], chosen_["run_min"])]
        rows.append(
            {
                "proxy": name,
                "chosen mode": chosen_["ran_as"].iloc[0],
                "plain fp32 eager: run min": spread(list(plain["run_min"]), 1),
                "chosen: run min": spread(list(chosen_["run_min"]), 1),
                "plain / chosen, run (median [min-max] over rounds)": spread(ratios, unit="x"),
                "trial + setup s (compiling)": f"{trial:.0f} + {chosen_['setup_s'].median():.0f}",
                "training img/s plain / chosen": f"{plain['img_s'].median():.0f} / {chosen_['img_s'].median():.0f}",
                "evaluation s per epoch (fp32 eager in both)": f"{plain['eval_s'].median():.1f}",
                "data loader alone img/s": f"{loader.iloc[0]:.0f}" if len(loader) else "",
            }
        )
    return pd.DataFrame(rows)


def accuracy_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Top-1 per proxy and seed in both modes, with the difference chosen minus plain."""
    wide = accuracy.pivot_table(index=["proxy", "seed"], columns="mode", values="top1").reset_index()
    return pd.DataFrame(
        {
            "proxy": wide["proxy"],
            "seed": wide["seed"].astype(int),
            "plain fp32 eager top-1": wide["plain"].map("{:.2f}".format),
            "chosen top-1": wide["chosen"].map("{:.2f}".format),
            "chosen - plain": (wide["chosen"] - wide["plain"]).map("{:+.2f}".format),
        }
    )


def table(samples: pd.DataFrame, config: TrainSpeedConfig) -> str:
    """The Markdown of train_cpu.md: the speed table, then (with accuracy runs) top-1 per seed in both modes."""
    lines = markdown_table(speed_table(samples))
    accuracy = samples[samples["kind"] == "accuracy"]
    if len(accuracy):
        lines += [
            "",
            f"Top-1 after one epoch of {config.accuracy_images:,} images, per seed and mode:",
            "",
            *markdown_table(accuracy_table(accuracy)),
        ]
    return "\n".join(lines) + "\n"


def command(arguments: dict) -> str:
    """The command line that measures with these arguments (a config's, or a sidecar's)."""
    return "python benchmarks/train_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in arguments.items()
        if k not in ("out", "from_csv")
    )


def write(samples: pd.DataFrame, config: TrainSpeedConfig, commands: list[str]) -> None:
    """The samples (CSV and sidecar) and train_cpu.md: the commands that measured them, then the tables."""
    write_results(samples, config.out, config_arguments(config), {"measured_by": commands})
    lines = "".join(f"`{c}`\n" for c in commands)
    atomic_write_text(config.out.with_suffix(".md"), f"{lines}\n" + table(samples, config))
    print(config.out.with_suffix(".md").read_text(), flush=True)


def run(config: TrainSpeedConfig) -> None:
    if config.from_csv:
        sidecars = [json.loads(Path(path).with_suffix(".json").read_text()) for path in config.from_csv]
        commands = [c for sidecar in sidecars for c in sidecar.get("measured_by", [command(sidecar["arguments"])])]
        accuracy_images = max(sidecar["arguments"]["accuracy_images"] for sidecar in sidecars)
        samples = pd.concat([pd.read_csv(path) for path in config.from_csv], ignore_index=True)
        write(samples, dataclasses.replace(config, accuracy_images=accuracy_images), commands)
        return
    torch.set_num_threads(2)
    # every compilation is timed cold: inductor's on-disk caches would make a rerun's near zero
    torch.compiler.config.force_disable_caches = True
    with tempfile.TemporaryDirectory() as tmp:
        measure(config, Path(tmp))


def parse_args(argv: list[str] | None = None) -> TrainSpeedConfig:
    return parse_config(TrainSpeedConfig, argv, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/train_speed.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
