"""The designed variant on an accuracy-throughput plot: the loop the paper closed by hand.

Stage: the variant Fig. 5 designed and EfficientViT-M0 (scaled to the data) are trained with the same recipe and
budget, once per seed; with `m0_ratio`, the trained M0 (its first seed) is then Taylor-pruned itself
(analysis/design_variant.py's `design_from_checkpoint`) and the variant designed from that pruning is trained the
same way: the design loop's next turn. Then all are timed in turns with the full-heads proxies and the best
throughput-matched Fig. 3 subnets on this machine. out/pareto/pareto.csv has one row per model and training seed
(top-1, img/s) and whether the model's mean is on the Pareto front. The report compares each variant's top-1 with
M0's.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from analysis import mhsa_sweep, taylor_pruning
from analysis.design_variant import design_from_checkpoint
from analysis.figures import fig5, proxies
from analysis.pipeline import Context, Figure, listed_outputs, read_tables, settings_of, trained, with_sidecar
from analysis.verdicts import Finding, Verdict, compare
from efficientvit.bench.measure import interleaved_throughput
from efficientvit.config import knob
from efficientvit.errors import UserError
from efficientvit.flops import count_params
from efficientvit.models import ModelSpec
from efficientvit.results import markdown_table, write_results
from efficientvit.train_config import TrainConfig, check_overrides, recipe

STAGE = "pareto"
FOLDER = "pareto"
BATCH = 64
M0_VARIANT = "efficientvit_m0_pruned"  # the name of the M0 pruning's files and of the variant designed from it
M0_KIND = "variant from M0"
# the stage sets the checkpoint, data and files of M0's pruning; its budget is m0_ratio
M0PruneSettings = settings_of(
    taylor_pruning.PruneConfig, owned=(*fig5.OWNED, "ratio", "target_flops", "target_speedup")
)


@dataclass
class Section:
    config: str = knob(help="the training YAML the variant and M0 share (experiments/cpu/efficientvit_m0.yaml)")
    train: dict = knob({}, "training-config keys that differ from it, e.g. {epochs: 1, train_images: 45000}")
    seeds: list[int] | None = knob(None, "one training per seed (null: the config's seed)")
    rounds: int = knob(3, "timing rounds (models timed in turns)")
    seconds: float = knob(0.5, "timing budget per model and round")
    m0_ratio: float | None = knob(
        None,
        "also Taylor-prune the trained M0 (first seed) by this fraction of its channels and train the variant "
        "designed from it beside the others (null: not)",
    )
    m0_pruning: M0PruneSettings = knob(M0PruneSettings(), "analysis/taylor_pruning.py's settings of that pruning")

    def __post_init__(self):  # checked as the preset is read, not after hours of training
        self.train = check_overrides(self.train, "pareto: train")
        if self.m0_ratio is not None and not 0 < self.m0_ratio < 1:
            raise UserError(
                f"pareto: m0_ratio must lie in (0, 1), the fraction of M0's channels to prune; got {self.m0_ratio}"
            )


def check(preset) -> None:
    """M0's recipe with the section's keys makes a config."""
    recipe(preset.pareto.config, preset.pareto.train)


def designed(out: Path) -> ModelSpec | None:
    """The variant Fig. 5 designed in this run, if any."""
    found = listed_outputs(out, "variants", "*.yaml")
    return ModelSpec.from_yaml(found[0]) if found else None


def budget_text(config: TrainConfig, epochs: int | None = None) -> str:
    """A training's budget in words, epochs (those read, when fewer than its schedule's) times images per epoch."""
    per_epoch = f"{config.epoch_images:,}" if config.epoch_images else f"{config.train_images or 'all the'}"
    return f"{epochs or config.epochs} x {per_epoch} images"


def train_contender(ctx: Context, section: Section, name: str, spec: ModelSpec) -> dict[int, float]:
    """`spec` trained with the section's recipe once per seed: {seed: top-1}."""
    runs = {}
    for seed in section.seeds or [recipe(section.config).seed]:
        fixed = {
            "model": spec.name,
            "model_kwargs": spec.kwargs,
            "seed": seed,
            "data": str(ctx.data),
            "out": str(ctx.runs / FOLDER / f"{name}_seed{seed}"),
        }
        config = recipe(section.config, section.train, fixed)
        runs[seed] = trained(config, f"training {name} (seed {seed}) for the accuracy-throughput plot")["val_top1"]
    return {seed: history.iloc[-1] for seed, history in runs.items()}


