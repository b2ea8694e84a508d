"""Every analysis of the paper, end to end, as one resumable pipeline: `python analysis/reproduce.py --preset demo`.

Stages: make (or find) the data, train the proxies, Fig. 2 (memory-bound profile), Fig. 3 (MHSA sweep), Fig. 4
(head similarity), Fig. 5 (Taylor pruning and the variant designer), the notebooks (headless, writing
results/figures/*.png), and results/REPORT.md with our numbers beside the paper's. Everything a preset needs is
in its YAML (experiments/reproduce/<preset>.yaml): the CPU default, a quick first look, and the paper's scale.
Like the presets' own paths, `experiments/` and `notebooks/` are read from the repository root, where it runs.

Every stage skips work already done (each tool resumes by itself: trainings from their checkpoints, the sweep
and the profile from their CSVs), so an interrupted run continues where it stopped. The trainings also shard:
`--subnets-only` once, then `--shard i/n` trains every n-th proxy run and Fig. 3 point from i, and the run
without --shard then analyses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
import torch
import yaml
from nbclient import NotebookClient

from analysis import design_variant, head_similarity, memory_profile, mhsa_sweep, taylor_pruning
from analysis.report import write_report
from efficientvit.bench import interleaved_throughput
from efficientvit.checkpoint import model_from_checkpoint
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data import fashion_mnist
from efficientvit.data.sources import open_split
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError, exit_status
from efficientvit.files import atomic_write_text
from efficientvit.flops import count_params
from efficientvit.models import ModelSpec, create_model
from efficientvit.results import add_stage_time, device_description, record_outputs, write_results
from efficientvit.subnet import find_subnet, save_subnet
from efficientvit.train import make_config, train

PRESETS = Path("experiments/reproduce")
NOTEBOOKS = Path("notebooks")
FIGURES = ("fig2", "fig3", "fig4", "fig5")
NOTEBOOK_INPUTS = {
    "proxies": "proxies",
    "fig2": "memory_profile",
    "fig3": "mhsa_sweep",
    "fig4": "head_similarity",
    "fig5": "taylor_pruning",
}  # notebook name prefix: the results folder it reads


def load_preset(name: str) -> dict:
    path = Path(name) if name.endswith(".yaml") else PRESETS / f"{name}.yaml"
    if not path.is_file() and not PRESETS.is_dir():
        raise UserError(f"no {PRESETS}/ here: run from the repository root (the presets name files relative to it)")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}: choose one of {known}, or give a YAML path")
    return yaml.safe_load(path.read_text())


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

    def end(self, index: int, started: float) -> None:
        self.done_expected += self.stages[index][1] * 60
        self.done_actual += time.perf_counter() - started


def make_data(preset: dict) -> str:
    """The preset's data: Fashion-MNIST prepared, the shapes generated, or an ImageFolder root checked."""
    data = preset["data"]
    path = str(data["path"])
    if fashion_mnist.refers_to_fashion_mnist(path):
        return path if path == fashion_mnist.NAME else str(fashion_mnist.prepare(path, download=False))
    if (Path(path) / "train").is_dir() and (Path(path) / "val").is_dir():
        return path
    if "synthetic" not in data:
        raise UserError(
            f"data directory {path} does not exist; point `data.path` (or --data) at fashion-mnist or "
            "an ImageFolder root with train/ and val/"
        )
    return str(make_synthetic(path, **data["synthetic"]))


def proxy_runs(preset: dict, proxy: str) -> list[str]:
    """The trained runs of one proxy: `<proxy>` alone, or `<proxy>_seed<k>` for each of the preset's `seeds`
    (a proxy's own `seeds` override the preset's)."""
    seeds = preset["proxies"][proxy].get("seeds", preset.get("seeds"))
    return [proxy] if seeds is None else [f"{proxy}_seed{seed}" for seed in seeds]


def proxy_configs(preset: dict, data: str) -> dict:
    """The training config of every run of every proxy, with the preset's overrides (and the run's seed)."""
    configs = {}
    for name, spec in preset.get("proxies", {}).items():
        values = yaml.safe_load(Path(spec["config"]).read_text())
        seeds = spec.get("seeds", preset.get("seeds"))
        for run, seed in zip(proxy_runs(preset, name), [None] if seeds is None else seeds):
            configs[run] = make_config(
                {
                    **values,
                    **preset.get("train_overrides", {}),
                    **spec.get("set", {}),
                    **({} if seed is None else {"seed": seed}),
                    "data": str(data),
                    "out": str(Path(preset["runs"]) / run),
                }
            )
    return configs


