"""Figure 4: how alike the attention heads of a block are, with full, split and cascaded heads, and the controls
that tell redundant heads from heads that do not attend yet.

Stage: `analysis/head_similarity.py` on every run of the proxies the preset names, for each feature (attention
maps, head outputs), at each training budget (the proxies' snapshots), plus each proxy's architecture freshly
initialised (the random-initialisation control). out/head_similarity/index.csv says what each table measured.

The report tests the paper's "feeding each head its own channel split lowers head similarity" and "heads are more
alike in the late blocks" on the paper's metric (max cosine to another head) and on the controls: attention
entropy (flat maps are alike by construction), the similarity of maps centred on the uniform map, and linear CKA
of head outputs (basis-invariant); each at every budget, the verdict at the longest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import head_similarity
from analysis.figures import proxies
from analysis.pipeline import (
    Context,
    Figure,
    announce,
    at_longest,
    budget_label,
    family,
    read_tables,
    settings_of,
    tool_config,
    with_sidecar,
)
from analysis.published import paper_table
from analysis.verdicts import (
    NOT_REPRODUCED,
    UNCLAIMED,
    Finding,
    Verdict,
    as_verdict,
    compare,
    late_and_early,
    movement,
)
from efficientvit.config import knob
from efficientvit.results import markdown_table, write_results

STAGE = "fig4"
TITLE = "Figure 4: head similarity, full vs split heads"
BUDGET_FIGURE = "fig4_budget.png"  # each finding against the training budget
HEATMAP = "fig4_head_similarity_heatmap.png"  # one trained full-heads run, its last block's pairs of heads
FOLDER = "head_similarity"
OWNED = ("data", "model", "model_config", "checkpoint", "feature", "device", "run", "out_dir", "random_init")
SimilaritySettings = settings_of(head_similarity.SimilarityConfig, OWNED)
METRICS = {  # what each feature is compared by: the paper's metric, then its control
    "attention": ("mean_max_similarity", "centred_mean_max_similarity"),
    "output": ("mean_max_similarity", "cka_mean_max"),
}
LABELS = {
    "mean_max_similarity": "max cosine (paper's metric)",
    "centred_mean_max_similarity": "max cosine of centred maps",
    "cka_mean_max": "max linear CKA",
}
SPLIT = "feeding each head its own channel split lowers head similarity"
LATE = "heads are more alike in the late blocks"


@dataclass
class Section:
    proxies: list[str] = knob(help="the proxies whose runs are measured")
    features: list[str] = knob(["attention"], "what is compared: attention maps, head outputs or both")
    similarity: SimilaritySettings = knob(SimilaritySettings(), "analysis/head_similarity.py's settings: images, ...")
    random_init: bool = knob(True, "also measure each proxy's architecture freshly initialised (the control row)")


def check(preset) -> None:
    proxies.require(preset, STAGE, preset.fig4.proxies)


def measure(
    ctx: Context, section: Section, name: str, checkpoint: Path, feature: str, *, random: bool = False
) -> list[Path]:
    """One measurement (kept when its table exists); the paths of its tables."""
    paths = [p for table in ("summary", "pairwise") for p in with_sidecar(ctx.out / FOLDER / f"{name}_{table}.csv")]
    if not paths[0].exists():
        config = tool_config(
            head_similarity.SimilarityConfig,
            section.similarity,
            data=str(ctx.data),
            checkpoint=str(checkpoint),
            feature=feature,
            random_init=random,
            device=ctx.device,
            run=name,
            out_dir=ctx.out / FOLDER,
        )
        announce(config)
        head_similarity.run(config)
    return paths


def run(ctx: Context, section: Section) -> list[Path]:
    """The stage at one budget (ctx.budget): every run of every proxy named, every feature; the random-initialisation
    controls with the first budget. A measurement already written is kept."""
    trained, budget = ctx.preset.proxies, ctx.budget
    checkpoints = proxies.checkpoints(trained, ctx.runs, budget)
    suffix = "" if budget is None else f"_e{budget}"
    rows, written = [], []
    for proxy in section.proxies:
        for run_name in proxies.run_names(trained, proxy):
            for feature in section.features:
                name = f"{run_name}{suffix}_{feature}"
                written += measure(ctx, section, name, checkpoints[run_name], feature)
                rows.append({"table": name, "proxy": proxy, "run": run_name, "budget": budget})
        if section.random_init and budget == proxies.budgets(trained)[0]:
            first = proxies.run_names(trained, proxy)[0]
            for feature in section.features:
                name = f"{proxy}_random_init_{feature}"
                written += measure(ctx, section, name, checkpoints[first], feature, random=True)
                rows.append({"table": name, "proxy": proxy, "run": name, "budget": 0})
    return written + with_sidecar(write_index(ctx.out / FOLDER / "index.csv", rows))


def write_index(path: Path, rows: list[dict]) -> Path:
    """The index of what each table measured, added to what earlier budgets wrote."""
    index = pd.DataFrame(rows)
    if path.exists():
        index = pd.concat([pd.read_csv(path), index]).drop_duplicates("table", keep="last")
    return write_results(index, path, {"index": "proxy run and training budget (epochs; 0: random init) per table"})


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    """The run's summaries, each row with its family, proxy run and budget (epochs; 0 for the random-init control,
    NaN for a run written before budgets were kept: its trained model)."""
    frame = read_tables(out, FOLDER, "*_summary.csv")
    if frame is None:
        return {"summary": None}
    index = read_tables(out, FOLDER, "index.csv")
    frame["source"] = frame["source"].str.removesuffix("_summary")
    if index is not None:
        index = index[["table", "proxy", "run", "budget"]].rename(columns={"table": "source"})
        frame = frame.merge(index, on="source", how="left")
    else:
        frame["budget"] = np.where(frame["checkpoint"] == "random_init", 0, np.nan)
    frame["family"] = frame["model"].map(family)
    frame["control"] = frame["checkpoint"] == "random_init"
    for column in ("centred_mean_max_similarity", "cka_mean_max", "entropy_mean", "near_uniform"):
        if column not in frame:  # written before the controls existed
            frame[column] = np.nan
    return {"summary": frame}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per family, feature, heads kind and budget (the random-init control at budget 0): the runs, the
    paper's metric and its control (means over blocks and runs, %), the s.d. over runs of the paper's metric (seeds
    vary far more than the images do), the per-block means, the mean attention entropy and how many blocks are near
    uniform."""
    frame = tables["summary"]
    rows = []
    keys = ["family", "feature", "attention_kind", "budget"]
    for (name, feature, kind, budget), group in frame.groupby(keys, dropna=False, sort=True):
        control = METRICS[feature][1]
        per_run = 100 * group.groupby("source")["mean_max_similarity"].mean()
        rows.append(
            {
                "family": name,
                "feature": feature,
                "heads": kind,
                "budget": budget,
                "runs": group["source"].nunique(),
                "similarity_pct": 100 * group["mean_max_similarity"].mean(),
                "sd_over_runs_pct": per_run.std() if len(per_run) > 1 else float("nan"),
                "per_block_pct": list(100 * group.groupby("block")["mean_max_similarity"].mean()),
                "max_of_mean_pct": 100 * group["max_of_mean_similarity"].mean(),
                "control_metric": control,
                "control_pct": 100 * group[control].mean(),
                "entropy": group["entropy_mean"].mean(),
                "near_uniform_blocks": int(group["near_uniform"].eq(True).sum()),
                "blocks": len(group),
            }
        )
    return pd.DataFrame(rows)


