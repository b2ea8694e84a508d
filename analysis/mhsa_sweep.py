"""Figure 3: accuracy of throughput-matched DeiT/Swin subnets as the share of MHSA layers varies.

The paper shrinks Swin-T and DeiT-T into subnets 1.25x and 1.5x faster, varies the proportion of attention layers
from 0 to 1, trains each, and finds 20-40% MHSA best. For every point (family, speed-up, proportion, seed) this
script builds the subnet with `efficientvit.subnet.find_subnet` (widths searched until the measured speed-up
matches), trains it with the training pipeline under the sweep config, and appends one row to the CSV: the
requested and the actual MHSA proportion (whole layers: 0.2 of 12 layers is 2, i.e. 0.167), the target and the
measured speed-up, and `speedup_met` (False: more than 5% off even after the wider and the FFN-width searches; the
report marks it); top-1 after the last epoch (`top1`) and after each one (`top1_per_epoch`, space-separated), so the
sweep reads at every training budget.

Resumable: finished points are skipped, an interrupted training resumes from its checkpoint, and the CSV is
rewritten atomically after every point. Beyond one process, `python analysis/reproduce.py --launcher slurm|local`
runs the search once and every point's training as a job of its own (analysis/launcher.py: one mechanism for
splitting the work).

Example: python analysis/mhsa_sweep.py --families deit_tiny --speedups 1.25 1.5 --proportions 0 0.2 0.4 0.6 1.0 \
             --config experiments/cpu/sweep.yaml
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

import efficientvit
from efficientvit.config import config_arguments, config_from_dict, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.files import atomic_write_text
from efficientvit.flops import count_flops, count_params
from efficientvit.models import ModelSpec
from efficientvit.models.layout import format_layout
from efficientvit.results import read_results, write_results
from efficientvit.subnet import FAMILIES, SearchBudget, find_subnet, subnet_kwargs
from efficientvit.train import train
from efficientvit.train_config import TrainConfig, check_overrides, read_yaml, recipe

KEY = ["family", "speedup_target", "mhsa_proportion", "seed"]
COLUMNS = (
    KEY[:2]
    + ["speedup_measured", "speedup_met"]
    + KEY[2:3]
    + [
        "mhsa_proportion_actual",
        "layout",
        "widths",
        "mlp_ratio",
        "params",
        "flops",
        "throughput",
        "top1",
        "top5",
        "epochs",
        "seed",
        "train_seconds",
        "checkpoint",
        "top1_per_epoch",
    ]
)


@dataclass
class SweepRecipe:
    """A sweep YAML (experiments/cpu/sweep.yaml): what every point of the sweep shares."""

    train: dict = knob(help="training-config keys of every subnet's training (data among them)")
    families: dict[str, dict] = knob({}, "each family's full model at this scale: its constructor arguments")
    subnet: SearchBudget = knob(SearchBudget(), "the subnet search's timing budget and cache")
    runs: str = knob("runs/mhsa_sweep", "the trainings' folder")

    def __post_init__(self):
        self.train = check_overrides(self.train, "the sweep config's train")
        if not self.train.get("data"):
            raise UserError("the sweep config has no train.data: fashion-mnist, or the ImageFolder root to train on")

    def write(self, path: Path) -> Path:
        """The recipe as a sweep YAML (what a run records beside its table)."""
        return atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))


def read_sweep_config(path: str | Path) -> SweepRecipe:
    """A sweep YAML, every key checked: `train` (training config keys), `families` (the full model of each family
    at this scale), `subnet` (timing budget of the subnet search), `runs` (folder for the trainings)."""
    return config_from_dict(SweepRecipe, read_yaml(path, "sweep config"), f"sweep config {path}")


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


def point_name(point: dict) -> str:
    return f"{point['family']}_s{point['speedup_target']}_p{point['mhsa_proportion']}_seed{point['seed']}"


def point_config(point: dict, sweep: SweepRecipe, device: str, search: bool = True) -> tuple[dict, TrainConfig]:
    """A point's subnet (from the cache only, without `search`) and the training config of its run."""
    base = sweep.families.get(point["family"], {})
    subnet = find_subnet(
        point["family"],
        point["speedup_target"],
        point["mhsa_proportion"],
        base=base,
        budget=sweep.subnet,
        device=device,
        search=search,
    )
    kwargs = {k: v for k, v in subnet["kwargs"].items() if k != "img_size"}
    out = Path(sweep.runs) / point_name(point)
    fixed = {"model": point["family"], "model_kwargs": kwargs, "out": str(out), "seed": point["seed"]}
    return subnet, recipe(sweep.train, fixed)


