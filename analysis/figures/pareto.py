"""The designed variant on an accuracy-throughput plot: the loop the paper closed by hand.

Stage: the variant Fig. 5 designed and EfficientViT-M0 (scaled to the data) are trained with the same recipe and
budget, once per seed, then timed in turns with the full-heads proxies and the best throughput-matched Fig. 3
subnets on this machine. out/pareto/pareto.csv has one row per model and training seed (top-1, img/s) and
whether the model's mean is on the Pareto front. The report compares the variant's top-1 with M0's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from analysis.figures import proxies
from analysis.pipeline import Context, listed_outputs, read_tables, trained, with_sidecar
from analysis.verdicts import compare
from efficientvit.bench.measure import interleaved_throughput
from efficientvit.checkpoint import model_from_checkpoint
from efficientvit.config import knob
from efficientvit.flops import count_params
from efficientvit.models import ModelSpec
from efficientvit.results import markdown_table, write_results
from efficientvit.train_config import make_config

STAGE = "pareto"
FOLDER = "pareto"
BATCH = 64


@dataclass
class Section:
    config: str = knob(help="the training YAML the variant and M0 share (experiments/cpu/efficientvit_m0.yaml)")
    train: dict = knob({}, "training-config keys that differ from it, e.g. {epochs: 1, train_images: 45000}")
    seeds: list[int] | None = knob(None, "one training per seed (null: the config's seed)")
    rounds: int = knob(3, "timing rounds (models timed in turns)")
    seconds: float = knob(0.5, "timing budget per model and round")


def designed(out: Path) -> ModelSpec | None:
    """The variant Fig. 5 designed in this run, if any."""
    found = listed_outputs(out, "variants", "*.yaml")
    return ModelSpec.from_yaml(found[0]) if found else None


def train_contenders(ctx: Context, section: Section, variant: ModelSpec) -> dict:
    """The variant and M0, trained with the same recipe once per seed: name -> (kind, spec, {seed: top-1})."""
    values = yaml.safe_load(Path(section.config).read_text())
    contenders = {}
    m0 = ModelSpec(values["model"], values["model_kwargs"])
    for name, kind, spec in (("designed_variant", "variant", variant), ("efficientvit_m0", "efficientvit", m0)):
        runs = {}
        for seed in section.seeds or [values.get("seed", 0)]:
            config = make_config(
                {
                    **values,
                    **section.train,
                    "model": spec.name,
                    "model_kwargs": spec.kwargs,
                    "seed": seed,
                    "data": str(ctx.data),
                    "out": str(ctx.runs / "pareto" / f"{name}_seed{seed}"),
                }
            )
            what = f"training {name} (seed {seed}) for the accuracy-throughput plot"
            runs[seed] = trained(config, what)["val_top1"].iloc[-1]
        contenders[name] = (kind, spec, runs)
    return contenders


def peers(ctx: Context, trained_proxies: proxies.Section) -> dict:
    """The full-heads proxies and, per family, the Fig. 3 subnet with the best mean top-1 among those that met
    their speed-up: name -> (kind, spec, {seed: top-1})."""
    summary = pd.read_csv(ctx.out / proxies.FOLDER / "summary.csv")
    configs, found = proxies.configs(trained_proxies, ctx.data, ctx.runs), {}
    for proxy in trained_proxies.models:
        config = configs[proxies.run_names(trained_proxies, proxy)[0]]
        if config.model_kwargs.get("attention", "full") == "full":
            runs = summary[summary["proxy"].isin(proxies.run_names(trained_proxies, proxy))]
            found[proxy] = (
                "proxy",
                ModelSpec(config.model, config.model_kwargs),
                dict(zip(runs["seed"], runs["top1"])),
            )
    sweep = ctx.out / "mhsa_sweep" / "sweep.csv"
    if sweep.exists():
        points = pd.read_csv(sweep)
        points = points[points["speedup_met"].astype(bool)]
        for name, group in points.groupby("family"):
            best = group.groupby("mhsa_proportion_actual")["top1"].mean().idxmax()
            chosen = group[group["mhsa_proportion_actual"] == best]
            spec = model_from_checkpoint(chosen["checkpoint"].iloc[0]).spec
            found[f"{name}_subnet_p{best:.2f}"] = ("best Fig. 3 subnet", spec, dict(zip(chosen.seed, chosen.top1)))
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


def run(ctx: Context, section: Section, trained_proxies: proxies.Section) -> list[Path]:
    """The stage: train the two, time everyone in turns, write pareto.csv."""
    variant = designed(ctx.out)
    contenders = {**train_contenders(ctx, section, variant), **peers(ctx, trained_proxies)}
    img_size = yaml.safe_load(Path(section.config).read_text())["img_size"]
    models = [spec.build(img_size=img_size, num_classes=10).eval() for _, spec, _ in contenders.values()]
    timings = interleaved_throughput(models, rounds=section.rounds, seconds=section.seconds, batch_size=BATCH, warmup=3)
    speeds = [statistics.median(timing) for timing in timings]
    means = pd.DataFrame(
        [
            {"name": name, "top1": statistics.mean(runs.values()), "img_s": speed}
            for (name, (_, _, runs)), speed in zip(contenders.items(), speeds)
        ]
    )
    best = front(means)
    table = pd.DataFrame(
        [
            {
                "name": name,
                "kind": kind,
                "seed": seed,
                "top1": top1,
                "img_s": speed,
                "params": count_params(model),
                "pareto": name in best,
            }
            for (name, (kind, _, runs)), speed, model in zip(contenders.items(), speeds, models)
            for seed, top1 in runs.items()
        ]
    )
    arguments = {**vars(section), "img_size": img_size, "batch": BATCH, "threads": torch.get_num_threads()}
    return with_sidecar(write_results(table, ctx.out / FOLDER / "pareto.csv", arguments))


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    return {"pareto": read_tables(out, FOLDER, "pareto.csv")}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per model: its kind, top-1 over training seeds (mean, s.d., trainings), throughput, parameters and
    whether it is on the Pareto front."""
    return (
        tables["pareto"]
        .groupby("name", sort=False)
        .agg(
            kind=("kind", "first"),
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
            "top-1": [f"{r.top1:.1f}%" + (f" ± {r.top1_sd:.1f}" if r.runs > 1 else "") for r in models.itertuples()],
            "trainings": models["runs"],
            "img/s": models["img_s"].map("{:.0f}".format),
            "params": models["params"].map("{:,}".format),
            "on the Pareto front": models["pareto"].map({True: "yes", False: "no"}),
        }
    )
    variant, m0 = (runs[runs["kind"] == kind] for kind in ("variant", "efficientvit"))
    on_front = bool(models.loc[models["kind"] == "variant", "pareto"].all())
    accuracy = compare(variant["top1"], m0["top1"], "greater", unit="trainings")
    return [
        "",
        "Accuracy against CPU throughput (32 px, batch 64, interleaved medians), the designed variant and "
        "EfficientViT-M0 trained with the same recipe and budget (top-1: mean ± s.d. over training seeds):",
        "",
        *markdown_table(cells),
        "",
        f"The designed variant is {'on' if on_front else 'off'} the accuracy-throughput Pareto front of the "
        "means (no other model both more accurate and faster), running "
        f"{variant['img_s'].iloc[0] / m0['img_s'].iloc[0]:.2f}x EfficientViT-M0's throughput. Its top-1 minus "
        f"M0's, points (Welch over training seeds): {accuracy.describe()}.",
    ]


def report(out: Path) -> list[str]:
    """The Pareto table and verdict when the run trained the variant, and the variant's configuration."""
    found = tables(out)
    lines = front_lines(found["pareto"]) if found["pareto"] is not None else []
    variants = listed_outputs(out, "variants", "*.yaml")
    if variants:
        lines += ["", f"Designed variant ({variants[0].name}):", "", "```yaml", variants[0].read_text().strip(), "```"]
    return lines
