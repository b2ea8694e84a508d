"""Figure 5: which channels Taylor structured pruning keeps, and the variant designed from them.

Stage: `analysis/taylor_pruning.py` (per-head ranking, iterative by default) on every run of the proxies the preset
names, at each training budget (the proxies' snapshots); at the longest budget each pruned model is fine-tuned when
the preset asks, and `analysis/design_variant.py` reads the first run's pruning into an EfficientViT configuration.
out/pruned/summary.csv has one row per run and budget: which table, top-1 before, after pruning and after
fine-tuning. The report tests the paper's "Q/K are cut more than FFN relative to their width" (its main reading:
Swin-T keeps 0.31 of Q/K and 2.70/4 of FFN, -36 points), "V keeps more than Q/K" (+60 points), both paired within
each run, and "pruning cuts most in the last blocks", per family, at every budget.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import design_variant, pruning_controls, pruning_oracle, taylor_pruning
from analysis.figures import proxies
from analysis.pipeline import (
    Context,
    Figure,
    announce,
    at_longest,
    budget_label,
    family,
    listed_outputs,
    read_tables,
    settings_of,
    tool_config,
    trained,
    with_sidecar,
)
from analysis.published import paper_table
from analysis.verdicts import (
    PROXY_SCALE,
    REPRODUCED,
    Finding,
    Verdict,
    as_verdict,
    compare,
    movement,
    trend_over_depth,
)
from efficientvit.config import knob
from efficientvit.errors import UserError
from efficientvit.results import markdown_table, write_results
from efficientvit.train_config import TrainConfig, check_overrides, recipe

STAGE = "fig5"
TITLE = "Figure 5: Taylor structured pruning"
BUDGET_FIGURE = "fig5_budget.png"  # each finding against the training budget
ORACLE_FIGURE = "fig5_oracle.png"  # each criterion's rank correlation with the oracle
FOLDER = "taylor_pruning"
ORACLE_FOLDER = "pruning_oracle"
CONTROLS_FOLDER = "pruning_controls"
OWNED = ("data", "model", "checkpoint", "device", "run", "out_dir", "save", "finetune_config")
KINDS = ("qk", "v", "ffn")
PruneSettings = settings_of(taylor_pruning.PruneConfig, OWNED)
VariantSettings = settings_of(design_variant.VariantConfig, owned=("pruning", "out_dir", "name"))
# the checks read the model the stage prunes, at the pruning's budget
CHECK_OWNED = ("data", "checkpoint", "model", "ratio", "device", "run", "out_dir")
OracleSettings = settings_of(pruning_oracle.OracleConfig, CHECK_OWNED)
ControlsSettings = settings_of(pruning_controls.ControlsConfig, CHECK_OWNED)


@dataclass
class Finetune:
    lr_scale: float = knob(
        0.1,
        "the proxy's learning rate times this, without warm-up: a pruned model starts trained, and at its training's "
        "peak rate a fine-tune knocks it back first (the 10-epoch reference run's fine-tunes at that rate all ended "
        "below where pruning left them)",
    )
    train: dict = knob({}, "training-config keys on top of the proxy's recipe, e.g. {epochs: 2, epoch_images: 15000}")

    def __post_init__(self):
        self.train = check_overrides(self.train, "fig5: finetune: train")


@dataclass
class Section:
    proxies: list[str] = knob(help="the proxies whose runs are pruned")
    pruning: PruneSettings = knob(PruneSettings(), "analysis/taylor_pruning.py's settings: ratio, batches, ...")
    finetune: Finetune | None = knob(None, "fine-tune every pruned model at the longest budget (null: not)")
    variant: VariantSettings = knob(VariantSettings(), "analysis/design_variant.py's settings: img_size, patch_size")
    oracle: OracleSettings | None = knob(
        None, "check every criterion against the loss change of a removal (analysis/pruning_oracle.py; null: not)"
    )
    controls: ControlsSettings | None = knob(
        None, "the one-shot controls: depth, per-FLOP, per-head (analysis/pruning_controls.py; null: not)"
    )
    checks_at: list[int] | None = knob(None, "the budgets the oracle and the controls run at (null: every budget)")


def check(preset) -> None:
    """The proxies pruned are trained and have full heads; the budget is one; each fine-tune recipe makes a config."""
    section = preset.fig5
    proxies.require(preset, STAGE, section.proxies)
    taylor_pruning.Budget.of(section.pruning)
    configs = proxies.configs(preset.proxies, "unused", preset.runs)
    for proxy in section.proxies:
        if proxies.released(preset.proxies, proxy):
            continue  # full heads or EfficientViT's cascade, both pruned as they are; nothing to fine-tune
        config = configs[proxies.run_names(preset.proxies, proxy)[0]]
        if config.model_kwargs.get("attention", "full") != "full":
            raise UserError(
                f"fig5 prunes proxy {proxy!r}, whose heads are not full: Taylor pruning ranks Q/K/V channels"
            )
        if section.finetune is not None:
            finetune_config(config, section.finetune, Path("unused.pth"))


def run_name(section: Section, proxy_run: str, budget: int | None = None) -> str:
    at = "" if budget is None else f"_e{budget}"
    return f"{proxy_run}{at}_{taylor_pruning.Budget.of(section.pruning).label}"


def finetune_config(config: TrainConfig, finetune: Finetune, pruned: Path) -> TrainConfig:
    """The fine-tune of a pruned model: its proxy's recipe at `lr_scale` of the rate, no warm-up, the section's keys,
    starting from the pruned checkpoint."""
    start = {"lr": config.lr * finetune.lr_scale, "warmup_epochs": 0}
    fixed = {"init": str(pruned), "out": str(pruned.with_suffix("")) + "_finetuned", "snapshots": [], "plateau": None}
    return recipe(dataclasses.asdict(config), start, finetune.train, fixed)


def prune(ctx: Context, section: Section, name: str, checkpoint: Path) -> dict:
    """Prune one proxy run's snapshot (unless its table exists); returns its pruning statistics."""
    table = ctx.out / FOLDER / f"{name}.csv"
    if table.exists():  # resume: the statistics of a finished pruning are in its sidecar
        return json.loads(table.with_suffix(".json").read_text())["pruning"]
    config = tool_config(
        taylor_pruning.PruneConfig,
        section.pruning,
        data=str(ctx.data),
        checkpoint=str(checkpoint),
        device=ctx.device,
        run=name,
        out_dir=ctx.out / FOLDER,
        save=ctx.runs / "pruned" / f"{name}.pth",
    )
    announce(config)
    return taylor_pruning.run(config).stats