def train_contenders(ctx: Context, section: Section, variant: ModelSpec) -> tuple[dict, list[Path]]:
    """The variant, M0 and (with `m0_ratio`) the variant designed from M0's own pruning, trained with the same
    recipe once per seed: name -> (kind, spec, {seed: top-1}), and the pruning's and design's files."""
    m0_recipe = recipe(section.config, section.train)
    m0, budget = ModelSpec(m0_recipe.model, m0_recipe.model_kwargs), budget_text(m0_recipe)
    contenders = {
        "designed_variant": ("variant", variant, train_contender(ctx, section, "designed_variant", variant), budget),
        "efficientvit_m0": ("efficientvit", m0, train_contender(ctx, section, "efficientvit_m0", m0), budget),
    }
    if section.m0_ratio is None:
        return contenders, []
    first_seed = (section.seeds or [m0_recipe.seed])[0]
    folder = ctx.out / FOLDER
    yaml_path = design_from_checkpoint(
        ctx.runs / FOLDER / f"efficientvit_m0_seed{first_seed}" / "checkpoint.pth",
        ctx.data,
        section.m0_ratio,
        folder,
        runs_dir=ctx.runs / FOLDER,
        name=M0_VARIANT,
        pruning=dataclasses.asdict(section.m0_pruning),
        variant={"seconds": section.seconds},
    )
    spec = ModelSpec.from_yaml(yaml_path)
    contenders["m0_designed_variant"] = (M0_KIND, spec, train_contender(ctx, section, M0_VARIANT, spec), budget)
    return contenders, [yaml_path, *(folder / "taylor_pruning").glob(f"{M0_VARIANT}*")]


def peers(ctx: Context, trained_proxies: proxies.Section) -> dict:
    """The full-heads proxies and, per family, the Fig. 3 subnet with the best mean top-1 among those that met
    their speed-up: name -> (kind, spec, {seed: top-1}, their training budget)."""
    summary = pd.read_csv(ctx.out / proxies.FOLDER / "summary.csv")
    configs, found = proxies.configs(trained_proxies, ctx.data, ctx.runs), {}
    for proxy in trained_proxies.models:
        if proxies.released(trained_proxies, proxy):
            continue  # the peers trained as the variant was
        config = configs[proxies.run_names(trained_proxies, proxy)[0]]
        if config.model_kwargs.get("attention", "full") == "full":
            runs = summary[summary["proxy"].isin(proxies.run_names(trained_proxies, proxy))]
            found[proxy] = (
                "proxy",
                ModelSpec(config.model, config.model_kwargs),
                dict(zip(runs["seed"], runs["top1"])),
                budget_text(config, int(runs["epochs"].max())),
            )
    sweep = ctx.out / "mhsa_sweep" / "sweep.csv"
    if sweep.exists():
        points = pd.read_csv(sweep)
        points = points[points["speedup_met"].astype(bool)]
        sweep_recipe = mhsa_sweep.read_sweep_config(ctx.out / "mhsa_sweep" / "sweep_config.yaml")
        for name, group in points.groupby("family"):
            best = group.groupby("mhsa_proportion_actual")["top1"].mean().idxmax()
            chosen = group[group["mhsa_proportion_actual"] == best]
            spec = mhsa_sweep.subnet_spec(chosen.iloc[0].to_dict(), sweep_recipe)
            trained_as = budget_text(recipe(sweep_recipe.train), int(chosen["epochs"].max()))
            found[f"{name}_subnet_p{best:.2f}"] = (
                "best Fig. 3 subnet",
                spec,
                dict(zip(chosen.seed, chosen.top1)),
                trained_as,
            )
    return found


def front(means: pd.DataFrame) -> set[str]:
    """The names no other model beats on both top-1 and throughput."""
    return {
        r.name
        for r in means.itertuples()
        if not (
            (means["top1"] >= r.top1)
            & (means["img_s"] >= r.img_s)
            & ((means["top1"] > r.top1) | (means["img_s"] > r.img_s))
        ).any()
    }