def findings(tables: dict[str, pd.DataFrame | None], out: Path | None = None) -> pd.DataFrame:
    """Full heads against split (and cascaded) heads, per family, feature, metric (the paper's and its control)
    and budget: a run is one trained proxy (its mean over blocks, %); Welch's interval across runs. The paper's
    direction: full heads more alike (a positive effect); its size, the paper's own full minus split (the paper's
    metric); the caveat, when a proxy read had not learned."""
    frame = tables["summary"]
    trained = frame[~frame["control"]]
    theirs = paper_split_effects()
    rows = []
    for (name, feature, budget), group in trained.groupby(["family", "feature", "budget"], dropna=False):
        kinds = set(group["attention_kind"])
        caveat = proxies.caveat(out, set(group["run"]), budget) if out is not None and "run" in group else ""
        scale = proxies.scale(out, set(group["run"]) if "run" in group else set())
        for other in ("split", "cascade"):
            if {"full", other} <= kinds:
                for metric in METRICS[feature]:
                    per_run = group.groupby(["attention_kind", "source"])[metric].mean()
                    paper = theirs.get(name) if metric == METRICS[feature][0] and other == "split" else None
                    result = compare(
                        100 * per_run["full"], 100 * per_run[other], paper=paper, caveat=caveat, scale=scale
                    )
                    rows.append(
                        {
                            "family": name,
                            "feature": feature,
                            "comparison": f"full minus {other}",
                            "metric": metric,
                            "budget": budget,
                            "effect": result.effect,
                            "low": result.low,
                            "high": result.high,
                            "verdict": result.verdict,
                            "runs": result.runs,
                            "text": result.describe(),
                            "evidence": result.evidence(),
                            "word": result.word(),
                        }
                    )
    return pd.DataFrame(rows)


