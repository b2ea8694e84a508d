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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import design_variant, taylor_pruning
from analysis.figures import proxies
from analysis.pipeline import (
    Context,
    announce,
    at_longest,
    budget_label,
    family,
    read_tables,
    tool_settings,
    trained,
    with_sidecar,
)
from analysis.published import paper_table
from analysis.verdicts import Finding, Verdict, as_verdict, compare, late_and_early, movement
from efficientvit.config import knob
from efficientvit.results import markdown_table, write_results

STAGE = "fig5"
TITLE = "Figure 5: Taylor structured pruning"
FIGURE = "fig5_taylor_pruning.png"
BUDGET_FIGURE = "fig5_budget.png"  # each finding against the training budget
FOLDER = "taylor_pruning"
OWNED = ("data", "model", "checkpoint", "device", "run", "out_dir", "save", "finetune_config")
VARIANT_OWNED = ("pruning", "out_dir", "name")
KINDS = ("qk", "v", "ffn")
# a pruned model starts trained: at its training's peak rate a fine-tune knocks it back first (the reference run's
# fine-tunes at that rate all ended below where pruning left them), so at a tenth of it, without warm-up
FINETUNE_LR = 0.1


@dataclass
class Section:
    proxies: list[str] = knob(help="the proxies whose runs are pruned")
    pruning: dict = knob({}, "settings of analysis/taylor_pruning.py (PruneConfig: ratio, batches, ...)")
    finetune: dict | None = knob(
        None, "fine-tune every pruned model with its proxy's recipe at a tenth of its rate, no warm-up, and these keys"
    )
    variant: dict = knob({}, "settings of analysis/design_variant.py (VariantConfig: img_size, patch_size, ...)")

    def __post_init__(self):
        self.pruning = tool_settings(taylor_pruning.PruneConfig, self.pruning, "fig5: pruning", OWNED)
        self.variant = tool_settings(design_variant.VariantConfig, self.variant, "fig5: variant", VARIANT_OWNED)


def run_name(section: Section, proxy_run: str, budget: int | None = None) -> str:
    return f"{proxy_run}{'' if budget is None else f'_e{budget}'}_ratio_{section.pruning.get('ratio')}"


def prune(ctx: Context, section: Section, name: str, checkpoint: Path) -> dict:
    """Prune one proxy run's snapshot (unless its table exists); returns its pruning statistics."""
    table = ctx.out / FOLDER / f"{name}.csv"
    if table.exists():  # resume: the statistics of a finished pruning are in its sidecar
        return json.loads(table.with_suffix(".json").read_text())["pruning"]
    config = taylor_pruning.PruneConfig(
        **section.pruning,
        data=str(ctx.data),
        checkpoint=str(checkpoint),
        device=ctx.device,
        run=name,
        out_dir=ctx.out / FOLDER,
        save=ctx.runs / "pruned" / f"{name}.pth",
    )
    announce(config)
    return taylor_pruning.run(config).stats


def run(
    ctx: Context, section: Section, trained_proxies: proxies.Section, budget: int | None = None, last: bool = True
) -> list[Path]:
    """The stage at one budget: prune every run (and, at the last budget, fine-tune it and design the variant from
    the first); out/pruned/summary.csv gains this budget's rows."""
    configs = proxies.configs(trained_proxies, ctx.data, ctx.runs)
    checkpoints = proxies.checkpoints(trained_proxies, ctx.runs, budget)
    runs = [run for proxy in section.proxies for run in proxies.run_names(trained_proxies, proxy)]
    rows = []
    for proxy_run in runs:
        config, name = configs[proxy_run], run_name(section, proxy_run, budget)
        row = {"proxy": proxy_run, "model": config.model, "seed": config.seed, "budget": budget, "table": name}
        row.update(prune(ctx, section, name, checkpoints[proxy_run]))
        if last and section.finetune is not None:
            pruned = ctx.runs / "pruned" / f"{name}.pth"
            finetune = dataclasses.replace(
                config,
                **{"lr": config.lr * FINETUNE_LR, "warmup_epochs": 0, **section.finetune},
                init=str(pruned),
                out=str(pruned.with_suffix("")) + "_finetuned",
                snapshots=[],
                plateau=None,
            )
            row["top1_finetuned"] = trained(finetune, f"fine-tuning {name}")["val_top1"].iloc[-1]
            row["finetune_lr"] = finetune.lr
        rows.append(row)
    summary = add_rows(ctx.out / "pruned" / "summary.csv", rows, section)
    written = [p for r in rows for p in with_sidecar(ctx.out / FOLDER / f"{r['table']}.csv")] + with_sidecar(summary)
    return written + ([design(ctx, section, ctx.out / FOLDER / f"{rows[0]['table']}.csv")] if last else [])


def add_rows(path: Path, rows: list[dict], section: Section) -> Path:
    """The summary with this budget's rows added to earlier budgets' (a rerun replaces its own)."""
    frame = pd.DataFrame(rows)
    if path.exists():
        frame = pd.concat([pd.read_csv(path), frame]).drop_duplicates("table", keep="last")
    return write_results(frame, path, {"fig5": dataclasses.asdict(section)})


