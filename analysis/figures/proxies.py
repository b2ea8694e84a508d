"""The proxies: the small DeiT and Swin models, with full, split or cascaded heads, that Figs. 4 and 5 analyse.

Stage: train every proxy of the preset (once per seed), then tabulate each one's accuracy (out/proxies/summary.csv)
and training curve (out/proxies/curves.csv), so the results folder says how far each model learned.

Budgets: a run keeps snapshots of itself after the epochs the section lists (`budgets`, e.g. 1, 3, 10 of a
10-epoch schedule), and the pipeline trains every proxy to one budget, has Figs. 4 and 5 read that budget's
snapshots, then trains on to the next: each finding is read along training, and a run that stops loses at most
the training in progress. A run that stops at its plateau (`train: {plateau: ...}`) before a budget is read there
at its plateau.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from analysis.pipeline import Context, Figure, read_tables, trained, with_sidecar
from analysis.published import paper_table
from analysis.verdicts import PROXY_SCALE, UNCONVERGED
from efficientvit.checkpoint import model_from_checkpoint
from efficientvit.config import knob
from efficientvit.data import fashion_mnist
from efficientvit.data.pipeline import collate
from efficientvit.data.sources import fixed_subset, open_split
from efficientvit.errors import UserError
from efficientvit.evaluation import evaluate
from efficientvit.flops import count_params
from efficientvit.models import create_model
from efficientvit.results import markdown_table, write_results
from efficientvit.runtime import resolve_device
from efficientvit.train_config import TrainConfig, check_overrides, recipe

STAGE = "proxies"
TITLE = "The proxies"
FOLDER = "proxies"
# How far a Fashion-MNIST proxy has learned, in points of top-1 on the held-out split:
LINEAR_TOP1 = 84.0  # a linear classifier on the pixels (the data set's own benchmark): below it, little is learned
LEARNED_TOP1 = 88.0  # clearly beyond a linear model: the level this project asks of a converged proxy
PLATEAU_GAIN = 0.3  # a run that gained less over its last two epochs has levelled off (the training's plateau rule)
LEARNED, AT_PLATEAU, STILL_LEARNING = "learned", "at its plateau", "still learning"  # a run's state where it is read
COLLAPSE_DROP = 10.0  # a run that lost more from one epoch to the next diverged (its loss spiked) on the way


@dataclass
class Proxy:
    config: str | None = knob(None, "its training YAML (experiments/cpu/...)")
    checkpoint: str | None = knob(
        None,
        "instead of a training: weights to read as they are, a file or a pretrained name (timm/deit_tiny_patch16_224"
        ".fb_in1k: `efficientvit list --pretrained`); nothing is trained, the model is evaluated on the data",
    )
    set: dict = knob({}, "training-config keys that differ for this proxy (they win over the section's `train`)")
    seeds: list[int] | None = knob(None, "this proxy's seeds, instead of the section's")


@dataclass
class Section:
    models: dict[str, Proxy] = knob(help="name: how to train it")
    seeds: list[int] | None = knob(None, "one run per seed, named <proxy>_seed<k> (null: one run, named <proxy>)")
    train: dict = knob({}, "training-config keys for every proxy, e.g. {epochs: 10, plateau: 0.3}")
    budgets: list[int] = knob([], "epochs after which Figs. 4 and 5 read each run (snapshots); empty: its last")
    eval_images: int | None = knob(None, "a seeded draw of validation images the weights' top-1 is taken on (all)")

    def __post_init__(self):  # the overrides checked as the preset is read, not when a training starts
        self.train = check_overrides(self.train, "proxies: train")
        for name, proxy in self.models.items():
            if (proxy.config is None) == (proxy.checkpoint is None):
                raise UserError(f"proxies: models: {name} needs a config (to train) or a checkpoint (to read), one")
            proxy.set = check_overrides(proxy.set, f"proxies: models: {name}: set")


def released(section: Section, proxy: str) -> bool:
    """Whether a proxy is weights read as they are (a checkpoint), not a training."""
    return section.models[proxy].checkpoint is not None


def run_names(section: Section, proxy: str) -> list[str]:
    """The runs of one proxy: `<proxy>` alone (and for weights read as they are), or `<proxy>_seed<k>` for each of
    its seeds."""
    seeds = section.models[proxy].seeds or section.seeds
    return [proxy] if seeds is None or released(section, proxy) else [f"{proxy}_seed{seed}" for seed in seeds]


def configs(section: Section, data: str, runs: Path) -> dict[str, TrainConfig]:
    """The training config of every run of every trained proxy, with the section's and the proxy's keys (and the
    seed); weights read as they are have none."""
    out = {}
    for name, proxy in section.models.items():
        if proxy.config is None:
            continue
        seeds = proxy.seeds or section.seeds
        for run, seed in zip(run_names(section, name), [None] if seeds is None else seeds):
            fixed = {
                **({} if seed is None else {"seed": seed}),
                **({"snapshots": section.budgets} if section.budgets else {}),
                "data": str(data),
                "out": str(runs / run),
            }
            out[run] = recipe(proxy.config, section.train, proxy.set, fixed)
    return out


def budgets(section: Section) -> list[int | None]:
    """The budgets the figures read, in order; [None] (the trained model) when the section lists none."""
    return sorted(section.budgets) or [None]


def checkpoints(section: Section, runs: Path, budget: int | None = None) -> dict[str, Path]:
    """Each run's weights at `budget` epochs (its snapshot; where the run stopped at its plateau before, the last
    snapshot it kept), or its trained model; by run name."""
    found = {}
    for run in [run for name in section.models for run in run_names(section, name)]:
        if run in section.models and released(section, run):
            found[run] = section.models[run].checkpoint
            continue
        found[run] = runs / run / "checkpoint.pth"
        if budget is not None:
            kept = sorted(runs.glob(f"{run}/snapshots/epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            earlier = [p for p in kept if int(p.stem.split("_")[1]) <= budget]
            found[run] = earlier[-1] if earlier else runs / run / "snapshots" / f"epoch_{budget}.pth"
    return found


def check(preset) -> None:
    """Every proxy's recipe (its YAML and the section's and its own overrides) makes a config, and its model runs a
    batch at its image size; weights read as they are are there (in a cache, offline) and classify as many classes
    as an ImageFolder given as the data has."""
    for config in configs(preset.proxies, "unused", preset.runs).values():
        model = create_model(config.model, num_classes=10, img_size=config.img_size, **config.model_kwargs)
        model.eval()(torch.zeros(1, 3, config.img_size, config.img_size))
    for name, proxy in preset.proxies.models.items():
        if proxy.checkpoint is not None:
            model = model_from_checkpoint(proxy.checkpoint)
            for split in ("train", "val"):
                folder = Path(preset.data.path) / split
                found = sum(1 for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else None
                if found is None and not fashion_mnist.refers_to_fashion_mnist(preset.data.path):
                    continue  # generated or prepared later: open_split checks it then
                found = found if found is not None else 10
                if found != model.num_classes:
                    raise UserError(
                        f"{preset.data.path} has {found} classes in {split}/, and {proxy.checkpoint} classifies "
                        f"{model.num_classes} (proxy {name}): give the data the weights were trained on (--data)"
                    )


def require(preset, figure: str, names: list[str]) -> None:
    """A figure that reads proxies reads only proxies the preset trains."""
    for proxy in names:
        if proxy not in preset.proxies.models:
            raise UserError(f"{figure} reads proxy {proxy!r}, which the preset does not train")


def evaluated(ctx: Context, section: Section, name: str) -> dict:
    """One row of the summary for weights read as they are: their top-1 on the validation split (its seeded draw of
    `eval_images`, all by default) with the transform published with them, beside their published top-1."""
    checkpoint = section.models[name].checkpoint
    model = model_from_checkpoint(checkpoint).to(resolve_device(ctx.device)).eval()
    val = open_split(ctx.data, "val", model.img_size[0], pretrained_cfg=model.pretrained_cfg)
    val = fixed_subset(val, section.eval_images)
    loader = DataLoader(val, batch_size=64, num_workers=2, collate_fn=collate)
    accuracy = evaluate(model, loader, resolve_device(ctx.device), False, distributed=False)
    return {
        "proxy": name,
        "weights": checkpoint,
        "model": model.spec.name,
        "attention": model.spec.kwargs.get("attention", "full"),
        "params": count_params(model),
        "images": len(val),
        "top1": accuracy["top1"],
        "top5": accuracy["top5"],
        "published_top1": published_top1(checkpoint),
    }


def published_top1(checkpoint: str) -> float:
    """The top-1 on ImageNet-1k published with these weights (NaN for weights the table does not know)."""
    table = paper_table("released_top1").set_index("weights")["top1"]
    return float(table.get(checkpoint, float("nan")))


def trainings(ctx: Context, section: Section) -> dict[str, TrainConfig]:
    """Every run of every proxy, to the end of its schedule (for a launcher: analysis/launcher.py)."""
    return configs(section, ctx.data, ctx.runs)


def describe(name: str, config: TrainConfig, metrics: pd.DataFrame) -> dict:
    """One row of the summary: a run as far as it has trained."""
    dataset = open_split(config.data, "train", config.img_size)
    final = metrics.iloc[-1]
    pool = min(len(dataset), config.train_images or len(dataset))
    return {
        "proxy": name,
        "seed": config.seed,
        "model": config.model,
        "attention": config.model_kwargs.get("attention", "full"),
        "params": count_params(model_from_checkpoint(Path(config.out) / "checkpoint.pth")),
        "epochs": int(final["epoch"]),
        "train_images": pool,
        "images_seen": int(final["epoch"]) * (config.epoch_images or pool),
        "classes": len(dataset.classes),
        "top1": final["val_top1"],
        "top5": final["val_top5"],
        # the median epoch: an epoch slowed by something else on the machine (or a paused one) does not set it
        "train_img_s": metrics["train_img_s"].median(),
        "train_minutes": metrics["epoch_seconds"].sum() / 60,
    }


def run(ctx: Context, section: Section) -> list[Path]:
    """The stage: train every proxy (up to epoch ctx.budget: one budget), then write their accuracy and curves
    (out/proxies/summary.csv, curves.csv) as far as they have trained."""
    summary, curves, until = [], [], ctx.budget
    weights = [evaluated(ctx, section, name) for name in section.models if released(section, name)]
    for name, config in configs(section, ctx.data, ctx.runs).items():
        to = f"to epoch {until} of {config.epochs}" if until else f"{config.epochs} epochs"
        metrics = trained(config, f"training {name} ({config.model}, {to})", until)
        summary.append(describe(name, config, metrics))
        curves.append(pd.read_csv(Path(config.out) / "curve.csv").assign(proxy=name))
        curves.append(metrics[["epoch", "val_top1"]].assign(proxy=name))
    folder, written = ctx.out / FOLDER, []
    arguments = {"runs": str(ctx.runs), "proxies": dataclasses.asdict(section)}
    if summary:
        write_results(pd.DataFrame(summary), folder / "summary.csv", arguments)
        write_results(pd.concat(curves, ignore_index=True), folder / "curves.csv", arguments)
        written += with_sidecar(folder / "summary.csv") + with_sidecar(folder / "curves.csv")
    if weights:
        written += with_sidecar(write_results(pd.DataFrame(weights), folder / "released.csv", arguments))
    return written


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    return {
        "summary": read_tables(out, FOLDER, "summary.csv"),
        "curves": read_tables(out, FOLDER, "curves.csv"),
        "released": read_tables(out, FOLDER, "released.csv"),
    }


def released_lines(weights: pd.DataFrame) -> list[str]:
    """The weights read as they are: their top-1 here beside the published one (data and transform right?)."""
    cells = pd.DataFrame(
        {
            "proxy": weights["proxy"],
            "weights": weights["weights"],
            "model": weights["model"],
            "params": weights["params"].map("{:,}".format),
            "images": weights["images"].map("{:,}".format),
            "top-1 here": weights["top1"].map("{:.1f}%".format),
            "published top-1": weights["published_top1"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}%"),
            "difference, points": (weights["top1"] - weights["published_top1"]).map(
                lambda v: "-" if pd.isna(v) else f"{v:+.1f}"
            ),
        }
    )
    return [
        *markdown_table(cells),
        "",
        "The released weights, read as they are (nothing trained), evaluated on this run's validation data with the "
        "transform published with them: a top-1 within a point or so of the published one says the data and the "
        "transform are the paper's (ImageNet-1k val; published: DeiT-T and Swin-T from their papers, EfficientViT "
        "from its Table 2).",
    ]


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per trained proxy run: its accuracy, size and training budget."""
    return tables["summary"].drop(columns="source")