def run_point(point: dict, sweep: SweepRecipe, device: str) -> dict:
    """Find the subnet, train it (resuming a checkpoint if one is there), and describe the result."""
    base = sweep.families.get(point["family"], {})
    subnet, config = point_config(point, sweep, device)
    kwargs = config.model_kwargs
    history = train(config, resume=True)  # a finished run returns its history from the checkpoint
    final = history[-1]
    model = efficientvit.create_model(point["family"], img_size=config.img_size, **kwargs)
    layout = format_layout(kwargs["layout"])
    return {
        **point,
        "speedup_measured": subnet["speedup_measured"],
        "speedup_met": subnet["met"],
        "mhsa_proportion_actual": subnet["mhsa_proportion_actual"],
        "layout": layout,
        "widths": str(kwargs["embed_dim"]),
        "mlp_ratio": kwargs.get("mlp_ratio", base.get("mlp_ratio", 4.0)),  # the search's fine knob
        "params": count_params(model),
        "flops": count_flops(model),
        "throughput": subnet["throughput"],
        "top1": final["val_top1"],
        "top5": final["val_top5"],
        "epochs": int(final["epoch"]),
        "train_seconds": round(sum(row["epoch_seconds"] for row in history), 1),
        "checkpoint": str(Path(config.out) / "checkpoint.pth"),
        # the whole curve, so the sweep reads at every training budget (space-separated, epoch 1 first)
        "top1_per_epoch": " ".join(f"{row['val_top1']:.2f}" for row in history),
    }


def subnet_spec(row: dict, sweep: SweepRecipe) -> ModelSpec:
    """The subnet a row of the sweep trained, rebuilt from the row (layout, widths, FFN expansion) and the sweep's
    full model of its family: its checkpoint stays on the machine that trained it, the row travels with the
    results."""
    family = row["family"]
    kwargs = subnet_kwargs(family, 0.0, 1.0, sweep.families.get(family, {}))  # the family's heads and knobs
    kwargs.pop("img_size", None)  # the training recipe's, as in run_point
    layout = row["layout"] if family.startswith("deit") else row["layout"].split(",")  # Swin: one string per stage
    widths = yaml.safe_load(str(row["widths"]))
    return ModelSpec(family, {**kwargs, "layout": layout, "embed_dim": widths, "mlp_ratio": float(row["mlp_ratio"])})


def search_subnets(points: list[dict], sweep: SweepRecipe, device: str) -> None:
    """Time every point's subnet once, filling the cache, so that later runs (and every torchrun process) read
    the same configurations instead of timing them again."""
    for point in points:
        result = find_subnet(
            point["family"],
            point["speedup_target"],
            point["mhsa_proportion"],
            base=sweep.families.get(point["family"], {}),
            budget=sweep.subnet,
            device=device,
        )
        print(
            f"{point_name(point)}: {result['kwargs']['layout']} widths {result['kwargs']['embed_dim']}, "
            f"{result['speedup_measured']}x{'' if result['met'] else ' (misses the target by more than 5%)'}",
            flush=True,
        )


def sweep_points(points: list[dict], sweep: SweepRecipe, out: Path, arguments: dict, device: str) -> pd.DataFrame:
    """Every point not in `out` yet, trained and appended to it."""
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun only the first process writes the CSV
    done = read_results(out)
    # rows written before the FFN-width search had every FFN at the expansion of 4
    rows = [] if done is None else done.reindex(columns=COLUMNS).fillna({"mlp_ratio": 4.0}).to_dict("records")
    finished = {tuple(r[k] for k in KEY) for r in rows}
    for n, point in enumerate(points, start=1):
        if tuple(point[k] for k in KEY) in finished:
            continue
        print(f"[{n}/{len(points)}] {point_name(point)}", flush=True)
        row = run_point(point, sweep, device)
        rows.append(row)
        if writer:
            write_results(pd.DataFrame(rows).reindex(columns=COLUMNS), out, arguments)
    return pd.DataFrame(rows, columns=COLUMNS)


DESCRIPTION = (
    "Train throughput-matched DeiT/Swin subnets over MHSA proportions (the paper's Fig. 3); writes one row per "
    "point to results/mhsa_sweep/<run>.csv."
)


@dataclass
class SweepConfig:
    families: list[str] = knob(["deit_tiny", "swin_tiny"], "deit_tiny, swin_tiny")
    speedups: list[float] = knob([1.25, 1.5], "target speed-ups")
    proportions: list[float] = knob([0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0], "MHSA proportions, 0 to 1")
    seeds: list[int] = knob([0], "training seeds")
    config: str | None = knob(None, "sweep YAML (experiments/cpu/sweep.yaml, experiments/paper/sweep.yaml)")
    device: str = knob("cpu", "where the subnets are timed")
    out: Path | None = knob(None, "CSV (default results/mhsa_sweep/<config>.csv)")
    subnets_only: bool = knob(False, "only search (and cache) the subnets; do this once before running under torchrun")


def run(config: SweepConfig) -> pd.DataFrame:
    """Every point of the grid, trained (or, with subnets_only, its subnets searched); returns the table."""
    arguments = config_arguments(config)
    if not config.config:
        raise UserError("give --config, the sweep YAML (e.g. experiments/cpu/sweep.yaml)")
    sweep = read_sweep_config(config.config)
    points = grid(config.families, config.speedups, config.proportions, config.seeds)
    out = config.out or Path("results/mhsa_sweep") / f"{Path(config.config).stem}.csv"
    if config.subnets_only:
        search_subnets(points, sweep, config.device)
        return pd.DataFrame(columns=COLUMNS)
    return sweep_points(points, sweep, out, arguments, config.device)


def show(config: SweepConfig) -> None:
    frame = run(config)
    columns = [
        "family",
        "speedup_target",
        "speedup_measured",
        "speedup_met",
        "mhsa_proportion",
        "mhsa_proportion_actual",
        "seed",
        "top1",
    ]
    if len(frame):
        print(frame[columns].to_string(index=False))


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    return parse_config(SweepConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("mhsa_sweep", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
