"""What the figures of the pipeline share: the run's context, its manifest, trainings that are never redone, and
the settings of an analysis tool given in a preset.

A results folder written by `python analysis/reproduce.py` holds manifest.json: for each stage, the files it
wrote, and the time each stage took (summed over the runs that resumed it) on which device. Readers (the report,
the notebooks) take the files it lists, so a stray CSV from another run, copied into the folder, changes nothing; a
folder without a manifest (analyses run by hand) is read whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from efficientvit.config import config_arguments
from efficientvit.errors import UserError
from efficientvit.files import atomic_write_text
from efficientvit.train import status, train
from efficientvit.train_config import TrainConfig

MANIFEST = "manifest.json"
# what a run may change between its sessions: how it runs and when it stops or is read, never what it learns
RESUMABLE_CHANGES = {"out", "workers", "precision", "fast", "compile", "snapshots", "plateau", "plateau_epochs"}


@dataclass
class Context:
    """Where a run reads and writes: results (`out`, committed), trainings (`runs`, never committed), the prepared
    data, the device of its analyses; the whole preset (a figure may read another's section: Figs. 4 and 5 read
    the proxies'); and, for a stage along training, the proxies' budget it reads (epochs) and whether it is the
    longest."""

    out: Path
    runs: Path
    data: str
    device: str
    preset: Any = None
    budget: int | None = None
    last: bool = True


@dataclass(frozen=True)
class Figure:
    """A figure of the pipeline, as its module registers it (`FIGURE = Figure(...)`, listed once in
    `analysis.figures.MODULES`): its preset section, its stage, and its part of the report and the notebooks.

    key: the preset section's name and what `--only` chooses (fig2, ...); section: the section's dataclass;
    run(ctx, section): the stage, which skips work already done and returns the files it wrote; along_training: a
    stage per budget of the proxies (ctx.budget, ctx.last), right after they are trained to it; reads: the
    sections it needs besides its own; check(preset): its checks when the preset is read (beyond the types);
    title, report(out), glance(out): its report section, its lines and its rows of the findings table;
    report_in: the key of the figure whose section holds its lines instead; folder: its tables' folder under the
    results; notebook: notebooks/<notebook>.ipynb draws it (as figures/<notebook>.png); trainings(ctx, section):
    the trainings its stage needs, by name, as configs that a launcher may run as jobs beforehand (the stage then
    finds them trained); draw(section, n): the section with its analyses' draws of images set to `n` (`--images`)."""

    key: str
    section: type
    help: str
    run: Callable[[Context, Any], list[Path]]
    along_training: bool = False
    reads: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    title: str | None = None
    report: Callable[[Path], list[str]] | None = None
    glance: Callable[[Path], list] | None = None
    report_in: str | None = None
    folder: str | None = None
    notebook: str | None = None
    trainings: Callable[[Context, Any], dict[str, TrainConfig]] | None = None
    draw: Callable[[Any, int], Any] | None = None


def settings_of(tool: type, owned: tuple[str, ...]) -> type:
    """The settings of an analysis tool that a preset may give, as a dataclass: the fields of the tool's config
    (their types, defaults and help) but those the pipeline sets itself (`owned`: data, checkpoint, ...). A section
    field of this type is checked key by key when the preset is read, the same sentences as every config, and
    holds the tool's own default for every key it leaves out: one default per option, the tool's."""
    hints = typing.get_type_hints(tool)
    fields = [
        (
            f.name,
            hints[f.name],
            dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(tool)
        if f.name not in owned
    ]
    return dataclasses.make_dataclass(f"{tool.__name__.removesuffix('Config')}Settings", fields)


def tool_config(tool: type, settings: Any, **owned: Any) -> Any:
    """The tool's config from a section's settings and the values the pipeline sets."""
    return tool(**dataclasses.asdict(settings), **owned)


def with_sidecar(csv: Path) -> list[Path]:
    return [csv, csv.with_suffix(".json")]


def announce(config: Any) -> None:
    """One line per tool call: which analysis runs with which configuration."""
    changed = {k: v for k, v in config_arguments(config).items() if v not in (None, [], False)}
    print(f"  {type(config).__name__}({', '.join(f'{k}={v}' for k, v in changed.items())})", flush=True)


def trained(config: TrainConfig, what: str, until: int | None = None) -> pd.DataFrame:
    """The per-epoch metrics of a training run, training it first (or on) unless it has reached epoch `until`
    (default: its last), or stopped at its plateau: every training of the pipeline goes through here, so a rerun
    redoes none."""
    check_same_recipe(config)
    done, finished = status(config)
    if finished or done >= (config.epochs if until is None else min(until, config.epochs)):
        return pd.read_csv(Path(config.out) / "metrics.csv")  # resume: the run is as far as asked
    print(f"  {what}", flush=True)
    return pd.DataFrame(train(config, resume=True, until=until))


def check_same_recipe(config: TrainConfig) -> None:
    """A run already started in config.out must have started with this recipe: after a preset's recipe changed, a
    rerun would otherwise count (or resume) a run trained another way as done."""
    path = Path(config.out) / "config.yaml"
    if not path.exists():
        return
    before = yaml.safe_load(path.read_text())
    now = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    changed = [key for key in now if key not in RESUMABLE_CHANGES and key in before and before[key] != now[key]]
    if changed:
        raise UserError(
            f"{config.out} was trained with {', '.join(f'{k}={before[k]}' for k in changed)}, but the preset now "
            f"asks {', '.join(f'{k}={now[k]}' for k in changed)}: delete that folder to train it the new way, or "
            "set the preset back"
        )


# -- the manifest ----------------------------------------------------------------------------------------------


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.exists():
        return {"stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}): restore it (git checkout -- {path}) or delete it "
            "to run every stage again"
        ) from None


def record_outputs(out: str | os.PathLike, stage: str, paths: list[Path], recipe: str | None = None) -> None:
    """List in out/manifest.json the files `stage` wrote (replacing what that stage listed before) and the recipe
    (`analysis.preset.recipe_digest`) it ran."""
    out = Path(out)
    manifest = read_manifest(out)
    manifest["stages"][stage] = sorted(str(Path(p).relative_to(out)) for p in paths if Path(p).exists())
    if recipe is not None:
        manifest.setdefault("recipes", {})[stage] = recipe
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


def finished_earlier(out: str | os.PathLike, stage: str, recipe: str) -> bool:
    """Whether an earlier run finished `stage` with this recipe and its files are all still in `out`. Such a stage
    is not run again: its tables are the result, and the trainings behind them (in the runs folder, never
    committed) may be gone with the machine that ran them."""
    manifest = read_manifest(out)
    files = manifest["stages"].get(stage)
    return (
        files is not None
        and manifest.get("recipes", {}).get(stage) == recipe
        and all((Path(out) / path).exists() for path in files)
    )


def add_stage_time(out: str | os.PathLike, stage: str, seconds: float, device: str) -> None:
    """Add `seconds` on `device` to the stage's time in out/manifest.json: a stage interrupted and resumed over
    several runs sums the time each spent on it, finished or not."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    timing = manifest.setdefault("timing", {}).setdefault(stage, {"seconds": 0.0, "runs": 0, "devices": []})
    timing["seconds"] += seconds
    timing["runs"] += 1
    timing["devices"] = sorted(set(timing["devices"]) | {device})
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


def stage_timing(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per stage: the seconds all runs spent on it, how many runs, on which devices (empty without a manifest)."""
    return read_manifest(out).get("timing", {})


def recorded_stages(out: str | os.PathLike) -> set[str] | None:
    """The stages out/manifest.json lists, or None for a folder without a manifest."""
    return set(read_manifest(out)["stages"]) if (Path(out) / MANIFEST).exists() else None


def listed_outputs(out: str | os.PathLike, folder: str, pattern: str = "*.csv") -> list[Path]:
    """The files of out/folder matching `pattern`: those the manifest lists, or all of them without a manifest."""
    out = Path(out)
    files = sorted((out / folder).glob(pattern))
    if not (out / MANIFEST).exists():
        return files
    listed = {out / p for paths in read_manifest(out)["stages"].values() for p in paths}
    return [f for f in files if f in listed]


def read_tables(out: str | os.PathLike, folder: str, pattern: str = "*.csv") -> pd.DataFrame | None:
    """The run's own tables in out/folder (those its manifest lists), concatenated, each row with its file's stem
    as `source`; None when there are none."""
    files = listed_outputs(out, folder, pattern)
    return pd.concat([pd.read_csv(f).assign(source=f.stem) for f in files], ignore_index=True) if files else None


def family(name: str) -> str:
    """The model family a name belongs to, whoever wrote it: deit for deit_tiny, deit_t (the paper's tables) and
    deit_tiny_full_seed0 (a proxy run) alike."""
    return name.split("_")[0]


FAMILY_LABELS = {"deit": "DeiT-T", "swin": "Swin-T", "efficientvit": "EfficientViT"}


def family_label(name: str) -> str:
    """How the figures name a model's family: DeiT-T for deit_tiny, deit_t and deit_tiny_full_seed0 alike."""
    return FAMILY_LABELS.get(family(name), name)


def budget_label(budget: float) -> str:
    """A training budget as the report writes it: epochs, `random init` (0) or `trained` (unknown: a table written
    before budgets were kept)."""
    return "trained" if pd.isna(budget) else "random init" if budget == 0 else f"{int(budget)} ep"


def at_longest(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the longest training budget (all rows when the budgets are unknown); untrained controls (0) out."""
    trained = frame[frame["budget"] != 0]
    return trained[trained["budget"] == trained["budget"].max()] if trained["budget"].notna().any() else trained
