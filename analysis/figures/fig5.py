"""Figure 5: which channels Taylor structured pruning keeps, and the variant designed from them.

Stage: `analysis/taylor_pruning.py` on every run of the proxies the preset names; each pruned model fine-tuned when
the preset asks; top-1 before, after pruning and after fine-tuning in out/pruned/summary.csv; then
`analysis/design_variant.py` reads the first run's pruning into an EfficientViT configuration. The report tests the
paper's "V keeps more channels than Q/K" and "pruning cuts most in the last blocks".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import design_variant, taylor_pruning
from analysis.figures import proxies
from analysis.pipeline import Context, announce, read_tables, tool_settings, trained, with_sidecar
from analysis.published import paper_table
from analysis.verdicts import compare, late_and_early
from efficientvit.config import knob
from efficientvit.results import markdown_table, write_results

STAGE = "fig5"
TITLE = "Figure 5: Taylor structured pruning"
FIGURE = "fig5_taylor_pruning.png"
FOLDER = "taylor_pruning"
OWNED = ("data", "model", "checkpoint", "device", "run", "out_dir", "save", "finetune_config")
VARIANT_OWNED = ("pruning", "out_dir", "name")
KINDS = ("qk", "v", "ffn")


@dataclass
class Section:
    proxies: list[str] = knob(help="the proxies whose runs are pruned")
    pruning: dict = knob({}, "settings of analysis/taylor_pruning.py (PruneConfig: ratio, batches, ...)")
    finetune: dict | None = knob(None, "fine-tune every pruned model with its proxy's recipe and these keys")
    variant: dict = knob({}, "settings of analysis/design_variant.py (VariantConfig: img_size, patch_size, ...)")

    def __post_init__(self):
        self.pruning = tool_settings(taylor_pruning.PruneConfig, self.pruning, "fig5: pruning", OWNED)
        self.variant = tool_settings(design_variant.VariantConfig, self.variant, "fig5: variant", VARIANT_OWNED)


def run_name(section: Section, proxy_run: str) -> str:
    return f"{proxy_run}_ratio_{section.pruning.get('ratio')}"


def prune(ctx: Context, section: Section, proxy_run: str, checkpoint: Path) -> dict:
    """Prune one proxy run (unless its table exists); returns its pruning statistics."""
    name = run_name(section, proxy_run)
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


def run(ctx: Context, section: Section, trained_proxies: proxies.Section) -> list[Path]:
    """The stage: prune (and fine-tune) every run, tabulate their top-1, design the variant from the first."""
    configs = proxies.configs(trained_proxies, ctx.data, ctx.runs)
    checkpoints = proxies.checkpoints(trained_proxies, ctx.runs)
    runs = [run for proxy in section.proxies for run in proxies.run_names(trained_proxies, proxy)]
    rows = []
    for proxy_run in runs:
        config = configs[proxy_run]
        row = {"proxy": proxy_run, "model": config.model, "seed": config.seed}
        row.update(prune(ctx, section, proxy_run, checkpoints[proxy_run]))
        if section.finetune is not None:
            pruned = ctx.runs / "pruned" / f"{run_name(section, proxy_run)}.pth"
            finetune = dataclasses.replace(
                config, **section.finetune, init=str(pruned), out=str(pruned.with_suffix("")) + "_finetuned"
            )
            row["top1_finetuned"] = trained(finetune, f"fine-tuning {run_name(section, proxy_run)}")["val_top1"].iloc[
                -1
            ]
        rows.append(row)
    summary = write_results(
        pd.DataFrame(rows), ctx.out / "pruned" / "summary.csv", {"fig5": dataclasses.asdict(section)}
    )
    first = ctx.out / FOLDER / f"{run_name(section, runs[0])}.csv"
    written = [p for r in runs for p in with_sidecar(ctx.out / FOLDER / f"{run_name(section, r)}.csv")]
    return written + with_sidecar(summary) + [design(ctx, section, first)]


def design(ctx: Context, section: Section, pruning: Path) -> Path:
    """The designed variant's model YAML (kept when it exists)."""
    path = ctx.out / "variants" / f"{pruning.stem}_variant.yaml"
    if not path.exists():
        config = design_variant.VariantConfig(**section.variant, pruning=str(pruning), out_dir=ctx.out / "variants")
        announce(config)
        design_variant.run(config)
    return path


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    return {"pruning": read_tables(out, FOLDER), "pruned": read_tables(out, "pruned", "summary.csv")}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per model and block: the runs, and each kind's kept width over the block's input width (mean, s.d.
    over runs)."""
    frame = tables["pruning"]
    blocks = frame.groupby(["model", "block", "stage", "in_width"])
    table = blocks.agg(
        runs=("source", "nunique"), **{f"{k}_{s}": (f"{k}_ratio", s) for k in KINDS for s in ("mean", "std")}
    )
    return table.reset_index()


def spread(values: pd.Series) -> str:
    """Mean, and the s.d. over runs where there are several."""
    return f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")


def kept_lines(frame: pd.DataFrame) -> list[str]:
    """The means over blocks and runs beside the paper's, and the findings on V against Q/K and late blocks."""
    paper = paper_table("fig5_taylor_pruning_swin_t")
    per_run = frame.groupby("source")[["v_ratio", "qk_ratio"]].mean()
    kept_more = compare(100 * per_run["v_ratio"], 100 * per_run["qk_ratio"], "greater")
    # the share of a block's prunable channels (Q/K, V, FFN hidden) kept, ours and the paper's
    before = sum(frame[f"{k}_before"] for k in KINDS)
    kept = frame.assign(pct=100 * sum(frame[f"{k}_kept"] for k in KINDS) / before)
    theirs = paper.assign(pct=100 * (paper["qk_ratio"] + paper["v_ratio"] + paper["ffn_ratio"]) / 6, source="paper")
    paper_late, paper_early = late_and_early(theirs, "pct")
    cuts = "; ".join(
        f"{model}: {compare(*late_and_early(group, 'pct'), 'less', paired=True).describe()}"
        for model, group in kept.groupby("model")
    )
    return [
        "",
        f"Means, ours: Q/K {frame['qk_ratio'].mean():.2f}, V {frame['v_ratio'].mean():.2f}, FFN "
        f"{frame['ffn_ratio'].mean():.2f} (before pruning 1, 1, 4). Paper (Swin-T, ImageNet): Q/K "
        f"{paper['qk_ratio'].mean():.2f}, V {paper['v_ratio'].mean():.2f}, FFN {paper['ffn_ratio'].mean():.2f}.",
        f'Finding "V keeps more channels than Q/K" (V minus Q/K kept, % of the input width, each pruning run a '
        f"run): {kept_more.describe()}.",
        'Finding "pruning cuts most in the last blocks" (share of a block\'s Q/K, V and FFN channels kept, the '
        "last third of the blocks minus the first third, points, paired within each pruning run): "
        f"{cuts} (paper's Swin-T: {paper_late.iloc[0] - paper_early.iloc[0]:+.1f}).",
    ]