def table_lines(summary: pd.DataFrame) -> list[str]:
    """The paper's metric beside its controls, per family, feature, heads and budget."""
    cells = pd.DataFrame(
        {
            "family": summary["family"],
            "feature": summary["feature"],
            "heads": summary["heads"],
            "budget": summary["budget"].map(budget_label),
            "runs": summary["runs"],
            "max cosine (paper's metric, ± s.d. over runs)": [
                f"{r.similarity_pct:.1f}%" + ("" if np.isnan(r.sd_over_runs_pct) else f" ± {r.sd_over_runs_pct:.1f}")
                for r in summary.itertuples()
            ],
            "control": [
                "-" if np.isnan(r.control_pct) else f"{r.control_pct:.1f}% ({LABELS[r.control_metric]})"
                for r in summary.itertuples()
            ],
            "entropy H/log N": summary["entropy"].map(lambda v: "-" if np.isnan(v) else f"{v:.3f}"),
            "near-uniform blocks": [
                "-" if np.isnan(r.entropy) else f"{r.near_uniform_blocks} of {r.blocks}" for r in summary.itertuples()
            ],
            "per block (%)": [" ".join(f"{v:.0f}" for v in blocks) for blocks in summary["per_block_pct"]],
        }
    )
    return markdown_table(cells)