def design(ctx: Context, section: Section, pruning: Path) -> Path:
    """The designed variant's model YAML (kept when it exists)."""
    path = ctx.out / "variants" / f"{pruning.stem}_variant.yaml"
    if not path.exists():
        config = design_variant.VariantConfig(**section.variant, pruning=str(pruning), out_dir=ctx.out / "variants")
        announce(config)
        design_variant.run(config)
    return path


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    """The per-block tables, each row with its run, seed and budget (from out/pruned/summary.csv; NaN budget for a
    run written before budgets were kept), and that summary."""
    frame, pruned = read_tables(out, FOLDER), read_tables(out, "pruned", "summary.csv")
    if frame is None:
        return {"pruning": None, "pruned": pruned}
    if pruned is not None and "table" in pruned:
        index = pruned[["table", "proxy", "seed", "budget"]].rename(columns={"table": "source"})
        frame = frame.merge(index, on="source", how="left")
    else:
        frame = frame.assign(budget=np.nan)
    for kind in KINDS:  # written before the kept fractions were tabulated
        if f"{kind}_kept_fraction" not in frame:
            frame[f"{kind}_kept_fraction"] = frame[f"{kind}_kept"] / frame[f"{kind}_before"]
    return {"pruning": frame.assign(family=frame["model"].map(family)), "pruned": pruned}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per model and block at the longest budget: the runs, and each kind's kept width over the block's
    input width (mean, s.d. over runs)."""
    frame = at_longest(tables["pruning"])
    blocks = frame.groupby(["model", "block", "stage", "in_width"])
    aggregates = {f"{k}_{s}": (f"{k}_ratio", s) for k in KINDS for s in ("mean", "std")}
    return blocks.agg(runs=("source", "nunique"), **aggregates).reset_index()


FINDINGS = {  # effect (per run, points) -> (the paper's claim, the direction it expects, the paper's Swin-T value)
    "qk_minus_ffn": ("Q/K are cut more than FFN relative to their width", "less"),
    "v_minus_qk": ("V keeps more channels than Q/K", "greater"),
}


def findings(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """Per family, budget and finding: each run's paired effect (taylor_pruning.paired_effects), their mean and
    95% t-interval across runs, the verdict, and the paper's Swin-T value of the same effect."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    theirs = taylor_pruning.paired_effects(
        paper.assign(
            qk_kept_fraction=paper["qk_ratio"],
            v_kept_fraction=paper["v_ratio"],
            ffn_kept_fraction=paper["ffn_ratio"] / 4,
        )
    )
    frame, rows = tables["pruning"], []
    for (name, budget), group in frame.groupby(["family", "budget"], dropna=False):
        effects = pd.DataFrame([taylor_pruning.paired_effects(g) for _, g in group.groupby("source")])
        for finding, (claim, expect) in FINDINGS.items():
            result = compare(effects[finding], [0.0] * len(effects), expect, paired=True)
            rows.append(
                {
                    "family": name,
                    "budget": budget,
                    "finding": finding,
                    "claim": claim,
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


def spread(values: pd.Series) -> str:
    """Mean, and the s.d. over runs where there are several."""
    return f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")


def finding_lines(found: pd.DataFrame) -> list[str]:
    """Each finding at the longest budget per family, beside the paper's value, and how it moved along training."""
    lines = []
    for finding, (claim, _) in FINDINGS.items():
        parts = []
        for name, group in found[found["finding"] == finding].groupby("family"):
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
    wide = found.pivot_table(
        index=["family", "budget"], columns="finding", values="text", aggfunc="first"
    ).reset_index()
    cells = pd.DataFrame(
        {
            "family": wide["family"],
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


def late_cuts(frame: pd.DataFrame) -> tuple[list[tuple[str, Verdict]], float]:
    """The share of a block's prunable channels (Q/K, V, FFN hidden) kept, the last third of the blocks minus the
    first, paired within each pruning run, per model; and the paper's Swin-T value."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    before = sum(frame[f"{k}_before"] for k in KINDS)
    kept = frame.assign(pct=100 * sum(frame[f"{k}_kept"] for k in KINDS) / before)
    theirs = paper.assign(pct=100 * (paper["qk_ratio"] + paper["v_ratio"] + paper["ffn_ratio"]) / 6, source="paper")
    paper_late, paper_early = late_and_early(theirs, "pct")
    cuts = [
        (model, compare(*late_and_early(group, "pct"), "less", paired=True)) for model, group in kept.groupby("model")
    ]
    return cuts, paper_late.iloc[0] - paper_early.iloc[0]


def kept_lines(frame: pd.DataFrame) -> list[str]:
    """The means over blocks and runs beside the paper's, and the finding on the last blocks."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    cuts, theirs = late_cuts(frame)
    return [
        "",
        f"Means, ours: Q/K {frame['qk_ratio'].mean():.2f}, V {frame['v_ratio'].mean():.2f}, FFN "
        f"{frame['ffn_ratio'].mean():.2f} of the input width (before pruning 1, 1, 4); kept fractions Q/K "
        f"{frame['qk_kept_fraction'].mean():.2f}, V {frame['v_kept_fraction'].mean():.2f}, FFN "
        f"{frame['ffn_kept_fraction'].mean():.2f}. Paper (Swin-T, ImageNet): Q/K {paper['qk_ratio'].mean():.2f}, "
        f"V {paper['v_ratio'].mean():.2f}, FFN {paper['ffn_ratio'].mean():.2f} of the input width.",
        f'Finding "{LATE}" (share of a block\'s Q/K, V and FFN channels kept, the last third of the blocks minus '
        "the first third, points, paired within each pruning run): "
        + "; ".join(f"{model}: {result.describe()}" for model, result in cuts)
        + f" (paper's Swin-T: {theirs:+.1f}).",
    ]


def late_along_training(pruning: pd.DataFrame) -> list[str]:
    """How the last-blocks finding moved from the shortest budget to the longest, per model."""
    budgets = sorted(pruning["budget"].dropna().unique()) if "budget" in pruning else []
    if len(budgets) < 2:
        return []
    first = dict(late_cuts(pruning[pruning["budget"] == budgets[0]])[0])
    last, theirs = late_cuts(pruning[pruning["budget"] == budgets[-1]])
    moves = [f"{model} {movement(first[model], after, theirs)}" for model, after in last if model in first]
    return [f'From {budget_label(budgets[0])} to {budget_label(budgets[-1])}, "{LATE}": ' + "; ".join(moves) + "."]


def top1_lines(pruned: pd.DataFrame) -> list[str]:
    """Top-1 before pruning, after and after fine-tuning, and the parameters and FLOPs kept, per model (at the
    longest budget)."""
    pruned = at_longest(pruned) if "budget" in pruned else pruned
    columns = [c for c in ("top1_before", "top1_after", "top1_finetuned") if c in pruned]
    rows = []
    for model, group in pruned.groupby("model"):
        top1 = [spread(group[c].dropna()) + "%" if group[c].notna().any() else "-" for c in columns]
        top1 += ["-"] * (3 - len(columns))
        params = (group["params_after"] / group["params_before"]).mean()
        flops = (group["flops_after"] / group["flops_before"]).mean()
        rows.append([model, len(group), *top1, f"{params:.2f}", f"{flops:.2f}"])
    header = ["model", "runs", "top-1 before", "after pruning", "after fine-tuning", "params kept", "FLOPs kept"]
    swin = paper_table("fig5_pruning_top1").iloc[0]
    lines = ["", *markdown_table(pd.DataFrame(rows, columns=header))]
    if "finetune_lr" in pruned and pruned["finetune_lr"].notna().any():
        rates = ", ".join(f"{lr:g}" for lr in sorted(pruned["finetune_lr"].dropna().unique()))
        lines += ["", f"The fine-tunes ran at learning rate {rates} (the recipe's base rate, for batch 512)."]
    return lines + ["", f"Paper (Swin-T, ImageNet): {swin.top1_before}% before pruning, {swin.top1_pruned}% after."]


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["pruning"] is None:
        return ["Not run."]
    table, verdicts = summarize(found), findings(found)

    def kept(kind: str) -> list[str]:
        return [
            f"{r[f'{kind}_mean']:.2f}" + (f" ± {r[f'{kind}_std']:.2f}" if r["runs"] > 1 else "")
            for _, r in table.iterrows()
        ]

    cells = pd.DataFrame(
        {
            "model": table["model"],
            "block": table["block"],
            "stage": table["stage"],
            "in width": table["in_width"],
            "runs": table["runs"],
            **{f"{label} kept": kept(kind) for kind, label in zip(KINDS, ("Q/K", "V", "FFN"))},
        }
    )
    lines = markdown_table(cells) + kept_lines(at_longest(found["pruning"])) + late_along_training(found["pruning"])
    lines += finding_lines(verdicts)
    lines += along_training(verdicts)
    if (out / "figures" / BUDGET_FIGURE).exists():
        lines += ["", f"![{TITLE}, along training](figures/{BUDGET_FIGURE})"]
    if found["pruned"] is not None:
        lines += top1_lines(found["pruned"])
    return lines


def glance(out: Path) -> list[Finding]:
    """Every finding per family at the longest budget, for the report's table at a glance."""
    found = tables(out)
    if found["pruning"] is None:
        return []
    longest = at_longest(found["pruning"])
    budget = budget_label(longest["budget"].iloc[0])
    cuts, theirs = late_cuts(longest)
    rows = [
        Finding(
            "Fig. 5",
            LATE,
            f"{family(model)} proxies, {budget}: kept share, last third of the blocks minus the first",
            result.evidence(),
            result.word(),
            paper=f"{theirs:+.1f} (Swin-T, ImageNet)",
        )
        for model, result in cuts
    ]
    verdicts = at_longest(findings(found))
    for row in verdicts.itertuples():
        rows.append(
            Finding(
                "Fig. 5",
                row.claim,
                f"{row.family} proxies, {budget}: kept fractions, paired within each run",
                row.evidence,
                row.word,
                paper=f"{row.paper:+.1f} (Swin-T, ImageNet)",
            )
        )
    return rows