def check_preset(preset: dict) -> None:
    """Fail in a second, not after twenty minutes: every config the preset names loads, every model it trains
    builds and runs a batch at its image size, and the figures name proxies that exist."""
    for key in ("runs", "data"):
        if key not in preset:
            raise UserError(f"the preset has no `{key}`")
    for config in proxy_configs(preset, preset["data"]["path"]).values():
        model = create_model(config.model, num_classes=10, img_size=config.img_size, **config.model_kwargs)
        model.eval()(torch.zeros(1, 3, config.img_size, config.img_size))
    for figure in ("fig4", "fig5"):
        spec = preset.get(figure, {})
        for proxy in spec.get("proxies", [spec["proxy"]] if "proxy" in spec else []):
            if proxy not in preset.get("proxies", {}):
                raise UserError(f"{figure} reads proxy {proxy!r}, which the preset does not train")
    if "fig3" in preset:
        sweep = mhsa_sweep.read_sweep_config(preset["fig3"]["config"])
        for family in preset["fig3"]["families"]:
            if family not in sweep["families"]:
                raise UserError(f"fig3 sweeps {family!r}, which {preset['fig3']['config']} does not define")
            create_model(family, **sweep["families"][family])


def train_proxies(preset: dict, data: str, out: Path) -> dict[str, Path]:
    """Train (or finish training) every proxy of the preset; returns their checkpoints. Their accuracy and
    training curves go to out/proxies/ (summary.csv, curves.csv), so the results folder stands on its own."""
    checkpoints, summary, curves = {}, [], []
    for name, config in proxy_configs(preset, data).items():
        checkpoint = Path(config.out) / "checkpoint.pth"
        metrics = trained(config, f"training {name} ({config.model}, {config.epochs} epochs)")
        checkpoints[name] = checkpoint
        curve = pd.read_csv(Path(config.out) / "curve.csv")
        dataset = open_split(config.data, "train", config.img_size)
        final = metrics.iloc[-1]
        summary.append(
            {
                "proxy": name,
                "seed": config.seed,
                "model": config.model,
                "attention": config.model_kwargs.get("attention", "full"),
                "params": count_params(model_from_checkpoint(checkpoint)),
                "epochs": int(final["epoch"]),
                "train_images": min(len(dataset), config.train_images or len(dataset)),
                "classes": len(dataset.classes),
                "top1": final["val_top1"],
                "top5": final["val_top5"],
                "train_img_s": final["train_img_s"],
                "train_minutes": metrics["epoch_seconds"].sum() / 60,
            }
        )
        curves.append(curve.assign(proxy=name))
        curves.append(metrics[["epoch", "val_top1"]].assign(proxy=name))
    if summary:
        arguments = {
            "runs": preset["runs"],
            "proxies": preset["proxies"],
            "train_overrides": preset.get("train_overrides"),
        }
        write_results(pd.DataFrame(summary), out / "proxies" / "summary.csv", arguments)
        write_results(pd.concat(curves, ignore_index=True), out / "proxies" / "curves.csv", arguments)
    return checkpoints


def trained(config, what: str) -> pd.DataFrame:
    """The per-epoch metrics of a training run, training it first (or finishing it) unless it has all its epochs:
    every training of the pipeline goes through here, so a rerun redoes none."""
    metrics = Path(config.out) / "metrics.csv"
    frame = pd.read_csv(metrics) if metrics.exists() else None
    if frame is None or frame.empty or int(frame["epoch"].iloc[-1]) < config.epochs:
        print(f"  {what}", flush=True)
        train(config, resume=True)
    return pd.read_csv(metrics)


def announce(config) -> None:
    """One line per tool call: which analysis runs with which configuration."""
    changed = {k: v for k, v in config_arguments(config).items() if v not in (None, [], False)}
    print(f"  {type(config).__name__}({', '.join(f'{k}={v}' for k, v in changed.items())})", flush=True)


def with_sidecar(csv: Path) -> list[Path]:
    return [csv, csv.with_suffix(".json")]