def check_criterion(ctx: Context, section: Section, name: str, checkpoint: Path) -> list[Path]:
    """The oracle and the controls on one proxy run's snapshot, as the section asks (each kept when its table
    exists); the tables written."""
    budget = taylor_pruning.Budget.of(section.pruning)
    ratio = {"ratio": budget.amount} if budget.kind == "ratio" else {}
    owned = dict(data=str(ctx.data), checkpoint=str(checkpoint), device=ctx.device, run=name, **ratio)
    written = []
    if section.oracle is not None:
        paths = [ctx.out / ORACLE_FOLDER / f"{name}{part}.csv" for part in ("", "_units", "_cuts")]
        if not paths[0].exists():
            config = tool_config(pruning_oracle.OracleConfig, section.oracle, out_dir=ctx.out / ORACLE_FOLDER, **owned)
            announce(config)
            pruning_oracle.run(config)
        written += [p for path in paths for p in with_sidecar(path)]
    if section.controls is not None:
        path = ctx.out / CONTROLS_FOLDER / f"{name}.csv"
        if not path.exists():
            config = tool_config(
                pruning_controls.ControlsConfig, section.controls, out_dir=ctx.out / CONTROLS_FOLDER, **owned
            )
            announce(config)
            pruning_controls.run(config)
        written += with_sidecar(path)
    return written


def run(ctx: Context, section: Section) -> list[Path]:
    """The stage at one budget (ctx.budget): prune every run (and, at the longest budget, fine-tune it and design
    the variant from the first); out/pruned/summary.csv gains this budget's rows."""
    trained_proxies, budget = ctx.preset.proxies, ctx.budget
    configs = proxies.configs(trained_proxies, ctx.data, ctx.runs)
    checkpoints = proxies.checkpoints(trained_proxies, ctx.runs, budget)
    runs = [run for proxy in section.proxies for run in proxies.run_names(trained_proxies, proxy)]
    rows, checks = [], []
    for proxy_run in runs:
        config, name = configs.get(proxy_run), run_name(section, proxy_run, budget)  # None: released weights
        row = {"proxy": proxy_run, "seed": config and config.seed, "budget": budget, "table": name}
        row.update(prune(ctx, section, name, checkpoints[proxy_run]))
        row["model"] = pd.read_csv(ctx.out / FOLDER / f"{name}.csv")["model"].iloc[0]
        if section.checks_at is None or budget in section.checks_at:
            checks += check_criterion(ctx, section, name, checkpoints[proxy_run])
        if ctx.last and section.finetune is not None and config is not None:
            finetune = finetune_config(config, section.finetune, ctx.runs / "pruned" / f"{name}.pth")
            row["top1_finetuned"] = trained(finetune, f"fine-tuning {name}")["val_top1"].iloc[-1]
            row["finetune_lr"] = finetune.lr
        rows.append(row)
    summary = add_rows(ctx.out / "pruned" / "summary.csv", rows, section)
    written = [p for r in rows for p in with_sidecar(ctx.out / FOLDER / f"{r['table']}.csv")] + with_sidecar(summary)
    return written + checks + (design(ctx, section, ctx.out / FOLDER / f"{rows[0]['table']}.csv") if ctx.last else [])


def add_rows(path: Path, rows: list[dict], section: Section) -> Path:
    """The summary with this budget's rows added to earlier budgets' (a rerun replaces its own)."""
    frame = pd.DataFrame(rows)
    if path.exists():
        frame = pd.concat([pd.read_csv(path), frame]).drop_duplicates("table", keep="last")
    return write_results(frame, path, {"fig5": dataclasses.asdict(section)})


def design(ctx: Context, section: Section, pruning: Path) -> list[Path]:
    """The designed variant's model YAML and its comparison with M0..M5 (kept when they exist)."""
    path = ctx.out / "variants" / f"{pruning.stem}_variant.yaml"
    compared = path.with_name(f"{path.stem}_compare.csv")
    if not path.exists() or not compared.exists():
        config = tool_config(
            design_variant.VariantConfig, section.variant, pruning=str(pruning), out_dir=ctx.out / "variants"
        )
        announce(config)
        design_variant.run(config)
    return [path, *with_sidecar(compared)]