def recent_gains(found: pd.DataFrame) -> pd.Series:
    """Each run's top-1 gain over its last two epochs (runs with fewer than three epochs read are left out)."""
    gains = {}
    for proxy, group in found.sort_values("epoch").groupby("proxy"):
        earlier = group[group["epoch"] <= group["epoch"].max() - 2]
        if not earlier.empty:
            gains[proxy] = group["val_top1"].iloc[-1] - earlier["val_top1"].iloc[-1]
    return pd.Series(gains, dtype=float)


def state_at(found: pd.DataFrame, budget: float | None = None) -> pd.Series:
    """Each run's state where a finding reads it (at `budget` epochs, or at its last epoch): LEARNED at
    LEARNED_TOP1 or above; AT_PLATEAU below it but gaining under PLATEAU_GAIN over the two epochs before (the
    training's plateau rule: what this schedule teaches it, it has learned); STILL_LEARNING otherwise, and when
    fewer than three epochs were read."""
    if budget is not None and pd.notna(budget):
        found = found[found["epoch"] <= budget]
    top1 = found.sort_values("epoch").groupby("proxy")["val_top1"].last()
    gains = recent_gains(found).reindex(top1.index)
    states = pd.Series(STILL_LEARNING, index=top1.index, dtype=object)
    states[gains < PLATEAU_GAIN] = AT_PLATEAU  # a missing gain (too few epochs) compares False: still learning
    states[top1 >= LEARNED_TOP1] = LEARNED
    return states