def run(ctx: Context, section: Section) -> list[Path]:
    """The stage: train the two, time everyone in turns, write pareto.csv."""
    variant = designed(ctx.out)
    contenders, design_files = train_contenders(ctx, section, variant)
    contenders |= peers(ctx, ctx.preset.proxies)
    img_size = recipe(section.config, section.train).img_size
    models = [spec.build(img_size=img_size, num_classes=10).eval() for _, spec, _, _ in contenders.values()]
    timings = interleaved_throughput(models, rounds=section.rounds, seconds=section.seconds, batch_size=BATCH, warmup=3)
    speeds = [statistics.median(timing) for timing in timings]
    means = pd.DataFrame(
        [
            {"name": name, "top1": statistics.mean(runs.values()), "img_s": speed}
            for (name, (_, _, runs, _)), speed in zip(contenders.items(), speeds)
        ]
    )
    best = front(means)
    table = pd.DataFrame(
        [
            {
                "name": name,
                "kind": kind,
                "trained_on": budget,
                "seed": seed,
                "top1": top1,
                "img_s": speed,
                "params": count_params(model),
                "pareto": name in best,
            }
            for (name, (kind, _, runs, budget)), speed, model in zip(contenders.items(), speeds, models)
            for seed, top1 in runs.items()
        ]
    )
    arguments = {**vars(section), "img_size": img_size, "batch": BATCH, "threads": torch.get_num_threads()}
    return [*with_sidecar(write_results(table, ctx.out / FOLDER / "pareto.csv", arguments)), *design_files]


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    frame = read_tables(out, FOLDER, "pareto.csv")
    if frame is not None and "trained_on" not in frame:  # written before the budgets were kept
        frame["trained_on"] = "-"
    return {"pareto": frame}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per model: its kind, top-1 over training seeds (mean, s.d., trainings), throughput, parameters and
    whether it is on the Pareto front."""
    return (
        tables["pareto"]
        .groupby("name", sort=False)
        .agg(
            kind=("kind", "first"),
            trained_on=("trained_on", "first"),
            top1=("top1", "mean"),
            top1_sd=("top1", "std"),
            runs=("top1", "size"),
            img_s=("img_s", "first"),
            params=("params", "first"),
            pareto=("pareto", "first"),
        )
        .reset_index()
    )


def front_lines(runs: pd.DataFrame) -> list[str]:
    models = summarize({"pareto": runs}).sort_values("img_s", ascending=False)
    cells = pd.DataFrame(
        {
            "model": models["name"],
            "kind": models["kind"],
            "trained on": models["trained_on"],
            "top-1": [f"{r.top1:.1f}%" + (f" ± {r.top1_sd:.1f}" if r.runs > 1 else "") for r in models.itertuples()],
            "trainings": models["runs"],
            "img/s": models["img_s"].map("{:.0f}".format),
            "params": models["params"].map("{:,}".format),
            "on the Pareto front": models["pareto"].map({True: "yes", False: "no"}),
        }
    )
    lines = [
        "",
        "Accuracy against CPU throughput (32 px, batch 64, interleaved medians), the designed variants and "
        "EfficientViT-M0 trained with the same recipe and budget, each model beside the budget it was trained on "
        "(epochs x images per epoch: the proxies and the Fig. 3 subnets trained on their own, so their top-1 compares "
        "with the others' only as far as their budgets do; top-1: mean ± s.d. over training seeds):",
        "",
        *markdown_table(cells),
        "",
    ]
    for label, on_front, speed, accuracy in contenders(runs):
        lines.append(
            f"{label} is {'on' if on_front else 'off'} the accuracy-throughput Pareto front of the means (no other "
            f"model both more accurate and faster), running {speed:.2f}x EfficientViT-M0's throughput. Its top-1 "
            f"minus M0's, points (Welch over training seeds): {accuracy.describe()}."
        )
    return lines


def contenders(runs: pd.DataFrame) -> list[tuple[str, bool, float, Verdict]]:
    """Each designed variant the run trained: whether it is on the front, its throughput over M0's and its top-1
    against M0's."""
    models = summarize({"pareto": runs})
    m0 = runs[runs["kind"] == "efficientvit"]
    found = []
    for kind, label in (("variant", "The variant designed from Fig. 5"), (M0_KIND, "The variant designed from M0")):
        variant = runs[runs["kind"] == kind]
        if not variant.empty:
            on_front = bool(models.loc[models["kind"] == kind, "pareto"].all())
            speed = variant["img_s"].iloc[0] / m0["img_s"].iloc[0]
            found.append((label, on_front, speed, compare(variant["top1"], m0["top1"], "greater", unit="trainings")))
    return found


def glance(out: Path) -> list[Finding]:
    """The designed variants against EfficientViT-M0, for the report's table at a glance."""
    found = tables(out)["pareto"]
    return [
        Finding(
            "design",
            "a variant designed from the pruning is more accurate than EfficientViT-M0 (our test, not the paper's)",
            f"{label.removeprefix('The ')}: {'on' if on_front else 'off'} the Pareto front, {speed:.2f}x M0's "
            "throughput; top-1 minus M0's",
            accuracy.evidence(),
            accuracy.word(),
        )
        for label, on_front, speed, accuracy in ([] if found is None else contenders(found))
    ]


def report(out: Path) -> list[str]:
    """The Pareto table and verdict when the run trained the variant, and the variant's configuration."""
    found = tables(out)
    lines = front_lines(found["pareto"]) if found["pareto"] is not None else []
    for variant in [*listed_outputs(out, "variants", "*.yaml"), *listed_outputs(out, FOLDER, "variants/*.yaml")]:
        lines += ["", f"Designed variant ({variant.name}):", "", "```yaml", variant.read_text().strip(), "```"]
    return lines


FIGURE = Figure(
    STAGE,
    Section,
    "the designed variant trained and timed against its peers",
    run,
    reads=("proxies", "fig5"),
    check=check,
    report=report,
    glance=glance,
    report_in="fig5",  # the designed variant is Fig. 5's conclusion
    folder=FOLDER,
)