def variant_lines(out: Path) -> list[str]:
    """The designed variant beside M0..M5: parameters, fused FLOPs and CPU throughput, as the designer timed them."""
    files = listed_outputs(out, "variants", "*_compare.csv")
    if not files:
        return []
    table = pd.read_csv(files[0])
    settings = json.loads(files[0].with_suffix(".json").read_text())["arguments"]
    cells = table.assign(params=table["params"].map("{:,}".format)).rename(
        columns={"mflops_fused": "MFLOPs (BN fused)", "cpu_img_s": "CPU img/s"}
    )
    variant = files[0].stem.removesuffix("_compare")
    return [
        "",
        f"The variant designed from {Path(settings['pruning']).stem}'s pruning ({variant}.yaml) beside "
        f"EfficientViT M0-M5, all at {settings['img_size']} px with the variant's stem (CPU, batch 16, "
        f"{settings.get('threads', '?')} threads, interleaved medians):",
        "",
        *markdown_table(cells),
    ]


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    """The per-block tables, each row with its run, proxy, seed and budget (from out/pruned/summary.csv; NaN budget
    for a run written before budgets were kept), that summary, and the oracle's and the controls' tables, each row
    with its run, proxy and budget too."""
    frame, pruned = read_tables(out, FOLDER), read_tables(out, "pruned", "summary.csv")
    found = {"pruning": None, "pruned": pruned, "oracle": None, "cuts": None, "controls": None}
    if frame is None:
        return found
    index = None
    if pruned is not None and "table" in pruned:
        index = pruned[["table", "proxy", "seed", "budget"]].rename(columns={"table": "source", "proxy": "run"})
        frame = frame.merge(index, on="source", how="left")
    else:
        frame = frame.assign(budget=np.nan, run=frame["source"])
    for kind in KINDS:  # written before the kept fractions were tabulated
        if f"{kind}_kept_fraction" not in frame:
            frame[f"{kind}_kept_fraction"] = frame[f"{kind}_kept"] / frame[f"{kind}_before"]
    found["pruning"] = with_proxy(frame)
    oracle = read_tables(out, ORACLE_FOLDER)
    if oracle is not None and index is not None:
        part = oracle["source"].str.extract(r"^(.*?)(_units|_cuts)?$")
        oracle = oracle.assign(table=part[0], part=part[1].fillna("summary"))
        oracle = with_proxy(oracle.merge(index.rename(columns={"source": "table"}), on="table", how="left"))
        kept = ["run", "proxy", "family", "seed", "budget"]  # NaN for released weights, kept all the same
        for key, part in (("oracle", "summary"), ("cuts", "_cuts")):
            rows = oracle[oracle["part"] == part]
            found[key] = rows.loc[:, rows.notna().any() | rows.columns.isin(kept)]
    controls = read_tables(out, CONTROLS_FOLDER)
    if controls is not None and index is not None:
        found["controls"] = with_proxy(controls.merge(index, on="source", how="left"))
    return found


