"""Every analysis of the paper, end to end, as one resumable pipeline: `python analysis/reproduce.py --preset demo`.

Stages, one per figure module (analysis/figures/): make (or find) the data, train the proxies, Fig. 2
(memory-bound profile), Fig. 3 (MHSA sweep), Fig. 4 (head similarity), Fig. 5 (Taylor pruning and the variant
designer), the designed variant on an accuracy-throughput plot, then the notebooks (headless, writing
<out>/figures/*.png) and <out>/REPORT.md. Everything a preset needs is in its YAML (experiments/reproduce/<preset>.yaml,
parsed by analysis/preset.py). Like the presets' own paths, `experiments/` and `notebooks/` are read from the
repository root, where it runs.

Every stage skips work already done (each tool resumes by itself: trainings from their checkpoints, the sweep
and the profile from their CSVs), so an interrupted run continues where it stopped; each stage lists the files it
wrote, its time and its recipe in <out>/manifest.json as soon as it ends, and a stage listed there under the
preset's present recipe is not run again, so a run continues from its committed tables on another machine too.
Beyond one process the trainings run as jobs (`--launcher slurm` or `local`, analysis/launcher.py): the Fig. 3 subnet
search once, every training the figures register as a job, then the analyses here, which find them all trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.figures import fig3, proxies, registered
from analysis.launcher import LAUNCHERS, Launch, launch, launch_overrides_class
from analysis.pipeline import Context, Figure, add_stage_time, finished_earlier, record_outputs
from analysis.preset import check_preset, draw_images, load_preset, prepare_data, recipe_digest
from analysis.report import draw_figures, write_report
from efficientvit.config import add_config_arguments, config_from_args, knob
from efficientvit.errors import UserError, exit_status
from efficientvit.results import device_description


def figure_keys() -> list[str]:
    """What --only chooses from: every registered figure but the proxies (trained for those that read them)."""
    return [figure.key for figure in registered() if figure.key != proxies.STAGE]


@dataclass
class Stage:
    name: str
    figure: Figure
    budget: int | None = None  # the proxies' budget a stage along training reads
    last: bool = True  # whether it is their longest

    def run(self, ctx: Context) -> list[Path]:
        """Do the stage's work (skipping what is done); returns the files it wrote."""
        at = dataclasses.replace(ctx, budget=self.budget, last=self.last)
        return self.figure.run(at, getattr(ctx.preset, self.figure.key))


def stage_table(preset, only: set[str], until: int | None = None) -> list[Stage]:
    """The stages this run does, in order. The proxies train budget by budget (their snapshots' epochs), and the
    figures read along training (Figs. 4 and 5) read each budget as soon as it is trained, so every finding is
    followed along training and a run that stops loses at most the training in progress; then each other figure
    the preset configures. With `until` (a budget), only the stages along training up to it."""
    figures = [figure for figure in registered() if getattr(preset, figure.key) is not None]
    chosen = [figure for figure in figures if figure.key in only]
    stages = []
    if preset.proxies is not None and any(proxies.STAGE in figure.reads for figure in chosen):
        budgets = proxies.budgets(preset.proxies)
        along = [f for f in figures if f.along_training and (f.key == proxies.STAGE or f.key in only)]
        for budget in budgets if until is None else [b for b in budgets if b <= until]:
            at = "" if len(budgets) == 1 else f" (epoch {budget})"
            stages += [Stage(f"{f.key}{at}", f, budget, budget == budgets[-1]) for f in along]
    if until is not None:
        return stages
    return stages + [Stage(figure.key, figure) for figure in chosen if not figure.along_training]