def caveat(out: Path, runs: set[str], budget: float | None) -> str:
    """UNCONVERGED when a finding reads one of these proxy runs still learning (below LEARNED_TOP1 and not at its
    plateau) at `budget` epochs (its snapshot there, or its last epoch before), or at its last epoch for an unknown
    budget; "" otherwise, and for the untrained control (budget 0) or a folder without curves."""
    curves = tables(out)["curves"] if out is not None else None
    if curves is None or budget == 0:
        return ""
    found = scores(curves)
    states = state_at(found[found["proxy"].isin(runs)], budget)
    return UNCONVERGED if (states == STILL_LEARNING).any() else ""


def scale(out: Path | None, runs: set[str]) -> str:
    """What a finding read on these runs is about: PROXY_SCALE for trained proxies; "" for released weights only
    (the paper's own models: a finding not reproduced there is not reproduced, like for like)."""
    weights = tables(out)["released"] if out is not None else None
    return "" if weights is not None and runs and runs <= set(weights["proxy"]) else PROXY_SCALE


def subject(out: Path | None, name: str) -> str:
    """How a finding names what it was read on: "<name> proxies" (trained here), or "the released <name>" in a
    folder of released weights read as they are."""
    found = tables(out) if out is not None else {"released": None, "summary": None}
    return f"the released {name}" if found["released"] is not None and found["summary"] is None else f"{name} proxies"