def with_proxy(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with the proxy their run is a seed of (deit_tiny_full for deit_tiny_full_seed2) and its family."""
    runs = frame["run"].astype(str)
    proxy = runs.str.replace(r"_seed\d+$", "", regex=True)
    return frame.assign(proxy=proxy, family=proxy.map(family))


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per model and block at the longest budget: the runs, and each kind's kept width over the block's
    input width (mean, s.d. over runs)."""
    frame = at_longest(tables["pruning"])
    blocks = frame.groupby(["proxy", "model", "block", "stage", "in_width"])
    aggregates = {f"{k}_{s}": (f"{k}_ratio", s) for k in KINDS for s in ("mean", "std")}
    return blocks.agg(runs=("source", "nunique"), **aggregates).reset_index()


FINDINGS = {  # effect (per run, points) -> (the paper's claim, the direction it expects)
    "qk_minus_ffn": ("Q/K are cut more than FFN relative to their width", "less"),
    "v_minus_qk": ("V keeps more channels than Q/K", "greater"),
}


def paper_effects() -> dict[str, float]:
    """The paper's Swin-T values of the paired effects, its kept fractions read as ours."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    return taylor_pruning.paired_effects(
        paper.assign(
            qk_kept_fraction=paper["qk_ratio"],
            v_kept_fraction=paper["v_ratio"],
            ffn_kept_fraction=paper["ffn_ratio"] / 4,
        )
    )


def effects_by(frame: pd.DataFrame, run: str = "run") -> pd.DataFrame:
    """Each run's paired effects (taylor_pruning.paired_effects) from its per-block rows."""
    return pd.DataFrame([taylor_pruning.paired_effects(g) | {run: name} for name, g in frame.groupby(run)])


def verdicts_of(effects: pd.DataFrame, caveat: str = "", scale: str = PROXY_SCALE) -> dict[str, Verdict]:
    """Both findings from per-run effects: their mean and 95% t-interval over the runs, the size rule on the
    paper's Swin-T values."""
    theirs = paper_effects()
    zeros = [0.0] * len(effects)
    return {
        finding: compare(
            effects[finding], zeros, expect, paired=True, paper=theirs[finding], caveat=caveat, scale=scale
        )
        for finding, (_, expect) in FINDINGS.items()
    }


def findings(tables: dict[str, pd.DataFrame | None], out: Path | None = None) -> pd.DataFrame:
    """Per proxy, budget and finding: each run's paired effect, their mean and 95% t-interval across runs, the
    verdict (the size rule; "on unconverged proxies" where a run read was below 88% top-1), the paper's value."""
    frame, rows, theirs = tables["pruning"], [], paper_effects()
    for (proxy, budget), group in frame.groupby(["proxy", "budget"], dropna=False):
        caveat = proxies.caveat(out, set(group["run"]), budget) if out is not None else ""
        scale = proxies.scale(out, set(group["run"]))
        for finding, result in verdicts_of(effects_by(group), caveat, scale).items():
            rows.append(
                {
                    "proxy": proxy,
                    "family": family(proxy),
                    "budget": budget,
                    "finding": finding,
                    "claim": FINDINGS[finding][0],
                    "effect": result.effect,
                    "low": result.low,
                    "high": result.high,
                    "verdict": result.verdict,
                    "runs": result.runs,
                    "paper": theirs[finding],
                    "text": result.describe(),
                    "evidence": result.evidence(),
                    "word": result.word(),
                }
            )
    return pd.DataFrame(rows)


def spread(values: pd.Series, digits: int = 2) -> str:
    """Mean, and the s.d. over runs where there are several."""
    return f"{values.mean():.{digits}f}" + (f" ± {values.std():.{digits}f}" if len(values) > 1 else "")


def finding_lines(found: pd.DataFrame) -> list[str]:
    """Each finding at the longest budget per proxy, beside the paper's value, and how it moved along training."""
    lines = []
    for finding, (claim, _) in FINDINGS.items():
        parts = []
        for name, group in found[found["finding"] == finding].groupby("proxy"):
            ordered = group.sort_values("budget")
            first, last = ordered.iloc[0], ordered.iloc[-1]
            text = f"{name}: {last.text} (paper's Swin-T: {last.paper:+.1f})"
            if len(ordered) > 1:
                text += f"; from {budget_label(first.budget)} to {budget_label(last.budget)} it " + movement(
                    as_verdict(first), as_verdict(last), last.paper
                )
            parts.append(text)
        lines.append(f'Finding "{claim}" (kept fractions, paired within each run, points): {"; ".join(parts)}.')
    return lines


def along_training(found: pd.DataFrame) -> list[str]:
    if found.empty or found["budget"].nunique() < 2:
        return []
    wide = found.pivot_table(index=["proxy", "budget"], columns="finding", values="text", aggfunc="first").reset_index()
    cells = pd.DataFrame(
        {
            "proxy": wide["proxy"],
            "budget": wide["budget"].map(budget_label),
            **{f"{FINDINGS[f][0]}, points": wide[f] for f in FINDINGS if f in wide},
        }
    )
    return [
        "",
        "Along training (each effect with its 95% interval and verdict at that budget):",
        "",
        *markdown_table(cells),
    ]


LATE = "pruning cuts most in the last blocks"


def kept_share(frame: pd.DataFrame) -> pd.DataFrame:
    """Each block's share of its prunable channels (Q/K, V, FFN hidden) kept, in points (`pct`)."""
    before = sum(frame[f"{k}_before"] for k in KINDS)
    return frame.assign(pct=100 * sum(frame[f"{k}_kept"] for k in KINDS) / before)


def paper_late() -> float:
    """The paper's Swin-T kept share, its trend over depth (`trend_over_depth`), points."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    theirs = paper.assign(pct=100 * (paper["qk_ratio"] + paper["v_ratio"] + paper["ffn_ratio"]) / 6, source="paper")
    return float(trend_over_depth(theirs, "pct").iloc[0])


def late_cuts(frame: pd.DataFrame, out: Path | None = None) -> list[tuple[str, Verdict]]:
    """Per proxy: the kept share's trend over the blocks after the first, per pruning run (negative: the late
    blocks cut more), compared with 0 over the runs; the paper's Swin-T trend as the size rule's yardstick."""
    theirs, cuts = paper_late(), []
    for proxy, group in kept_share(frame).groupby("proxy"):
        caveat = proxies.caveat(out, set(group["run"]), group["budget"].iloc[0]) if out is not None else ""
        scale = proxies.scale(out, set(group["run"]))
        trend = trend_over_depth(group, "pct").dropna()
        zeros = [0.0] * len(trend)
        cuts.append((proxy, compare(trend, zeros, "less", paired=True, paper=theirs, caveat=caveat, scale=scale)))
    return cuts


def kept_lines(frame: pd.DataFrame, out: Path) -> list[str]:
    """The means over blocks and runs beside the paper's, and the finding on the last blocks."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    means = frame.groupby("proxy")[[f"{k}_kept_fraction" for k in KINDS]].mean()
    kept = "; ".join(
        f"{proxy} Q/K {r.qk_kept_fraction:.2f}, V {r.v_kept_fraction:.2f}, FFN {r.ffn_kept_fraction:.2f}"
        for proxy, r in means.iterrows()
    )
    return [
        "",
        f"Kept fractions (means over blocks and runs): {kept}. Paper (Swin-T, ImageNet): Q/K "
        f"{paper['qk_ratio'].mean():.2f}, V {paper['v_ratio'].mean():.2f}, FFN {paper['ffn_ratio'].mean() / 4:.2f} of "
        "their widths.",
        f'Finding "{LATE}" (a trend over depth: per pruning run, the change of a block\'s kept share of its Q/K, V and '
        "FFN channels from the second block to the last on the least-squares line through them, so that a first "
        "block unlike the rest does not make it; points): "
        + "; ".join(f"{proxy}: {result.describe()}" for proxy, result in late_cuts(frame, out))
        + f" (paper's Swin-T: {paper_late():+.1f}).",
    ]


def late_along_training(pruning: pd.DataFrame, out: Path) -> list[str]:
    """How the last-blocks finding moved from the shortest budget to the longest, per proxy."""
    budgets = sorted(pruning["budget"].dropna().unique()) if "budget" in pruning else []
    if len(budgets) < 2:
        return []
    first = dict(late_cuts(pruning[pruning["budget"] == budgets[0]]))
    last = late_cuts(pruning[pruning["budget"] == budgets[-1]], out)
    moves = [f"{proxy} {movement(first[proxy], after, paper_late())}" for proxy, after in last if proxy in first]
    return [f'From {budget_label(budgets[0])} to {budget_label(budgets[-1])}, "{LATE}": ' + "; ".join(moves) + "."]


def top1_lines(pruned: pd.DataFrame) -> list[str]:
    """Top-1 before pruning, after and after fine-tuning, and the parameters and FLOPs kept, per proxy (at the
    longest budget)."""
    pruned = at_longest(pruned) if "budget" in pruned else pruned
    pruned = pruned.assign(group=pruned["proxy"].str.replace(r"_seed\d+$", "", regex=True))
    columns = [c for c in ("top1_before", "top1_after", "top1_finetuned") if c in pruned]
    rows = []
    for proxy, group in pruned.groupby("group"):
        top1 = [spread(group[c].dropna()) + "%" if group[c].notna().any() else "-" for c in columns]
        top1 += ["-"] * (3 - len(columns))
        params = (group["params_after"] / group["params_before"]).mean()
        flops = (group["flops_after"] / group["flops_before"]).mean()
        rows.append([proxy, len(group), *top1, f"{params:.2f}", f"{flops:.2f}"])
    header = ["proxy", "runs", "top-1 before", "after pruning", "after fine-tuning", "params kept", "FLOPs kept"]
    swin = paper_table("fig5_pruning_top1").iloc[0]
    lines = ["", *markdown_table(pd.DataFrame(rows, columns=header))]
    if "finetune_lr" in pruned and pruned["finetune_lr"].notna().any():
        rates = ", ".join(f"{lr:g}" for lr in sorted(pruned["finetune_lr"].dropna().unique()))
        lines += ["", f"The fine-tunes ran at learning rate {rates} (the recipe's base rate, for batch 512)."]
    return lines + ["", f"Paper (Swin-T, ImageNet): {swin.top1_before}% before pruning, {swin.top1_pruned}% after."]


