"""results/REPORT.md: for each figure, our result, the paper's, and whether the paper's finding holds here.

The paper's values are the CSVs in analysis/published/ (Table 2 exact, Figs. 3-5 read off the plots).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.published import paper_table
from analysis.verdicts import best_in_range, compare
from efficientvit.files import atomic_write_text
from efficientvit.results import listed_outputs, recorded_stages, stage_timing


def csvs(out: Path, folder: str, pattern: str = "*.csv") -> pd.DataFrame | None:
    """The run's own tables in out/folder (those its manifest lists), concatenated."""
    files = listed_outputs(out, folder, pattern)
    return pd.concat([pd.read_csv(f).assign(source=f.stem) for f in files], ignore_index=True) if files else None


def spread(values: pd.Series) -> str:
    """Mean, and the s.d. over runs where there are several."""
    return f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")


def late_and_early(frame: pd.DataFrame, value: str, run: str = "source") -> tuple[pd.Series, pd.Series]:
    """Per run, the mean of `value` over its last third of blocks and over its first third (a third rounded down,
    at least one block): the two sides of the paper's "more so in the late blocks", compared paired within each
    run."""
    late, early = {}, {}
    for name, group in frame.groupby(run):
        blocks = sorted(group["block"].unique())
        third = max(1, len(blocks) // 3)
        late[name] = group.loc[group["block"].isin(blocks[-third:]), value].mean()
        early[name] = group.loc[group["block"].isin(blocks[:third]), value].mean()
    return pd.Series(late), pd.Series(early)


def proxies_section(out: Path) -> list[str]:
    frame = csvs(out, "proxies", "summary.csv")
    if frame is None:
        return ["Not run."]
    lines = [
        "| proxy | model | heads | params | epochs | training images | top-1 | top-5 | train img/s | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.proxy} | {r.model} | {r.attention} | {r.params:,} | {r.epochs} | {r.train_images:,} | "
        f"{r.top1:.1f}% | {r.top5:.1f}% | {r.train_img_s:.0f} | {r.train_minutes:.1f} |"
        for r in frame.itertuples()
    ]
    lines += [
        "",
        "Every analysis below reads these trained proxies (top-1 on the held-out split; the figure shows "
        "each one's training loss, so how far from its plateau it stopped).",
    ]
    return lines


def fig2_section(out: Path) -> list[str]:
    frame = csvs(out, "memory_profile")
    if frame is None:
        return ["Not run."]
    lines = []
    if frame["mode"].nunique() > 1:  # compiled and exported graphs: what each execution path leaves memory-bound
        by_mode = frame[frame["memory_bound"]].pivot_table(index="name", columns="mode", values="share", aggfunc="sum")
        lines += ["| model | " + " | ".join(by_mode.columns) + " |", "|---|" + "---|" * len(by_mode.columns)]
        lines += [f"| {name} | " + " | ".join(f"{100 * v:.1f}%" for v in r) + " |" for name, r in by_mode.iterrows()]
        lines += ["", "The paper's analysis below is on the eager graphs (operators and layer scopes).", ""]
    frame = frame[frame["mode"] == "eager"]
    found = listed_outputs(out, "memory_profile/subnets", "subnets.csv")
    subnets = pd.read_csv(found[0]).set_index("name") if found else pd.DataFrame(columns=["met"])
    bound = frame[frame["memory_bound"]]
    shares = bound.groupby(["name", "mhsa_proportion"], sort=False)["share"].sum().reset_index()
    lines += ["| model | MHSA proportion | speed-up asked (measured) | memory-bound share |", "|---|---|---|---|"]
    for r in shares.itertuples():
        speed = "-"
        if r.name in subnets.index:
            subnet = subnets.loc[r.name]
            speed = f"{subnet.speedup_target}x ({subnet.speedup_measured:.2f}x{'' if subnet.met else ' **missed**'})"
        lines.append(f"| {r.name} | {r.mhsa_proportion:.2f} | {speed} | {100 * r.share:.1f}% |")
    scoped = frame[frame["scope"].isin(["attention", "ffn"])]
    per_scope = (
        scoped.groupby(["name", "scope"], sort=False)
        .apply(lambda g: g.loc[g["memory_bound"], "share"].sum() / g["share"].sum(), include_groups=False)
        .unstack()
    )
    per_scope = per_scope.dropna()
    heavier = compare(100 * per_scope["attention"], 100 * per_scope["ffn"], "greater", paired=True, unit="models")
    lines += [
        "",
        "Share of each layer kind's own time that is memory-bound (models with both kinds of layer):",
        "",
        "| model | attention | FFN |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {100 * r.attention:.1f}% | {100 * r.ffn:.1f}% |" for name, r in per_scope.iterrows()]
    # the pipeline's subnets (<family>_<speed-up>x_p<proportion>) that met their speed-up: a series per family and
    # speed-up, from its fewest to its most MHSA layers
    matched = shares[shares["name"].isin(subnets.index[subnets["met"].astype(bool)])]
    series = matched.assign(series=matched["name"].str.extract(r"^(.+x)_p[\d.]+$")[0])
    ends = series.sort_values("mhsa_proportion").groupby("series")["share"].agg(["first", "last", "count"])
    ends = ends[ends["count"] > 1]
    rises = compare(100 * ends["last"], 100 * ends["first"], "greater", paired=True, unit="subnet series")
    trend = rises.describe() if len(ends) else "no series of two or more throughput-matched subnets: not tested"
    paper = paper_table("fig2_memory_bound").iloc[0]
    lines += [
        "",
        f"Paper ({paper.device}, PyTorch profiler): {paper.memory_bound_pct}% of Swin-T-1.25x's runtime "
        f"({100 * paper.mhsa_proportion:.0f}% MHSA) is memory-bound, most of it inside MHSA.",
        'Finding "memory-bound operations weigh more inside attention than inside FFN" (attention minus FFN, '
        f"points, paired within each profiled model): {heavier.describe()} here (CPU).",
        'Finding "fewer MHSA layers, a smaller memory-bound share" (the throughput-matched subnet with the most '
        "MHSA layers minus the one with the fewest, points, paired within each family and speed-up, one profile "
        f"each; subnets that missed their speed-up left out): {trend}.",
    ]
    return lines


def fig3_section(out: Path) -> list[str]:
    frame = csvs(out, "mhsa_sweep", "sweep.csv")
    if frame is None:
        return ["Not run."]
    paper = paper_table("fig3_mhsa_proportion_top1")
    if "mlp_ratio" not in frame:  # written before the FFN-width search existed: every FFN at its expansion of 4
        frame["mlp_ratio"] = 4.0
    table = (
        frame.groupby(["family", "speedup_target", "mhsa_proportion"])
        .agg(
            actual=("mhsa_proportion_actual", "first"),
            mlp_ratio=("mlp_ratio", "first"),
            top1=("top1", "mean"),
            top1_sd=("top1", "std"),
            seeds=("seed", "nunique"),
            speedup=("speedup_measured", "mean"),
            met=("speedup_met", "all"),
        )
        .reset_index()
    )
    lines = [
        "| family | speed-up target (measured) | MHSA proportion asked (actual) | FFN expansion | top-1 (ours, ± s.d.) "
        "| seeds | top-1 (paper, ImageNet) |",
        "|---|---|---|---|---|---|---|",
    ]
    family_names = {"deit_tiny": "deit_t", "swin_tiny": "swin_t"}
    verdicts = []
    for r in table.itertuples():
        match = paper[
            (paper["family"] == family_names[r.family])
            & (paper["speedup"] == r.speedup_target)
            & ((paper["mhsa_proportion"] - r.mhsa_proportion).abs() < 1e-9)
        ]
        theirs = f"{match['top1'].iloc[0]:.1f}" if len(match) else "-"
        missed = "" if r.met else " **missed**"
        sd = f" ± {r.top1_sd:.1f}" if r.seeds > 1 else ""
        lines.append(
            f"| {r.family} | {r.speedup_target}x ({r.speedup:.2f}x{missed}) | {r.mhsa_proportion:.1f} "
            f"({r.actual:.3f}) | {r.mlp_ratio:g} | {r.top1:.1f}{sd} | {r.seeds} | {theirs} |"
        )
    for (family, speedup), runs in frame.groupby(["family", "speedup_target"]):
        matched = runs[runs["speedup_met"].astype(bool)]
        if matched.empty:
            verdicts.append(f"{family} {speedup}x: no point met its speed-up target")
            continue
        result = best_in_range(matched, "mhsa_proportion_actual", "top1", 0.2, 0.4)
        verdicts.append(
            f"{family} {speedup}x, {matched['mhsa_proportion_actual'].nunique()} throughput-matched points: best "
            f"inside 20-40% in {100 * result.effect:.0f}% of bootstrap draws ({result.runs}): **{result.verdict}**"
        )
    misses = int((~table["met"]).sum())
    lines += [
        "",
        "MHSA proportions are whole layers (asked 0.2 of 12 layers is 2 layers: 0.167). A point marked "
        "**missed** ran more than 5% off its target speed-up even after the wider width search and the FFN-width "
        "search (FFN expansion in the table where that search moved it from 4): it is not "
        f"throughput-matched and the verdict leaves it out ({misses} of {len(table)} points here).",
        "Paper: 20-40% MHSA is best for both families and speed-ups.",
        'Finding "a 20-40% MHSA proportion is best": ' + "; ".join(verdicts) + ".",
    ]
    return lines


def fig4_section(out: Path) -> list[str]:
    frame = csvs(out, "head_similarity", "*_summary.csv")
    if frame is None:
        return ["Not run."]
    frame["family"] = frame["model"].str.split("_").str[0]
    lines = [
        "| family | feature | heads | runs | mean over blocks of the max head similarity (± 95% CI over images) | "
        "per block (%) | maximum of the image means |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    means = {}
    for (family, feature, kind), group in frame.groupby(["family", "feature", "attention_kind"]):
        means[(family, feature, kind)] = group["mean_max_similarity"].mean()
        # the blocks' errors are correlated (the same images): the mean of their half-widths bounds the mean's
        ci = group["mean_max_similarity_ci95"].mean()
        per_block = " ".join(f"{100 * v:.0f}" for v in group.groupby("block")["mean_max_similarity"].mean())
        runs, mean = group["source"].nunique(), 100 * means[(family, feature, kind)]
        lines.append(
            f"| {family} | {feature} | {kind} | {runs} | {mean:.1f}% ± {100 * ci:.1f} | {per_block} | "
            f"{100 * group['max_of_mean_similarity'].mean():.1f}% |"
        )
    paper = paper_table("fig4_head_similarity")
    paper_means = paper.groupby(["model", "heads"])["similarity_pct"].mean()
    # a run is one trained proxy (one summary file): its mean over blocks
    per_run = frame.groupby(["family", "feature", "attention_kind", "source"])["mean_max_similarity"].mean()
    for family, feature in sorted({(f, feat) for f, feat, _ in means}):
        if (family, feature, "full") in means and (family, feature, "split") in means:
            for other in ("split", "cascade"):
                if (family, feature, other) in means:
                    result = compare(100 * per_run[family, feature, "full"], 100 * per_run[family, feature, other])
                    verdicts.append(f"{family} ({feature}), full minus {other}, points: {result.describe()}")
    later = []
    full_maps = frame[(frame["attention_kind"] == "full") & (frame["feature"] == "attention")]
    paper_full = paper[paper["heads"] == "full"].assign(family=lambda f: f["model"].str.split("_").str[0])
    for family, group in full_maps.groupby("family"):
        late, early = late_and_early(group.assign(pct=100 * group["mean_max_similarity"]), "pct")
        theirs = paper_full[paper_full["family"] == family].assign(source="paper")
        paper_late, paper_early = late_and_early(theirs, "similarity_pct") if len(theirs) else ([], [])
        versus = f" (paper: {paper_late.iloc[0] - paper_early.iloc[0]:+.1f})" if len(theirs) else ""
        later.append(f"{family}: {compare(late, early, 'greater', paired=True).describe()}{versus}")
    lines += [
        "",
        "Max head similarity: per image and window, each head's highest cosine similarity to another head "
        "of its block, averaged over windows, heads and images (the paper's caption); the last column "
        "takes the maximum after averaging each pair over the images instead.",
        "",
        "Paper (ImageNet, mean over 12 blocks): "
        + ", ".join(f"{m} {h} {v:.1f}%" for (m, h), v in paper_means.items())
        + ".",
        'Finding "feeding each head its own channel split lowers head similarity": '
        + ("; ".join(verdicts) if verdicts else "needs both full and split runs")
        + ".",
        'Finding "heads are more alike in the late blocks" (full heads, attention maps: the mean over the last '
        "third of the blocks minus the first third, points, paired within each run; the paper's own curves show "
        "it for Swin-T, not for DeiT-T): "
        + ("; ".join(later) if later else "needs full-heads runs on attention maps")
        + ".",
    ]
    return lines


def fig5_section(out: Path) -> list[str]:
    frame = csvs(out, "taylor_pruning")
    if frame is None:
        return ["Not run."]
    lines = [
        "| model | block | stage | in width | runs | Q/K kept | V kept | FFN kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    blocks = frame.groupby(["model", "block", "stage", "in_width"])
    for (model, block, stage, width), group in blocks:
        kept = " | ".join(spread(group[f"{kind}_ratio"]) for kind in ("qk", "v", "ffn"))
        lines.append(f"| {model} | {block} | {stage} | {width} | {group['source'].nunique()} | {kept} |")
    paper = paper_table("fig5_taylor_pruning_swin_t")
    ours_v, ours_qk = frame["v_ratio"].mean(), frame["qk_ratio"].mean()
    per_run = frame.groupby("source")[["v_ratio", "qk_ratio"]].mean()
    kept_more = compare(100 * per_run["v_ratio"], 100 * per_run["qk_ratio"], "greater")
    # the share of a block's prunable channels (Q/K, V, FFN hidden) kept, ours and the paper's
    kept = frame.assign(
        pct=100
        * (frame["qk_kept"] + frame["v_kept"] + frame["ffn_kept"])
        / (frame["qk_before"] + frame["v_before"] + frame["ffn_before"])
    )
    theirs = paper.assign(pct=100 * (paper["qk_ratio"] + paper["v_ratio"] + paper["ffn_ratio"]) / 6, source="paper")
    paper_late, paper_early = late_and_early(theirs, "pct")
    cuts = "; ".join(
        f"{model}: {compare(*late_and_early(group, 'pct'), 'less', paired=True).describe()}"
        for model, group in kept.groupby("model")
    )
    lines += [
        "",
        f"Means, ours: Q/K {ours_qk:.2f}, V {ours_v:.2f}, FFN {frame['ffn_ratio'].mean():.2f} "
        f"(before pruning 1, 1, 4). Paper (Swin-T, ImageNet): Q/K {paper['qk_ratio'].mean():.2f}, "
        f"V {paper['v_ratio'].mean():.2f}, FFN {paper['ffn_ratio'].mean():.2f}.",
        f'Finding "V keeps more channels than Q/K" (V minus Q/K kept, % of the input width, each pruning run a '
        f"run): {kept_more.describe()}.",
        'Finding "pruning cuts most in the last blocks" (share of a block\'s Q/K, V and FFN channels kept, the '
        "last third of the blocks minus the first third, points, paired within each pruning run): "
        f"{cuts} (paper's Swin-T: {paper_late.iloc[0] - paper_early.iloc[0]:+.1f}).",
    ]
    pruned = csvs(out, "pruned", "summary.csv")
    if pruned is not None:
        columns = [c for c in ("top1_before", "top1_after", "top1_finetuned") if c in pruned]
        lines += [
            "",
            "| model | runs | top-1 before | after pruning | after fine-tuning | params kept | FLOPs kept |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, group in pruned.groupby("model"):
            top1 = [spread(group[c]) + "%" for c in columns] + ["-"] * (3 - len(columns))
            params = (group["params_after"] / group["params_before"]).mean()
            flops = (group["flops_after"] / group["flops_before"]).mean()
            lines.append(f"| {model} | {len(group)} | {' | '.join(top1)} | {params:.2f} | {flops:.2f} |")
        swin = paper_table("fig5_pruning_top1").iloc[0]
        lines += ["", f"Paper (Swin-T, ImageNet): {swin.top1_before}% before pruning, {swin.top1_pruned}% after."]
    front = csvs(out, "pareto", "pareto.csv")
    if front is not None:
        models = (
            front.groupby("name", sort=False)
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
        lines += [
            "",
            "Accuracy against CPU throughput (32 px, batch 64, interleaved medians), the designed variant and "
            "EfficientViT-M0 trained with the same recipe and budget (top-1: mean ± s.d. over training seeds):",
            "",
            "| model | kind | top-1 | trainings | img/s | params | on the Pareto front |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in models.sort_values("img_s", ascending=False).itertuples():
            sd = f" ± {r.top1_sd:.1f}" if r.runs > 1 else ""
            lines.append(
                f"| {r.name} | {r.kind} | {r.top1:.1f}%{sd} | {r.runs} | {r.img_s:.0f} | {r.params:,} | "
                f"{'yes' if r.pareto else 'no'} |"
            )
        variant, m0 = (front[front["kind"] == kind] for kind in ("variant", "efficientvit"))
        on_front = bool(models.loc[models["kind"] == "variant", "pareto"].all())
        accuracy = compare(variant["top1"], m0["top1"], "greater", unit="trainings")
        lines += [
            "",
            f"The designed variant is {'on' if on_front else 'off'} the accuracy-throughput Pareto front of the "
            "means (no other model both more accurate and faster), running "
            f"{variant['img_s'].iloc[0] / m0['img_s'].iloc[0]:.2f}x EfficientViT-M0's throughput. Its top-1 minus "
            f"M0's, points (Welch over training seeds): {accuracy.describe()}.",
        ]
    variants = listed_outputs(out, "variants", "*.yaml")
    if variants:
        lines += ["", f"Designed variant ({variants[0].name}):", "", "```yaml", variants[0].read_text().strip(), "```"]
    return lines


SECTIONS = [  # (stage, title, section, figure)
    ("proxies", "The proxies", proxies_section, "proxies_training.png"),
    ("fig2", "Figure 2: memory-bound operations", fig2_section, "fig2_memory_bound.png"),
    ("fig3", "Figure 3: MHSA proportion of throughput-matched subnets", fig3_section, "fig3_mhsa_sweep.png"),
    ("fig4", "Figure 4: head similarity, full vs split heads", fig4_section, "fig4_head_similarity.png"),
    ("fig5", "Figure 5: Taylor structured pruning", fig5_section, "fig5_taylor_pruning.png"),
]


def timing_section(out: Path) -> list[str]:
    """How long each stage took and where (summed over the runs that resumed it), from the manifest."""
    timing = stage_timing(out)
    if not timing:
        return []
    lines = ["| stage | minutes | runs | device |", "|---|---|---|---|"]
    lines += [
        f"| {stage} | {t['seconds'] / 60:.1f} | {t['runs']} | {'; '.join(t['devices']) or '-'} |"
        for stage, t in timing.items()
    ]
    total = sum(t["seconds"] for t in timing.values()) / 60
    return lines + [f"| all | {total:.1f} | | |", ""]


def write_report(out: Path, preset: str, data: str) -> Path:
    """REPORT.md from the files the run's manifest lists; a stage the manifest lacks is said to be missing."""
    stages = recorded_stages(out)
    sections = [
        (
            title,
            section(out)
            if stages is None or stage in stages
            else [f"Not run: this results folder's manifest has no `{stage}` stage."],
            figure,
        )
        for stage, title, section, figure in SECTIONS
    ]
    lines = [
        f"# efficientvit-lab reproduction report (preset `{preset}`)",
        "",
        f"Generated by `python analysis/reproduce.py --preset {preset}`. Our numbers come from small proxies "
        f"trained on `{data}` (Fig. 2 times the full-size models); the paper's from ImageNet-scale models. Each "
        "section says whether the paper's finding shows at this scale.",
        "",
        *timing_section(out),
        "Verdicts follow the rules in `analysis/verdicts.py`: a difference **holds** when its 95% t-interval "
        "over runs (Welch's across seeds, paired within a profiled model) lies on the paper's side of zero, "
        "**does not hold** when it lies on the other side, and is **inconclusive** when it straddles zero or a "
        "side has a single run; a best point holds when it falls inside the paper's range in at least 95% of "
        "2,000 bootstrap draws over runs.",
        "",
    ]
    for title, body, figure in sections:
        lines += [f"## {title}", ""]
        if (out / "figures" / figure).exists():
            lines += [f"![{title}](figures/{figure})", ""]
        lines += body + [""]
    return atomic_write_text(out / "REPORT.md", "\n".join(lines))