def read_budgets(out: Path) -> list[int]:
    """The budgets the run read its proxies at (the summary's sidecar), or none for a folder without one."""
    sidecar = out / FOLDER / "summary.json"
    if not sidecar.exists():
        return []
    return json.loads(sidecar.read_text())["arguments"].get("proxies", {}).get("budgets", [])


def scores(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run and finished epoch: its held-out top-1, and the proxy it is a seed of."""
    found = curves.dropna(subset=["val_top1"])[["proxy", "epoch", "val_top1"]]
    return found.assign(model=found["proxy"].str.replace(r"_seed\d+$", "", regex=True))


def along_training(found: pd.DataFrame, budgets: list[int]) -> list[str]:
    """Each proxy's top-1 at every budget (and at the end, where a run ended elsewhere): the mean over its seeds,
    lowest and highest."""
    last = found.sort_values("epoch").groupby("proxy").tail(1)
    points = found[found["epoch"].isin(budgets)]
    if not set(last["epoch"]) <= set(budgets):
        points = pd.concat([points, last.assign(epoch=float("inf"))])
    cells = points.groupby(["model", "epoch"])["val_top1"].agg(
        lambda top1: f"{top1.mean():.1f} ({top1.min():.1f}-{top1.max():.1f})" if len(top1) > 1 else f"{top1.mean():.1f}"
    )
    table = cells.unstack("epoch")
    table.columns = [f"after {epoch:g} ep" if epoch < float("inf") else "at the end" for epoch in table.columns]
    return [
        "Top-1 along training, % (the mean of the seeds, lowest-highest):",
        "",
        *markdown_table(table.reset_index().rename(columns={"model": "proxy"}).fillna("-")),
    ]


def how_far_learned(summary: pd.DataFrame, found: pd.DataFrame) -> list[str]:
    """Whether the longest training reached a learned model: against a linear classifier and LEARNED_TOP1, whether
    the runs were still gaining at their end, and which runs diverged on the way."""
    runs = len(summary)
    learned = int((summary["top1"] >= LEARNED_TOP1).sum())
    below = summary[summary["top1"] < LINEAR_TOP1]
    named = ", ".join(f"{row.proxy} ({row.top1:.1f}%)" for row in below.itertuples())
    states = state_at(found)
    plateaued = ", ".join(states.index[states == AT_PLATEAU])
    lines = [
        f"At the end of their training {learned} of {runs} runs reach {LEARNED_TOP1:.0f}% top-1, the level at which "
        f"this project calls a Fashion-MNIST proxy learned; {len(below)} stay below a linear classifier (about "
        f"{LINEAR_TOP1:.0f}%)" + (f": {named}." if named else ".")
    ]
    gains = recent_gains(found)
    if not gains.empty:
        rising = int((gains >= PLATEAU_GAIN).sum())
        lines.append(
            f"Over their last two epochs the runs gained {gains.median():+.1f} points of top-1 (median; {rising} of "
            f"{len(gains)} at least {PLATEAU_GAIN} points, the plateau rule's threshold). Below {LEARNED_TOP1:.0f}%: "
            f"{(states == AT_PLATEAU).sum()} at their plateau"
            + (f" ({plateaued})" if plateaued else "")
            + f", {(states == STILL_LEARNING).sum()} still learning (findings read on these say "
            f'"{UNCONVERGED}").'
        )
    for proxy, group in found.sort_values("epoch").groupby("proxy"):
        drops = group["val_top1"].diff()
        for at in drops.index[drops < -COLLAPSE_DROP]:
            before = group["val_top1"].shift(1)[at]
            lines.append(
                f"{proxy} lost {before - group['val_top1'][at]:.0f} points of top-1 in epoch {group['epoch'][at]:g} "
                f"({before:.1f}% to {group['val_top1'][at]:.1f}%: its training diverged and recovered) and ended at "
                f"{group['val_top1'].iloc[-1]:.1f}%."
            )
    return lines


def headline(out: Path) -> list[str]:
    """How far the proxies learned (or how the released weights score here), a sentence or two for the top."""
    found = tables(out)
    lines = []
    if found["released"] is not None:
        lines.append(
            "Released weights, top-1 here (published): "
            + ", ".join(f"{r.proxy} {r.top1:.1f}% ({r.published_top1:.1f}%)" for r in found["released"].itertuples())
            + "."
        )
    if found["summary"] is None or found["curves"] is None:
        return lines
    return lines + how_far_learned(summarize(found), scores(found["curves"]))[:2]


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["summary"] is None and found["released"] is None:
        return ["Not run."]
    weights = released_lines(found["released"]) if found["released"] is not None else []
    if found["summary"] is None:
        return weights
    summary = summarize(found)
    cells = pd.DataFrame(
        {
            "proxy": summary["proxy"],
            "model": summary["model"],
            "heads": summary["attention"],
            "params": summary["params"].map("{:,}".format),
            "epochs": summary["epochs"],
            "training images": summary["train_images"].map("{:,}".format),
            **({"images seen": summary["images_seen"].map("{:,}".format)} if "images_seen" in summary else {}),
            "top-1": summary["top1"].map("{:.1f}%".format),
            "top-5": summary["top5"].map("{:.1f}%".format),
            **(
                {"state": summary["proxy"].map(state_at(scores(found["curves"])))}
                if found["curves"] is not None
                else {}
            ),
            "train img/s (median epoch)": summary["train_img_s"].map("{:.0f}".format),
            "minutes": summary["train_minutes"].map("{:.1f}".format),
        }
    )
    lines = (
        weights
        + ([""] if weights else [])
        + markdown_table(cells)
        + [
            "",
            "Every analysis below reads these trained proxies (top-1 on the held-out split; the figure shows "
            "each one's training loss, so how far from its plateau it stopped). Training images: the pool drawn from; "
            "images seen: the epochs times the images per epoch; minutes: the epochs' wall time, including whatever "
            "else the machine ran meanwhile.",
        ]
    )
    if found["curves"] is not None:
        learned = scores(found["curves"])
        lines += ["", *along_training(learned, read_budgets(out)), "", *how_far_learned(summary, learned)]
    return lines


FIGURE = Figure(
    STAGE,
    Section,
    "the proxies Figs. 4 and 5 analyse",
    run,
    along_training=True,
    check=check,
    title=TITLE,
    report=report,
    folder=FOLDER,
    notebook="proxies_training",
    trainings=trainings,
)