# -- the oracle and the controls -------------------------------------------------------------------------------


def rho_cell(rows: pd.DataFrame) -> str:
    """Spearman's rho per kind and pooled, each the mean over runs ("Q/K 0.52, V 0.31, FFN 0.11; pooled 0.40")."""
    means = rows.groupby("kind")["rho"].mean()
    kinds = ", ".join(f"{label} {means[k]:.2f}" for k, label in zip(KINDS, ("Q/K", "V", "FFN")) if k in means)
    pooled = rows[rows["kind"] == pruning_oracle.POOLED]["rho"]
    return f"{kinds}; pooled **{spread(pooled)}**" if len(pooled) else kinds


def oracle_settings(out: Path) -> dict:
    """The oracle's own settings (its sidecar's arguments: images, filters, group), from the first table."""
    tables = sorted((out / ORACLE_FOLDER).glob("*_units.json"))
    return json.loads(tables[0].read_text())["arguments"] if tables else {}


def best_predictors(oracle: pd.DataFrame) -> list[str]:
    """Per proxy: the unit its oracle is reliable on (single filters, else groups; pruning_oracle.reliable_unit,
    per run) and the criterion with the highest pooled rho against the signed oracle there, the mean over runs."""
    parts = []
    for proxy, rows in oracle.groupby("proxy"):
        units = {run: pruning_oracle.reliable_unit(group) for run, group in rows.groupby("run")}
        reliable = [unit for unit in ("filter", "group") if any(u == unit for u in units.values())]
        if not reliable:
            parts.append(f"{proxy}: neither unit reaches a split-half reliability of {pruning_oracle.RELIABLE}")
            continue
        unit = reliable[0]
        pooled = rows[(rows["unit"] == unit) & (rows["oracle"] == "signed") & (rows["kind"] == pruning_oracle.POOLED)]
        means = pooled[pooled["criterion"].isin(list(taylor_pruning.CRITERIA))].groupby("criterion")["rho"].mean()
        means = means.dropna()
        if means.empty:
            parts.append(f"{proxy}: no criterion has a rho on {unit}s")
            continue
        ranked = means.sort_values(ascending=False)
        parts.append(
            f"{proxy} ({unit}s): {ranked.index[0]} ({ranked.iloc[0]:.2f}), then "
            + ", ".join(f"{name} ({rho:.2f})" for name, rho in ranked.iloc[1:].items())
        )
    return parts


def oracle_lines(found: dict, out: Path) -> list[str]:
    """The criteria against the oracle at the longest budget the oracle ran at: rho per kind and pooled, per
    proxy, unit and oracle; what each ranking would cut; and which criterion predicts the harm best."""
    oracle = found["oracle"]
    if oracle is None or oracle.empty:
        return []
    oracle = at_longest(oracle)
    budget = budget_label(oracle["budget"].iloc[0])
    settings = oracle_settings(out)
    cells = []
    for (proxy, unit, criterion), rows in oracle.groupby(["proxy", "unit", "criterion"], sort=False):
        cells.append(
            {
                "proxy": proxy,
                "unit": unit,
                "criterion": criterion + (" (the paper's)" if criterion == "molchanov" else ""),
                **{f"rho with the {o} oracle": rho_cell(rows[rows["oracle"] == o]) for o in pruning_oracle.ORACLES},
            }
        )
    drawn = out / "figures" / ORACLE_FIGURE
    group = settings.get("group")
    units = (
        f"single filters ({settings.get('filters', '?')} drawn per kind and block) and groups (each kind of a block "
        f"cut at random into groups of {group:.0%} of its filters, so that they cover every filter and favour no "
        "criterion's order)"
        if group
        else "single filters"
    )
    lines = [*([] if not drawn.exists() else ["", f"![each criterion against the oracle](figures/{ORACLE_FIGURE})"])]
    lines += [
        "",
        f"**The criterion against its oracle** ({budget}; analysis/pruning_oracle.py, on "
        f"{settings.get('images', '?')} held-out images): Spearman's rho of each criterion with the true loss "
        "change when a unit is removed (zeroed), signed (the harm) and squared (Molchanov's oracle, the size of the "
        "change), per kind and pooled over the kinds (what a global ranking needs), the mean over runs (± s.d. over "
        f"runs); units are {units}. The split-half reliability row is each oracle against itself on two halves of "
        "the images: no criterion can track an oracle better; a unit is read where it reaches "
        f"{pruning_oracle.RELIABLE}. Molchanov et al. report rho above 0.93 on ImageNet CNNs.",
        "",
        *markdown_table(pd.DataFrame(cells)),
        "",
        "The criteria by how well they predict the harm of a removal (pooled over the kinds, signed oracle, on the "
        "reliable unit; mean rho over runs): "
        + "; ".join(best_predictors(oracle))
        + f". The pipeline prunes with {taylor_pruning.DEFAULT_CRITERION} (taylor_pruning.DEFAULT_CRITERION).",
    ]
    return lines + cut_lines(found)