def top1_lines(pruned: pd.DataFrame) -> list[str]:
    """Top-1 before pruning, after and after fine-tuning, and the parameters and FLOPs kept, per model."""
    columns = [c for c in ("top1_before", "top1_after", "top1_finetuned") if c in pruned]
    rows = []
    for model, group in pruned.groupby("model"):
        top1 = [spread(group[c]) + "%" for c in columns] + ["-"] * (3 - len(columns))
        params = (group["params_after"] / group["params_before"]).mean()
        flops = (group["flops_after"] / group["flops_before"]).mean()
        rows.append([model, len(group), *top1, f"{params:.2f}", f"{flops:.2f}"])
    header = ["model", "runs", "top-1 before", "after pruning", "after fine-tuning", "params kept", "FLOPs kept"]
    swin = paper_table("fig5_pruning_top1").iloc[0]
    return ["", *markdown_table(pd.DataFrame(rows, columns=header))] + [
        "",
        f"Paper (Swin-T, ImageNet): {swin.top1_before}% before pruning, {swin.top1_pruned}% after.",
    ]


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["pruning"] is None:
        return ["Not run."]
    table = summarize(found)

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
    lines = markdown_table(cells) + kept_lines(found["pruning"])
    if found["pruned"] is not None:
        lines += top1_lines(found["pruned"])
    return lines