def fig2(preset: dict, out: Path) -> list[Path]:
    """Profile the full-size models and the throughput-matched subnets of every family, speed-up and MHSA
    proportion the preset lists (`subnet_families`, `subnet_speedups`, `subnet_proportions`)."""
    spec = preset["fig2"]
    configs, subnets = [], []
    folder = out / "memory_profile" / "subnets"
    for family in spec.get("subnet_families", []):
        for speedup in spec.get("subnet_speedups", []):
            for proportion in spec.get("subnet_proportions", []):
                result = find_subnet(
                    family, speedup, proportion, base={"img_size": spec["img_size"]}, **spec.get("subnet", {})
                )
                name = f"{family}_{speedup}x_p{proportion}"
                configs.append(str(save_subnet(result, folder / f"{name}.yaml")))
                subnets.append({"name": name, **{k: v for k, v in result.items() if k not in ("model", "kwargs")}})
    if subnets:  # whether each subnet met its speed-up: the report's trend verdict reads only those that did
        write_results(pd.DataFrame(subnets), folder / "subnets.csv", {"fig2": spec})
    config = memory_profile.ProfileConfig(
        models=spec["models"],
        subnet_config=configs,
        device=preset.get("device", "cpu"),
        batch=spec["batch"],
        img_size=spec["img_size"],
        iters=spec.get("iters", 3),
        out=out / "memory_profile" / "profile.csv",
    )
    announce(config)
    memory_profile.run(config)
    tables = with_sidecar(folder / "subnets.csv") if subnets else []
    return with_sidecar(config.out) + [Path(c) for c in configs] + tables


def fig3(preset: dict, out: Path, data: str, shard: str = "0/1", subnets_only: bool = False) -> list[Path]:
    """The MHSA sweep (or this shard's part of it, whose subnets must be in the cache already; or only the subnet
    search, with `subnets_only`)."""
    spec = preset["fig3"]
    sweep = mhsa_sweep.read_sweep_config(spec["config"])
    sweep["train"] = {**sweep["train"], **spec.get("train_overrides", {}), "data": str(data)}
    sweep["runs"] = str(Path(preset["runs"]) / "mhsa_sweep")
    if shard != "0/1":
        sweep["subnet"] = {**sweep["subnet"], "search": False}
    record = atomic_write_text(out / "mhsa_sweep" / "sweep_config.yaml", yaml.safe_dump(sweep, sort_keys=False))
    config = mhsa_sweep.SweepConfig(
        families=spec["families"],
        speedups=spec["speedups"],
        proportions=spec["proportions"],
        seeds=spec.get("seeds", [0]),
        config=str(record),
        shard=shard,
        device=preset.get("device", "cpu"),
        out=out / "mhsa_sweep" / "sweep.csv",
        subnets_only=subnets_only,
    )
    announce(config)
    mhsa_sweep.run(config, sweep)
    return with_sidecar(config.out) + [record]


def fig4(preset: dict, out: Path, data: str, checkpoints: dict[str, Path]) -> list[Path]:
    spec = preset["fig4"]
    written = []
    for proxy_run in [run for proxy in spec["proxies"] for run in proxy_runs(preset, proxy)]:
        for feature in spec.get("features", ["attention"]):
            run = f"{proxy_run}_{feature}"
            written += [
                path
                for table in ("summary", "pairwise")
                for path in with_sidecar(out / "head_similarity" / f"{run}_{table}.csv")
            ]
            if (out / "head_similarity" / f"{run}_summary.csv").exists():
                continue
            config = head_similarity.SimilarityConfig(
                data=str(data),
                checkpoint=str(checkpoints[proxy_run]),
                images=spec["images"],
                feature=feature,
                device=preset.get("device", "cpu"),
                run=run,
                out_dir=out / "head_similarity",
            )
            announce(config)
            head_similarity.run(config)
    return written