def cut_lines(found: dict) -> list[str]:
    """What each ranking (each oracle, each criterion) would cut per kind at the pruning's budget, and the paired
    effect Q/K minus FFN it gives: where the two oracles disagree about Q/K against FFN."""
    cuts = found["cuts"]
    if cuts is None or cuts.empty:
        return []
    cuts = at_longest(cuts)
    rows = []
    for (proxy, ranking), group in cuts.groupby(["proxy", "ranking"], sort=False):
        wide = group.pivot_table(index="run", columns="kind", values="kept_fraction")
        effect = compare(
            100 * (wide["qk"] - wide["ffn"]),
            [0.0] * len(wide),
            "less",
            paired=True,
            paper=paper_effects()["qk_minus_ffn"],
        )
        per_run = group.drop_duplicates("run")
        measured = (
            {
                "top-1 cost of the cut, points": spread(per_run["top1_drop"], 1),
                "loss change: whole cut / its groups added": f"{per_run['joint_loss_change'].mean():+.3f} / "
                f"{per_run['added_loss_change'].mean():+.3f}",
            }
            if "top1_drop" in per_run and per_run["top1_drop"].notna().any()
            else {}
        )
        rows.append(
            {
                "proxy": proxy,
                "ranking": ranking,
                **{f"{label} kept": spread(wide[k]) for k, label in zip(KINDS, ("Q/K", "V", "FFN")) if k in wide},
                "Q/K minus FFN, points": effect.describe(),
                **measured,
            }
        )
    return [
        "",
        "What each ranking would cut at the pruning's budget (the groups ranked by value per filter, least harmful "
        "first, one shot, every kind of a block keeping a group): the kept fraction of each kind (mean ± s.d. over "
        f"runs) and Q/K minus FFN (paper's Swin-T {paper_effects()['qk_minus_ffn']:+.1f}); where measured, what "
        "the whole cut costs when its groups are removed together, and its loss change beside the sum of its groups' "
        "single changes (they differ where removals do not add up).",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
        *oracles_on_qk_and_ffn(cuts),
        *cheapest_cuts(cuts),
    ]


def cheapest_cuts(cuts: pd.DataFrame) -> list[str]:
    """Per proxy, the criterion whose whole cut costs the least top-1 (mean over runs), beside the signed oracle's
    own cut: what a global ranking must predict is the harm of the cut, not of each removal alone."""
    if "top1_drop" not in cuts or cuts["top1_drop"].isna().all():
        return []
    parts = []
    for proxy, group in cuts.drop_duplicates(["run", "ranking"]).groupby("proxy"):
        cost = group.groupby("ranking")["top1_drop"].mean()
        criteria = cost[cost.index.str.startswith("criterion: ")].sort_values()
        parts.append(
            f"{proxy}: "
            + ", ".join(f"{name.removeprefix('criterion: ')} {drop:.1f}" for name, drop in criteria.items())
            + f"; the signed oracle's own cut {cost.get('oracle, signed', float('nan')):.1f}"
        )
    return [
        "",
        "Top-1 each whole cut costs, points (mean over runs; cheapest criterion first): " + "; ".join(parts) + ".",
    ]


def oracles_on_qk_and_ffn(cuts: pd.DataFrame) -> list[str]:
    """Per proxy, whether the two oracles agree about Q/K against FFN: each one's Q/K minus FFN (mean over runs)
    when the groups it would cut least harmfully (signed) or least changing (squared) go first."""
    parts = []
    for proxy, group in cuts[cuts["ranking"].str.startswith("oracle")].groupby("proxy"):
        effect = {}
        for ranking, rows in group.groupby("ranking"):
            wide = rows.pivot_table(index="run", columns="kind", values="kept_fraction")
            effect[ranking.removeprefix("oracle, ")] = float(100 * (wide["qk"] - wide["ffn"]).mean())
        signed, squared = effect.get("signed", float("nan")), effect.get("squared", float("nan"))
        agree = "agree" if np.sign(signed) == np.sign(squared) else "disagree"
        parts.append(f"{proxy}: signed {signed:+.0f}, squared {squared:+.0f} points ({agree})")
    if not parts:
        return []
    return [
        "Q/K minus FFN if the oracles themselves chose: " + "; ".join(parts) + ". Where an oracle keeps Q/K over FFN "
        "as the criterion does, the reading comes from what the proxies' filters do, not from how the criterion "
        "scores them; where the signed oracle cuts Q/K and the squared keeps them, Q/K filters change the loss a lot "
        "in either direction without harming the model."
    ]


def control_effects(controls: pd.DataFrame) -> pd.DataFrame:
    """Per proxy, control, criterion (and ratio, for the depth control): every run's paired effects, kept fractions,
    the top-1 drop of its masked model and where Q/K first lost a channel."""
    rows = []
    for (proxy, control, criterion, run), group in controls.groupby(["proxy", "control", "criterion", "run"]):
        for ratio, at in group.groupby("ratio"):
            effects = taylor_pruning.paired_effects(at)
            rows.append(
                {
                    "proxy": proxy,
                    "control": control,
                    "criterion": criterion,
                    "run": run,
                    "ratio": ratio,
                    "drop": at["top1_before"].iloc[0] - at["top1"].iloc[0],
                    "qk_first_cut": at["qk_first_cut"].iloc[0],
                    **{k: effects[k] for k in ("qk_minus_ffn", "v_minus_qk")},
                    **{f"{k}_kept_fraction": effects[f"{k}_kept_fraction"] for k in KINDS},
                }
            )
    return pd.DataFrame(rows)