def longest(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows at the longest training budget, and the random-init controls."""
    return pd.concat([at_longest(summary), summary[summary["budget"] == 0]], ignore_index=True)


def along_training(found: pd.DataFrame) -> list[str]:
    """Each comparison's effect at every budget, the paper's metric and its control side by side."""
    if found.empty or found["budget"].nunique() < 2:
        return []
    wide = found.pivot_table(
        index=["family", "feature", "comparison", "budget"], columns="metric", values="text", aggfunc="first"
    ).reset_index()
    cells = pd.DataFrame(
        {
            "family": wide["family"],
            "feature": wide["feature"],
            "comparison": wide["comparison"],
            "budget": wide["budget"].map(budget_label),
            "max cosine (paper's metric), points": wide["mean_max_similarity"],
            "control, points": [
                r.get("centred_mean_max_similarity") if r["feature"] == "attention" else r.get("cka_mean_max")
                for _, r in wide.iterrows()
            ],
        }
    )
    return [
        "",
        "Along training (each effect with its 95% interval and verdict at that budget):",
        "",
        *markdown_table(cells),
    ]


def finding_lines(found: pd.DataFrame) -> list[str]:
    """Per family, feature and comparison: the paper's metric and the control at the longest budget, and how the
    paper's metric moved from the shortest budget."""
    if found.empty:
        return ["needs both full and split runs"]
    lines = []
    for (name, feature, comparison), group in found.groupby(["family", "feature", "comparison"], sort=False):
        ordered = group.sort_values("budget", na_position="last")
        last = ordered[ordered["budget"] == ordered["budget"].max()] if ordered["budget"].notna().any() else ordered
        paper, control = (last[last["metric"] == m].iloc[0] for m in METRICS[feature])
        text = f"{name} ({feature}), {comparison}, points: {paper.text}"
        if not np.isnan(control.effect):
            text += f"; {LABELS[control.metric]}: {control.text}"
        first = ordered[ordered["metric"] == METRICS[feature][0]].iloc[0]
        if pd.notna(first.budget) and first.budget != paper.budget:
            theirs = paper_split_effects().get(name, 0.0)
            text += f"; from {budget_label(first.budget)} to {budget_label(paper.budget)} the effect " + movement(
                as_verdict(first), as_verdict(paper), theirs
            )
        lines.append(text)
    return lines


def reason(summary: pd.DataFrame, found: pd.DataFrame) -> str:
    """Why the paper's metric may reverse on these proxies, as the controls say: split-head maps flatter (higher
    entropy, more near-uniform blocks) and the reversal gone once the maps are centred."""
    if found.empty:
        return ""
    last = at_longest(summary)
    maps = last[last["feature"] == "attention"].set_index(["family", "heads"])
    parts = []
    for name in sorted({f for f, _ in maps.index}):
        if (
            (name, "full") in maps.index
            and (name, "split") in maps.index
            and pd.notna(maps.loc[(name, "full")].entropy)
        ):
            full, split = maps.loc[(name, "full")], maps.loc[(name, "split")]
            parts.append(
                f"{name}: entropy full {full.entropy:.3f} vs split {split.entropy:.3f}, near-uniform blocks "
                f"{full.near_uniform_blocks} vs {split.near_uniform_blocks} of {full.blocks}"
            )
    reversed_ = found[(found["metric"] == "mean_max_similarity") & (found["verdict"] == NOT_REPRODUCED)]
    lead = (
        "Where the paper's metric is not reproduced, flatter maps are the first suspect (two uniform maps have "
        "cosine 1): "
        if len(reversed_)
        else "Attention entropy (1 = uniform maps, alike by construction): "
    )
    return lead + ("; ".join(parts) if parts else "not measured (no entropy in these tables)") + "."


NO_TREND = 2.0  # points: a paper curve whose late blocks differ from its early ones by less shows no trend


def late_effects(
    frame: pd.DataFrame, budget: float | None = None, out: Path | None = None
) -> list[tuple[str, Verdict, float | None]]:
    """Full heads' attention maps at `budget` (default the longest), per family: the last third of the blocks
    against the first, paired within each run, in the direction the paper's own curve of that family takes (its
    size the yardstick); where that curve shows no trend (under NO_TREND points) the finding is not the paper's for
    that family. With the paper's value (None where it has no curve)."""
    paper = paper_table("fig4_head_similarity")
    paper_full = paper[paper["heads"] == "full"].assign(family=lambda f: f["model"].map(family))
    full_maps = frame[(frame["attention_kind"] == "full") & (frame["feature"] == "attention")]
    full_maps = at_longest(full_maps) if budget is None else full_maps[full_maps["budget"] == budget]
    effects = []
    for name, group in full_maps.groupby("family"):
        late, early = late_and_early(group.assign(pct=100 * group["mean_max_similarity"]), "pct")
        theirs = paper_full[paper_full["family"] == name].assign(source="paper")
        versus = None
        if len(theirs):
            paper_late, paper_early = late_and_early(theirs, "similarity_pct")
            versus = paper_late.iloc[0] - paper_early.iloc[0]
        caveat = proxies.caveat(out, set(group["run"]), group["budget"].iloc[0]) if "run" in group else ""
        scale = proxies.scale(out, set(group["run"]) if "run" in group else set())
        expect = "less" if versus is not None and versus < 0 else "greater"
        result = compare(late, early, expect, paired=True, paper=versus, caveat=caveat, scale=scale)
        if versus is not None and abs(versus) < NO_TREND:
            result = dataclasses.replace(result, verdict=UNCLAIMED)
        effects.append((name, result, versus))
    return effects


def late_verdicts(frame: pd.DataFrame, out: Path) -> list[str]:
    """The finding at the longest budget per family, and how it moved from the shortest trained budget."""
    budgets = sorted(b for b in frame["budget"].dropna().unique() if b != 0)
    first = {name: result for name, result, _ in late_effects(frame, budgets[0])} if len(budgets) > 1 else {}
    lines = []
    for name, result, versus in late_effects(frame, out=out):
        text = f"{name}: {result.describe()}" + ("" if versus is None else f" (paper: {versus:+.1f})")
        if name in first:
            moved = movement(first[name], result, 0.0 if versus is None else versus)
            text += f", from {budget_label(budgets[0])} to {budget_label(budgets[-1])} it {moved}"
        lines.append(text)
    return lines


def released_lines(out: Path, frame: pd.DataFrame) -> list[str]:
    """Released weights' full heads beside the paper's full-heads curve of the same family, block by block
    (attention maps, the paper's metric): like for like, the comparison the proxies cannot give."""
    weights = proxies.tables(out)["released"]
    if weights is None or "run" not in frame:
        return []
    ours = frame[frame["run"].isin(weights["proxy"]) & ~frame["control"] & (frame["feature"] == "attention")]
    paper = paper_table("fig4_head_similarity")
    paper = paper[paper["heads"] == "full"].assign(family=lambda f: f["model"].map(family))
    rows = []
    for (run, name), group in ours.groupby(["run", "family"]):
        theirs = paper[paper["family"] == name].set_index("block")["similarity_pct"]
        for r in group.sort_values("block").itertuples():
            paper_value = theirs.get(r.block, np.nan)
            rows.append([run, r.block, 100 * r.mean_max_similarity, paper_value])
    if not rows:
        return []
    table = pd.DataFrame(rows, columns=["weights", "block", "ours", "paper"])
    cells = table.assign(
        ours=table["ours"].map("{:.1f}%".format),
        paper=table["paper"].map(lambda v: "-" if np.isnan(v) else f"{v:.1f}%"),
        difference=(table["ours"] - table["paper"]).map(lambda v: "-" if np.isnan(v) else f"{v:+.1f}"),
    )
    return [
        "",
        "Released weights' full heads beside the paper's full-heads curves, block by block (attention maps, max "
        "cosine, %; the paper's curves are of its 1.25x subnets of DeiT-T and Swin-T, the released models are the "
        "full ones):",
        "",
        *markdown_table(cells),
    ]


def paper_split_effects() -> dict[str, float]:
    """The paper's full minus split heads, mean over blocks, per family (points)."""
    paper = paper_table("fig4_head_similarity").assign(family=lambda f: f["model"].map(family))
    means = paper.groupby(["family", "heads"])["similarity_pct"].mean()
    return {name: means[(name, "full")] - means[(name, "split")] for name, _ in means.index if (name, "split") in means}


def glance(out: Path) -> list[Finding]:
    """Both findings at the longest budget, with their controls, for the report's table at a glance."""
    found = tables(out)
    if found["summary"] is None:
        return []
    verdicts, theirs, rows = findings(found, out), paper_split_effects(), []
    if not verdicts.empty:
        for (name, feature, comparison), group in verdicts.groupby(["family", "feature", "comparison"], sort=False):
            last = at_longest(group)
            paper, control = (last[last["metric"] == m].iloc[0] for m in METRICS[feature])
            budget = budget_label(paper.budget)
            rows.append(
                Finding(
                    "Fig. 4",
                    SPLIT,
                    f"{proxies.subject(out, name)}, {'attention maps' if feature == 'attention' else 'head outputs'}, "
                    f"{comparison} heads, {budget}",
                    paper.evidence,
                    paper.word,
                    control="-" if np.isnan(control.effect) else f"{LABELS[control.metric]}: {control.text}",
                    paper=f"{theirs[name]:+.1f} (ImageNet)" if name in theirs and comparison.endswith("split") else "-",
                )
            )
    budget = budget_label(at_longest(found["summary"])["budget"].max())
    for name, result, versus in late_effects(found["summary"], out=out):
        rows.append(
            Finding(
                "Fig. 4",
                LATE,
                f"{proxies.subject(out, name)}, full heads, attention maps, {budget}: last third of the blocks minus "
                "the first",
                result.evidence(),
                result.word(),
                paper="-" if versus is None else f"{versus:+.1f} (ImageNet)",
            )
        )
    return rows


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["summary"] is None:
        return ["Not run."]
    summary, verdicts = summarize(found), findings(found, out)
    paper = paper_table("fig4_head_similarity").groupby(["model", "heads"])["similarity_pct"].mean()
    later = late_verdicts(found["summary"], out)
    budget_figure = [f"![{TITLE}, along training](figures/{BUDGET_FIGURE})"]
    heatmap = [
        f"![one trained full-heads run, the cosine of every pair of heads in its last block](figures/{HEATMAP})",
        "",
        "The cosine of each pair of heads in the last block of one trained full-heads run at the longest budget "
        "(the random-initialisation control, whose maps are all uniform, gives 1.00 in every cell).",
    ]
    return (
        table_lines(longest(summary))
        + released_lines(out, found["summary"])
        + along_training(verdicts)
        + (["", *budget_figure] if (out / "figures" / BUDGET_FIGURE).exists() else [])
        + (["", *heatmap] if (out / "figures" / HEATMAP).exists() else [])
        + [
            "",
            "Max cosine: per image and window, each head's highest cosine similarity to another head of its block, "
            "averaged over windows, heads and images (the paper's caption). Controls: for attention maps the same on "
            "maps minus the uniform map (two uniform maps give 0, not 1) and the maps' entropy H/log N (1: uniform; a "
            f"block is near uniform at {head_similarity.NEAR_UNIFORM} or more); for head outputs linear CKA (invariant "
            "to each head's choice of V basis). Random init: the same architectures untrained, on the same images.",
            "",
            "Paper (ImageNet, mean over 12 blocks): "
            + ", ".join(f"{m} {h} {v:.1f}%" for (m, h), v in paper.items())
            + ".",
            f'Finding "{SPLIT}" (full minus split, Welch over runs): ' + "; ".join(finding_lines(verdicts)) + ".",
            reason(summary, verdicts),
            f'Finding "{LATE}" (full heads, attention maps: the mean over the last '
            "third of the blocks minus the first third, points, paired within each run, in the direction of the "
            f"paper's own curve of the same family; a family whose curve moves less than {NO_TREND:g} points has no "
            "such finding in the paper: Swin-T's rises, DeiT-T's does not): "
            + ("; ".join(later) if later else "needs full-heads runs on attention maps")
            + ".",
        ]
    )


def draw(section: Section, images: int) -> Section:
    """The section measuring on a draw of `images` images (`reproduce --images`)."""
    return dataclasses.replace(section, similarity=dataclasses.replace(section.similarity, images=images))


FIGURE = Figure(
    STAGE,
    Section,
    "Figure 4: head similarity",
    run,
    along_training=True,
    reads=("proxies",),
    check=check,
    title=TITLE,
    report=report,
    glance=glance,
    folder=FOLDER,
    notebook="fig4_head_similarity",
    draw=draw,
)