def fig5(preset: dict, out: Path, data: str, checkpoints: dict[str, Path]) -> list[Path]:
    """Prune every run of the named proxies (`proxy`, or a list in `proxies`), fine-tune each pruned model when
    the preset asks (`finetune`: training-config overrides, e.g. {train_images: 10000}) and tabulate top-1 before,
    after pruning and after fine-tuning in out/pruned/summary.csv; the variant is designed from the first run."""
    spec = preset["fig5"]
    proxies = spec.get("proxies", [spec["proxy"]] if "proxy" in spec else [])
    configs = proxy_configs(preset, data)
    tables, rows = [], []
    for proxy_run in [run for proxy in proxies for run in proxy_runs(preset, proxy)]:
        run = f"{proxy_run}_ratio_{spec['ratio']}"
        tables.append(out / "taylor_pruning" / f"{run}.csv")
        pruned = Path(preset["runs"]) / "pruned" / f"{run}.pth"
        if not tables[-1].exists():
            config = taylor_pruning.PruneConfig(
                data=str(data),
                checkpoint=str(checkpoints[proxy_run]),
                ratio=spec["ratio"],
                batches=spec.get("batches", 10),
                eval_images=spec.get("eval_images", 10000),
                device=preset.get("device", "cpu"),
                run=run,
                out_dir=out / "taylor_pruning",
                save=pruned,
            )
            announce(config)
            taylor_pruning.run(config)
        stats = json.loads(tables[-1].with_suffix(".json").read_text())["pruning"]
        row = {"proxy": proxy_run, "model": configs[proxy_run].model, "seed": configs[proxy_run].seed, **stats}
        if spec.get("finetune") is not None:
            finetune = dataclasses.replace(
                configs[proxy_run], **spec["finetune"], init=str(pruned), out=str(pruned.with_suffix("")) + "_finetuned"
            )
            row["top1_finetuned"] = trained(finetune, f"fine-tuning {run}")["val_top1"].iloc[-1]
        rows.append(row)
    summary = out / "pruned" / "summary.csv"
    write_results(pd.DataFrame(rows), summary, {"fig5": spec})
    variant = out / "variants" / f"{tables[0].stem}_variant.yaml"
    if not variant.exists():
        config = design_variant.VariantConfig(
            pruning=str(tables[0]),
            out_dir=out / "variants",
            img_size=spec.get("variant_img_size", 224),
            patch_size=spec.get("variant_patch_size", 16),
            seconds=spec.get("variant_seconds", 0.3),
        )
        announce(config)
        design_variant.run(config)
    written = [path for table in tables for path in with_sidecar(table)] + with_sidecar(summary) + [variant]
    if spec.get("variant_train") is not None:
        written += pareto(preset, out, data, ModelSpec.from_yaml(variant), spec)
    return written


def pareto(preset: dict, out: Path, data: str, variant: ModelSpec, spec: dict) -> list[Path]:
    """The loop the paper closed by hand: the designed variant and EfficientViT-M0 (scaled to the data) trained
    with the same recipe and budget (`variant_config` + `variant_train`), once per seed of `variant_seeds` (the
    recipe's own seed by default), then timed in turns with the proxies and the best throughput-matched Fig. 3
    subnets on this CPU. out/pareto/pareto.csv has one row per model and training seed (top-1, img/s) and whether
    the model's mean is on the accuracy-throughput Pareto front."""
    values = yaml.safe_load(Path(spec["variant_config"]).read_text())
    contenders = {}  # name -> (kind, spec, {seed: top-1})
    for name, model_spec in (
        ("designed_variant", variant),
        ("efficientvit_m0", ModelSpec(values["model"], values["model_kwargs"])),
    ):
        runs = {}
        for seed in spec.get("variant_seeds", [values.get("seed", 0)]):
            config = make_config(
                {
                    **values,
                    **spec["variant_train"],
                    "model": model_spec.name,
                    "model_kwargs": model_spec.kwargs,
                    "seed": seed,
                    "data": str(data),
                    "out": str(Path(preset["runs"]) / "pareto" / f"{name}_seed{seed}"),
                }
            )
            runs[seed] = trained(config, f"training {name} (seed {seed}) for the accuracy-throughput plot")[
                "val_top1"
            ].iloc[-1]
        contenders[name] = ("variant" if name == "designed_variant" else "efficientvit", model_spec, runs)
    summary, configs = pd.read_csv(out / "proxies" / "summary.csv"), proxy_configs(preset, data)
    for proxy in preset["proxies"]:
        config = configs[proxy_runs(preset, proxy)[0]]
        if config.model_kwargs.get("attention", "full") == "full":
            trainings = summary[summary["proxy"].isin(proxy_runs(preset, proxy))]
            top1 = dict(zip(trainings["seed"], trainings["top1"]))
            contenders[proxy] = ("proxy", ModelSpec(config.model, config.model_kwargs), top1)
    sweep = out / "mhsa_sweep" / "sweep.csv"
    if sweep.exists():
        points = pd.read_csv(sweep)
        points = points[points["speedup_met"].astype(bool)]
        for family, group in points.groupby("family"):
            best = group.groupby("mhsa_proportion_actual")["top1"].mean().idxmax()
            chosen = group[group["mhsa_proportion_actual"] == best]
            contenders[f"{family}_subnet_p{best:.2f}"] = (
                "best Fig. 3 subnet",
                model_from_checkpoint(chosen["checkpoint"].iloc[0]).spec,
                dict(zip(chosen.seed, chosen.top1)),
            )
    img_size = values["img_size"]
    models = [model_spec.build(img_size=img_size, num_classes=10).eval() for _, model_spec, _ in contenders.values()]
    timings = interleaved_throughput(
        models, rounds=spec.get("pareto_rounds", 3), seconds=spec.get("pareto_seconds", 0.5), batch_size=64, warmup=3
    )
    means = pd.DataFrame(
        [
            {"name": name, "top1": statistics.mean(runs.values()), "img_s": statistics.median(timing)}
            for (name, (_, _, runs)), timing in zip(contenders.items(), timings)
        ]
    )
    front = {
        r.name
        for r in means.itertuples()
        if not (
            (means["top1"] >= r.top1)
            & (means["img_s"] >= r.img_s)
            & ((means["top1"] > r.top1) | (means["img_s"] > r.img_s))
        ).any()
    }
    table = pd.DataFrame(
        [
            {
                "name": name,
                "kind": kind,
                "seed": seed,
                "top1": top1,
                "img_s": speed,
                "params": count_params(model),
                "pareto": name in front,
            }
            for (name, (kind, _, runs)), speed, model in zip(contenders.items(), means["img_s"], models)
            for seed, top1 in runs.items()
        ]
    )
    path = out / "pareto" / "pareto.csv"
    write_results(
        table,
        path,
        {
            "variant_config": spec["variant_config"],
            "variant_train": spec["variant_train"],
            "img_size": img_size,
            "batch": 64,
            "threads": torch.get_num_threads(),
        },
    )
    return with_sidecar(path)