def control_lines(found: dict, out: Path) -> list[str]:
    """Each control as a row with its kept fractions and both paired effects with their intervals over runs, at the
    longest budget the controls ran at; the depth control at its ratios; then what moves Q/K minus FFN."""
    controls = found["controls"]
    if controls is None or controls.empty:
        return []
    controls = at_longest(controls)
    budget = controls["budget"].iloc[0]
    effects = control_effects(controls)
    rows = []
    for (proxy, control, criterion, _), group in effects.groupby(
        ["proxy", "control", "criterion", effects["ratio"].where(effects["control"] == "depth", -1)], sort=False
    ):
        caveat = proxies.caveat(out, set(group["run"]), budget)
        verdicts = verdicts_of(group, caveat, proxies.scale(out, set(group["run"])))
        rows.append(
            {
                "control": control + (f" {group['ratio'].mean():.2f}" if control == "depth" else ""),
                "criterion": criterion,
                "proxy": proxy,
                "runs": len(group),
                "ratio": spread(group["ratio"]),
                "top-1 cost, points": spread(group["drop"], 1),
                **{
                    f"{label} kept": spread(group[f"{k}_kept_fraction"]) for k, label in zip(KINDS, ("Q/K", "V", "FFN"))
                },
                "Q/K first cut at": spread(group["qk_first_cut"]),
                "Q/K minus FFN, points": verdicts["qk_minus_ffn"].describe(),
                "V minus Q/K, points": verdicts["v_minus_qk"].describe(),
            }
        )
    depth = sorted(effects.loc[effects["control"] == "depth", "ratio"].unique())
    widths = [name for name in set(effects["proxy"]) if re.search(r"_qk\d+$", name)]
    lines = [
        "",
        f"**The controls** ({budget_label(budget)}; analysis/pruning_controls.py): the same scores ranked under each "
        "choice, one shot, on the masked model; `one-shot` is the pipeline's rule at the pruning's budget, the row "
        "each control is read against. depth: the global ratio at "
        + ", ".join(f"{r:g}" for r in depth)
        + f", and at the ratio whose cut costs the paper's {pruning_controls.PAPER_COST} points before fine-tuning "
        "(where one of the measured ratios costs that much); per-flop: each candidate's score over its multiply-adds; "
        "per-head: every head's channels ranked on their own. `Q/K first cut at`: the share of the channels that "
        "ranking has cut when it first takes a Q/K channel."
        + (
            f" The width control is a proxy of its own ({', '.join(sorted(widths))}: Q/K as wide per head as the "
            "paper's model's), pruned as the others."
            if widths
            else ""
        ),
        "",
        *markdown_table(pd.DataFrame(rows)),
    ]
    return lines + explanation(effects, found, out)


def closer(shifted, base, paper: float) -> Verdict:
    """Whether `shifted` lies closer to the paper's value than `base` (paired over runs): the reduction of the
    distance |effect - paper|, in points; reproduced when its interval is clear of zero on the closer side."""
    shifted, base = np.asarray(shifted, dtype=float), np.asarray(base, dtype=float)
    return compare(np.abs(base - paper), np.abs(shifted - paper), "greater", paired=True)


def explanation(effects: pd.DataFrame, found: dict, out: Path) -> list[str]:
    """Which control brings Q/K minus FFN closer to the paper's, by how much (the distance to the paper's value,
    paired over runs against the one-shot row of the same criterion; the width control against its base proxy),
    or that none does. The depth control is read where its cut costs the paper's top-1 (the deepest ratio cuts
    FFN away by arithmetic alone)."""
    theirs = paper_effects()["qk_minus_ffn"]
    shifts = []
    one_shot = effects[effects["control"] == "one-shot"].set_index(["proxy", "criterion", "run"])["qk_minus_ffn"]
    for (proxy, control, criterion), group in effects[~effects["control"].isin(["one-shot", "depth"])].groupby(
        ["proxy", "control", "criterion"]
    ):
        base = one_shot.reindex([(proxy, criterion, run) for run in group["run"]]).to_numpy()
        shifts.append((f"{control} ({criterion}, {proxy})", closer(group["qk_minus_ffn"], base, theirs)))
    for criterion in sorted(set(effects["criterion"]) - {"molchanov"}):  # the criterion itself
        a = one_shot.xs(criterion, level="criterion")
        b = one_shot.xs("molchanov", level="criterion").reindex(a.index)
        for proxy in sorted(set(a.index.get_level_values("proxy"))):
            shift = closer(a.xs(proxy).to_numpy(), b.xs(proxy).to_numpy(), theirs)
            shifts.append((f"criterion {criterion} instead of Molchanov's ({proxy})", shift))
    shifts += width_shifts(found, theirs)
    toward = [(name, s) for name, s in shifts if s.verdict == REPRODUCED]
    listed = "; ".join(f"{name}: {s.evidence()}" for name, s in shifts)
    if toward:
        lead = (
            "Brought Q/K minus FFN closer to the paper's (the distance to its value shrank, interval clear of zero): "
            + "; ".join(
                f"{name} by {s.effect:.1f} points"
                for name, s in sorted(toward, key=lambda p: abs(p[1].effect), reverse=True)
            )
            + f" (the paper's Swin-T sits at {theirs:+.1f})."
        )
    else:
        lead = (
            "No control brought Q/K minus FFN closer to the paper's by more than its interval: the hypotheses stay "
            "open."
        )
    return [
        "",
        "**What explains the reading.** " + lead,
        "",
        f"Every control's reduction of the distance to the paper's Q/K minus FFN ({theirs:+.1f}), against its base "
        f"(points, positive: closer): {listed}.",
    ]