class Progress:
    """One line per stage: its number, the time so far, and an estimate of what is left (from the preset's
    expected minutes per stage, rescaled by how the finished stages compared with their estimates)."""

    def __init__(self, stages: list[tuple[str, float]]):
        self.stages, self.start, self.done_expected, self.done_actual = stages, time.perf_counter(), 0.0, 0.0

    def begin(self, index: int) -> float:
        name, _ = self.stages[index]
        elapsed = time.perf_counter() - self.start
        # finished stages recalibrate the estimates, once they are long enough to say something
        pace = self.done_actual / self.done_expected if self.done_actual > 60 else 1.0
        left = pace * sum(minutes for _, minutes in self.stages[index:]) * 60
        print(
            f"[{index + 1}/{len(self.stages)}] {name}: {elapsed / 60:.1f} min elapsed, about {left / 60:.0f} min left",
            flush=True,
        )
        return time.perf_counter()

    def skip(self, index: int, out: Path) -> None:
        print(f"[{index + 1}/{len(self.stages)}] {self.stages[index][0]}: finished earlier, its tables in {out}")

    def end(self, index: int, started: float) -> None:
        self.done_expected += self.stages[index][1] * 60
        self.done_actual += time.perf_counter() - started


def run_stages(preset, preset_name: str, out: Path, only: set[str], until: int | None = None) -> Path:
    """The whole pipeline: data, each stage (its files and time into the manifest as it ends), then the notebooks
    and the report."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, preset.runs, "", preset.device, preset)  # ctx.data is set once the data is prepared
    stages = stage_table(preset, only, until)
    base = [s.name.split(" (")[0] for s in stages]  # a figure read at several budgets shares its minutes
    progress = Progress(
        [("data", preset.minutes.get("data", 1))]
        + [(s.name, preset.minutes.get(b, 1) / base.count(b)) for s, b in zip(stages, base)]
        + [("notebooks and report", preset.minutes.get("report", 1))]
    )
    started = progress.begin(0)
    ctx.data = prepare_data(preset.data)
    progress.end(0, started)
    device = device_description(ctx.device)
    for index, stage in enumerate(stages, start=1):
        recipe = recipe_digest(preset, stage.figure)
        if finished_earlier(out, stage.name, recipe):
            progress.skip(index, out)
            continue
        started = progress.begin(index)
        try:
            record_outputs(out, stage.name, stage.run(ctx), recipe)
        finally:  # an interrupted stage's time counts too: the resumed run adds its own
            add_stage_time(out, stage.name, time.perf_counter() - started, device)
        progress.end(index, started)
    progress.begin(len(stages) + 1)
    draw_figures(out)
    report = write_report(out, preset_name, ctx.data)
    print(f"done in {(time.perf_counter() - progress.start) / 60:.1f} min: {report} and {out / 'figures'}")
    return report


def reproduce(
    preset_name: str,
    out: Path,
    only: list[str],
    *,
    data_override: str | None = None,
    fresh: bool = False,
    subnets_only: bool = False,
    launcher: str | None = None,
    launch_overrides: dict | None = None,
    wait: bool = True,
    images: int | None = None,
    until: int | None = None,
) -> Path | None:
    """The pipeline of a preset: everything in this process, or its trainings first as jobs (`launcher`: local or
    slurm, analysis/launcher.py) and the analyses here once they are done. None when nothing was analysed (only the
    subnet search, or jobs left queued with `wait=False`)."""
    preset = load_preset(preset_name)
    if data_override:
        preset.data.path, preset.data.synthetic = data_override, None
    if launch_overrides:
        preset.launch = dataclasses.replace(preset.launch, **launch_overrides)
    if images is not None:
        draw_images(preset, images)
    check_preset(preset)
    check_until(preset, until)
    if fresh:
        for folder in (out, preset.runs):
            shutil.rmtree(folder, ignore_errors=True)
    if subnets_only:
        if preset.fig3 is None:
            raise UserError(f"--subnets-only searches the Fig. 3 subnets, and preset {preset_name} has no fig3")
        fig3.search_subnets(Context(out, preset.runs, prepare_data(preset.data), preset.device, preset), preset.fig3)
        return None
    if launcher is not None:
        ctx = Context(out, preset.runs, prepare_data(preset.data), preset.device, preset)
        started = time.perf_counter()
        trained = launch(launcher, ctx, set(only), preset.launch, wait, until=until)
        add_stage_time(out, f"trainings as {launcher} jobs", time.perf_counter() - started, launcher)
        if not trained:
            return None
    return run_stages(preset, preset_name, out, set(only), until)


def check_until(preset, until: int | None) -> None:
    """--until names one of the budgets the preset reads its proxies at."""
    if until is None:
        return
    budgets = proxies.budgets(preset.proxies) if preset.proxies is not None else [None]
    if until not in budgets:
        known = ", ".join(str(b) for b in budgets if b is not None) or "none"
        raise UserError(f"--until takes one of the budgets this preset reads its proxies at ({known}), got {until}")


DESCRIPTION = (
    "Make the data, train the proxies, run Figs. 2-5 and the variant designer, execute the notebooks (figures in "
    "<out>/figures) and write <out>/REPORT.md. Run from the repository root. Interrupted, it continues where it "
    "stopped when run again (finished work is always kept). With --launcher, the trainings run as jobs first: on "
    "a SLURM cluster (a submitit job array) or as local processes."
)


@dataclass
class ReproduceConfig:
    preset: str = knob(
        "demo",
        "demo (13-20 min on 2 cores), quick (smaller), reference (the committed run, ~11.5 h), released (the paper's "
        "weights on your ImageNet), paper (ImageNet, GPUs), or a preset YAML",
    )
    out: Path | None = knob(None, "results folder (default results/<preset>: never the committed results/)")
    only: str | None = knob(None, f"figures to run, e.g. fig2,fig4 (default: all of {', '.join(figure_keys())})")
    data: str | None = knob(None, "data instead of the preset's: fashion-mnist or an ImageFolder root (e.g. ImageNet)")
    images: int | None = knob(
        None,
        "images every analysis draws (Fig. 4's, the oracle's and the controls', Fig. 5's scoring), not the preset's",
    )
    fresh: bool = knob(False, "delete the preset's results and runs, start over")
    subnets_only: bool = knob(False, "only search (and cache) the Fig. 3 subnets, on this machine, which times them")
    launcher: str | None = knob(
        None,
        "run the trainings as jobs first: slurm (a submitit job array on the cluster, requeued on preemption) or "
        "local (the same jobs as local processes); by default everything runs in this process",
        choices=LAUNCHERS,
    )
    no_wait: bool = knob(False, "with --launcher slurm: queue the jobs and return; run the command again to analyse")
    until: int | None = knob(
        None,
        "train the proxies only to this budget (epochs, one of the preset's) and run only the figures read along "
        "training up to it: a long run's findings so far, committed stage by stage; run again without it to go on",
    )


def run(config: ReproduceConfig, launch_overrides: dict | None = None) -> Path | None:
    keys = figure_keys()
    only = keys if config.only is None else [f.strip() for f in config.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(keys))
    if unknown:
        raise UserError(f"--only takes {', '.join(keys)}; unknown: {', '.join(unknown)}")
    out = config.out or Path("results") / Path(config.preset).name.removesuffix(".yaml")
    if launch_overrides and config.launcher is None:
        raise UserError(f"--{next(iter(launch_overrides)).replace('_', '-')} sets a job's resources: give --launcher")
    return reproduce(
        config.preset,
        out,
        only,
        data_override=config.data,
        fresh=config.fresh,
        subnets_only=config.subnets_only,
        launcher=config.launcher,
        launch_overrides=launch_overrides,
        wait=not config.no_wait,
        images=config.images,
        until=config.until,
    )


def parse_args(argv: list[str] | None = None) -> tuple[ReproduceConfig, dict]:
    """The command's options, and the job settings given on the command line (over the preset's `launch`)."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_config_arguments(parser, ReproduceConfig)
    jobs = parser.add_argument_group("jobs (with --launcher; each defaults to the preset's `launch` section)")
    add_config_arguments(jobs, launch_overrides_class())
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Launch) if getattr(args, f.name) is not None}
    return config_from_args(ReproduceConfig, args), overrides


def main(argv: list[str] | None = None) -> int:
    return exit_status("reproduce", run, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