def execute_notebook(path: Path, results: Path) -> None:
    """Run a notebook headless from its folder against `results`, injected (as papermill does) after the cell
    tagged `parameters`; each notebook writes its figures to results/figures."""
    notebook = nbformat.read(path, as_version=4)
    where = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(where + 1, nbformat.v4.new_code_cell(f"RESULTS = {str(Path(results).resolve())!r}"))
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()


def notebooks(out: Path) -> None:
    """Every notebook whose results folder the run wrote."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        analysis = NOTEBOOK_INPUTS[path.stem.split("_")[0]]
        if not any((out / analysis).glob("*.csv")):
            continue
        print(f"  {path.name}", flush=True)
        execute_notebook(path, out)


def train_shard(preset: dict, out: Path, only: list[str], index: int, count: int, device: str) -> None:
    """One shard's share of the trainings, for several processes or machines sharing the runs folder: every
    count-th proxy run and Fig. 3 point from `index`. The Fig. 3 subnets come from the cache (`--subnets-only`
    searched them once); the shard's results go under the runs folder and only its time into out's manifest, and
    the run without --shard afterwards finds everything trained and does every analysis."""
    data = make_data(preset)
    if {"fig4", "fig5"} & set(only):
        started = time.perf_counter()
        for name, config in list(proxy_configs(preset, data).items())[index::count]:
            trained(config, f"training {name} ({config.model}, {config.epochs} epochs), shard {index}/{count}")
        add_stage_time(out, f"proxies, shard {index}/{count}", time.perf_counter() - started, device)
    if "fig3" in only and "fig3" in preset:
        started = time.perf_counter()
        fig3(preset, Path(preset["runs"]) / f"shard_{index}_of_{count}", data, shard=f"{index}/{count}")
        add_stage_time(out, f"fig3, shard {index}/{count}", time.perf_counter() - started, device)
    print(f"shard {index}/{count} trained; when every shard is done, run again without --shard to analyse")


def reproduce(
    preset_name: str,
    out: Path,
    only: list[str],
    data_override: str | None = None,
    fresh: bool = False,
    shard: str = "0/1",
    subnets_only: bool = False,
) -> Path | None:
    preset = load_preset(preset_name)
    if data_override:
        preset["data"] = {"path": data_override}
    check_preset(preset)
    index, count = mhsa_sweep.parse_shard(shard)
    if fresh and count > 1:
        raise UserError("--fresh would delete the runs every shard shares: start over without --shard, then shard")
    if fresh:
        for folder in (out, Path(preset["runs"])):
            shutil.rmtree(folder, ignore_errors=True)
    device = device_description(preset.get("device", "cpu"))
    if subnets_only:
        if "fig3" not in preset:
            raise UserError(f"--subnets-only searches the Fig. 3 subnets, and preset {preset_name} has no fig3")
        fig3(preset, Path(preset["runs"]) / "subnets", make_data(preset), subnets_only=True)
        return None
    if count > 1:
        return train_shard(preset, out, only, index, count, device)
    out.mkdir(parents=True, exist_ok=True)
    minutes = preset.get("minutes", {})
    stages = [("data", minutes.get("data", 1)), ("proxies", minutes.get("proxies", 1))]
    stages += [(f, minutes.get(f, 1)) for f in FIGURES if f in only]
    stages += [("notebooks and report", minutes.get("report", 1))]
    progress = Progress(stages)
    data = checkpoints = None
    for index, (stage, _) in enumerate(stages):
        started = progress.begin(index)
        timed = stage in FIGURES or (stage == "proxies" and bool({"fig4", "fig5"} & set(only)))
        try:
            if stage == "data":
                data = make_data(preset)
            elif stage == "proxies":
                checkpoints = train_proxies(preset, data, out) if {"fig4", "fig5"} & set(only) else {}
                if checkpoints:
                    proxies = out / "proxies"
                    record_outputs(
                        out, stage, [*with_sidecar(proxies / "summary.csv"), *with_sidecar(proxies / "curves.csv")]
                    )
            elif stage == "fig2":
                record_outputs(out, stage, fig2(preset, out))
            elif stage == "fig3":
                record_outputs(out, stage, fig3(preset, out, data))
            elif stage == "fig4":
                record_outputs(out, stage, fig4(preset, out, data, checkpoints))
            elif stage == "fig5":
                record_outputs(out, stage, fig5(preset, out, data, checkpoints))
            else:
                notebooks(out)
                report = write_report(out, preset_name, data)
        finally:  # an interrupted stage's time counts too: the resumed run adds its own
            if timed:
                add_stage_time(out, stage, time.perf_counter() - started, device)
        progress.end(index, started)
    print(f"done in {(time.perf_counter() - progress.start) / 60:.1f} min: {report} and {out / 'figures'}")
    return report


DESCRIPTION = (
    "Make the data, train the proxies, run Figs. 2-5 and the variant designer, execute the notebooks (figures in "
    "<out>/figures) and write <out>/REPORT.md. Run from the repository root. Interrupted, it continues where it "
    "stopped when run again (finished work is always kept)."
)


@dataclass
class ReproduceConfig:
    preset: str = knob("demo", "demo (~28 min on 2 cores), quick (smaller), paper (ImageNet, GPUs), or a preset YAML")
    out: Path | None = knob(None, "results folder (default results/<preset>: never the committed results/)")
    only: str = knob(",".join(FIGURES), "figures to run, e.g. fig2,fig4")
    data: str | None = knob(None, "data instead of the preset's: fashion-mnist or an ImageFolder root (e.g. ImageNet)")
    fresh: bool = knob(False, "delete the preset's results and runs, start over")
    subnets_only: bool = knob(
        False,
        "only search (and cache) the Fig. 3 subnets, on the machine that times them: do this once before --shard",
    )
    shard: str = knob(
        "0/1",
        "train only every n-th proxy run and Fig. 3 point from i (one process or machine per shard, sharing the "
        "runs folder and the subnet cache, $XDG_CACHE_HOME); afterwards run without --shard to analyse",
        metavar="i/n",
    )


def run(config: ReproduceConfig) -> Path | None:
    only = [f.strip() for f in config.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        raise UserError(f"--only takes {', '.join(FIGURES)}; unknown: {', '.join(unknown)}")
    out = config.out or Path("results") / Path(config.preset).name.removesuffix(".yaml")
    return reproduce(config.preset, out, only, config.data, config.fresh, config.shard, config.subnets_only)


def parse_args(argv: list[str] | None = None) -> ReproduceConfig:
    return parse_config(ReproduceConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("reproduce", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