def width_shifts(found: dict, theirs: float) -> list[tuple[str, Verdict]]:
    """The width control: each proxy with wider Q/K (a proxy named <base>_qk<width>) against its base proxy,
    Q/K minus FFN of the main pruning at the longest budget (Welch over runs)."""
    frame = at_longest(found["pruning"])
    effects = effects_by(frame).merge(frame[["run", "proxy"]].drop_duplicates(), on="run")
    shifts = []
    for proxy in sorted(set(effects["proxy"])):
        base = re.sub(r"_qk\d+$", "", proxy)
        if base != proxy and base in set(effects["proxy"]):
            wide, narrow = (effects[effects["proxy"] == p]["qk_minus_ffn"].to_numpy() for p in (proxy, base))
            distance = compare(np.abs(narrow - theirs), np.abs(wide - theirs), "greater")  # Welch over runs
            shifts.append((f"width: {proxy} against {base}", distance))
    return shifts


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["pruning"] is None:
        return ["Not run."]
    table, verdicts = summarize(found), findings(found, out)

    def kept(kind: str) -> list[str]:
        return [
            f"{r[f'{kind}_mean']:.2f}" + (f" ± {r[f'{kind}_std']:.2f}" if r["runs"] > 1 else "")
            for _, r in table.iterrows()
        ]

    cells = pd.DataFrame(
        {
            "proxy": table["proxy"],
            "block": table["block"],
            "stage": table["stage"],
            "in width": table["in_width"],
            "runs": table["runs"],
            **{f"{label} kept": kept(kind) for kind, label in zip(KINDS, ("Q/K", "V", "FFN"))},
        }
    )
    longest = at_longest(found["pruning"])
    lines = markdown_table(cells) + kept_lines(longest, out) + late_along_training(found["pruning"], out)
    lines += finding_lines(verdicts)
    lines += along_training(verdicts)
    if (out / "figures" / BUDGET_FIGURE).exists():
        lines += ["", f"![{TITLE}, along training](figures/{BUDGET_FIGURE})"]
    if found["pruned"] is not None:
        lines += top1_lines(found["pruned"])
    return lines + variant_lines(out) + oracle_lines(found, out) + control_lines(found, out)


def glance(out: Path) -> list[Finding]:
    """Every finding per proxy at the longest budget, for the report's table at a glance."""
    found = tables(out)
    if found["pruning"] is None:
        return []
    longest = at_longest(found["pruning"])
    budget = budget_label(longest["budget"].iloc[0])
    rows = [
        Finding(
            "Fig. 5",
            LATE,
            f"{proxies.subject(out, proxy)}, {budget}: kept share, its trend over the blocks after the first",
            result.evidence(),
            result.word(),
            paper=f"{paper_late():+.1f} (Swin-T, ImageNet)",
        )
        for proxy, result in late_cuts(longest, out)
    ]
    paper_criterion = molchanov_one_shot(found)
    for row in at_longest(findings(found, out)).itertuples():
        control = paper_criterion.get((row.proxy, row.finding))
        rows.append(
            Finding(
                "Fig. 5",
                row.claim,
                f"{proxies.subject(out, row.proxy)}, {budget}: kept fractions, paired within each run",
                row.evidence,
                row.word,
                control="-"
                if control is None
                else f"Molchanov's criterion (the paper's), one shot: {control.describe()}",
                paper=f"{row.paper:+.1f} (Swin-T, ImageNet)",
            )
        )
    return rows + oracle_glance(found, out)


def molchanov_one_shot(found: dict) -> dict[tuple[str, str], Verdict]:
    """Per proxy and finding, the effect under the paper's own criterion (the controls' one-shot Molchanov row at
    the longest budget the controls ran at), beside the pipeline's in the table at a glance."""
    controls = found["controls"]
    if controls is None or controls.empty:
        return {}
    effects = control_effects(at_longest(controls))
    chosen = effects[(effects["control"] == "one-shot") & (effects["criterion"] == "molchanov")]
    return {
        (proxy, finding): verdict
        for proxy, group in chosen.groupby("proxy")
        for finding, verdict in verdicts_of(group).items()
    }


def oracle_glance(found: dict, out: Path) -> list[Finding]:
    """Our check of the method, per proxy: how well the paper's criterion and the pipeline's predict the harm of
    a removal (groups, pooled over the kinds, against the signed oracle), beside the oracle's own reliability."""
    oracle = found["oracle"]
    if oracle is None or oracle.empty:
        return []
    oracle = at_longest(oracle)
    rows = []
    pooled = oracle[
        (oracle["kind"] == pruning_oracle.POOLED) & (oracle["unit"] == "group") & (oracle["oracle"] == "signed")
    ]
    budget = budget_label(oracle["budget"].iloc[0])
    for proxy, group in pooled.groupby("proxy"):
        means = group.groupby("criterion")["rho"].mean()
        rho = {name: spread(values) for name, values in group.groupby("criterion")["rho"]}
        others = means.drop(["molchanov", "split-half reliability"], errors="ignore")
        best = others.idxmax() if len(others) else "-"
        rows.append(
            Finding(
                "Fig. 5 check",
                "Taylor pruning's criterion ranks filters by the loss change their removal causes (our check; "
                "Molchanov et al.: rho above 0.93)",
                f"{proxies.subject(out, proxy)}, {budget}: groups of a kind in a block, pooled over the kinds, "
                "signed oracle",
                f"rho {rho.get('molchanov', '-')} (Molchanov's), the best other {rho.get(best, '-')} ({best}); the "
                f"oracle's split-half reliability {rho.get('split-half reliability', '-')}",
                "a check of the method, no verdict",
                paper="rho > 0.93 (ImageNet CNNs, squared oracle)",
            )
        )
    return rows


def draw(section: Section, images: int) -> Section:
    """The section scoring filters on `images` training images, its oracle and controls measuring on as many
    held-out images (`reproduce --images`)."""
    replace = dataclasses.replace
    batches = -(-images // section.pruning.batch)
    section = replace(section, pruning=replace(section.pruning, batches=batches, eval_images=images))
    if section.oracle is not None:
        oracle = section.oracle
        section = replace(section, oracle=replace(oracle, images=images, batches=-(-images // oracle.batch)))
    if section.controls is not None:
        controls = section.controls
        controls = replace(controls, batches=-(-images // controls.batch), eval_images=images)
        section = replace(section, controls=controls)
    return section


FIGURE = Figure(
    STAGE,
    Section,
    "Figure 5: Taylor pruning and the designed variant",
    run,
    along_training=True,
    reads=("proxies",),
    check=check,
    title=TITLE,
    report=report,
    glance=glance,
    folder=FOLDER,
    notebook="fig5_taylor_pruning",
    draw=draw,
)
