"""Figure 4: how alike the attention heads of a block are, with full, split and cascaded heads.

Stage: `analysis/head_similarity.py` on every run of the proxies the preset names, for each feature (attention
maps, head outputs). The report tests the paper's "feeding each head its own channel split lowers head
similarity" and "heads are more alike in the late blocks".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import head_similarity
from analysis.figures import proxies
from analysis.pipeline import Context, announce, family, read_tables, tool_settings, with_sidecar
from analysis.published import paper_table
from analysis.verdicts import compare, late_and_early
from efficientvit.config import knob
from efficientvit.results import markdown_table

STAGE = "fig4"
TITLE = "Figure 4: head similarity, full vs split heads"
FIGURE = "fig4_head_similarity.png"
FOLDER = "head_similarity"
OWNED = ("data", "model", "model_config", "checkpoint", "feature", "device", "run", "out_dir")


@dataclass
class Section:
    proxies: list[str] = knob(help="the proxies whose runs are measured")
    features: list[str] = knob(["attention"], "what is compared: attention maps, head outputs or both")
    similarity: dict = knob({}, "settings of analysis/head_similarity.py (SimilarityConfig: images, batch, ...)")

    def __post_init__(self):
        self.similarity = tool_settings(head_similarity.SimilarityConfig, self.similarity, "fig4: similarity", OWNED)


def run(ctx: Context, section: Section, trained: proxies.Section) -> list[Path]:
    """The stage: every run of every proxy named, every feature; a measurement already written is kept."""
    written = []
    checkpoints = proxies.checkpoints(trained, ctx.runs)
    for proxy_run in [run for proxy in section.proxies for run in proxies.run_names(trained, proxy)]:
        for feature in section.features:
            name = f"{proxy_run}_{feature}"
            written += [
                p for table in ("summary", "pairwise") for p in with_sidecar(ctx.out / FOLDER / f"{name}_{table}.csv")
            ]
            if (ctx.out / FOLDER / f"{name}_summary.csv").exists():
                continue
            config = head_similarity.SimilarityConfig(
                **section.similarity,
                data=str(ctx.data),
                checkpoint=str(checkpoints[proxy_run]),
                feature=feature,
                device=ctx.device,
                run=name,
                out_dir=ctx.out / FOLDER,
            )
            announce(config)
            head_similarity.run(config)
    return written


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    frame = read_tables(out, FOLDER, "*_summary.csv")
    return {"summary": None if frame is None else frame.assign(family=frame["model"].map(family))}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per family, feature and heads kind: the runs, the mean over blocks and runs of the paper's metric
    (each head's max similarity to another, in %), its 95% half-width over images, the per-block means and the
    maximum-of-means variant."""
    frame = tables["summary"]
    rows = []
    for (name, feature, kind), group in frame.groupby(["family", "feature", "attention_kind"]):
        rows.append(
            {
                "family": name,
                "feature": feature,
                "heads": kind,
                "runs": group["source"].nunique(),
                "similarity_pct": 100 * group["mean_max_similarity"].mean(),
                # the blocks' errors are correlated (the same images): the mean of their half-widths bounds the mean's
                "ci95_pct": 100 * group["mean_max_similarity_ci95"].mean(),
                "per_block_pct": list(100 * group.groupby("block")["mean_max_similarity"].mean()),
                "max_of_mean_pct": 100 * group["max_of_mean_similarity"].mean(),
            }
        )
    return pd.DataFrame(rows)


def split_verdicts(frame: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Full heads against split (and cascaded) heads, per family and feature: a run is one trained proxy (its mean
    over blocks)."""
    per_run = frame.groupby(["family", "feature", "attention_kind", "source"])["mean_max_similarity"].mean()
    kinds = set(zip(table["family"], table["feature"], table["heads"]))
    lines = []
    for name, feature in sorted({(f, feat) for f, feat, _ in kinds}):
        if (name, feature, "full") in kinds and (name, feature, "split") in kinds:
            for other in ("split", "cascade"):
                if (name, feature, other) in kinds:
                    result = compare(100 * per_run[name, feature, "full"], 100 * per_run[name, feature, other])
                    lines.append(f"{name} ({feature}), full minus {other}, points: {result.describe()}")
    return lines


def late_verdicts(frame: pd.DataFrame) -> list[str]:
    """Full heads' attention maps: the last third of the blocks against the first, paired within each run, beside
    the paper's own curve of that family."""
    paper = paper_table("fig4_head_similarity")
    paper_full = paper[paper["heads"] == "full"].assign(family=lambda f: f["model"].map(family))
    full_maps = frame[(frame["attention_kind"] == "full") & (frame["feature"] == "attention")]
    lines = []
    for name, group in full_maps.groupby("family"):
        late, early = late_and_early(group.assign(pct=100 * group["mean_max_similarity"]), "pct")
        theirs = paper_full[paper_full["family"] == name].assign(source="paper")
        versus = ""
        if len(theirs):
            paper_late, paper_early = late_and_early(theirs, "similarity_pct")
            versus = f" (paper: {paper_late.iloc[0] - paper_early.iloc[0]:+.1f})"
        lines.append(f"{name}: {compare(late, early, 'greater', paired=True).describe()}{versus}")
    return lines


def report(out: Path) -> list[str]:
    found = tables(out)
    if found["summary"] is None:
        return ["Not run."]
    table = summarize(found)
    cells = pd.DataFrame(
        {
            "family": table["family"],
            "feature": table["feature"],
            "heads": table["heads"],
            "runs": table["runs"],
            "mean over blocks of the max head similarity (± 95% CI over images)": [
                f"{r.similarity_pct:.1f}% ± {r.ci95_pct:.1f}" for r in table.itertuples()
            ],
            "per block (%)": [" ".join(f"{v:.0f}" for v in blocks) for blocks in table["per_block_pct"]],
            "maximum of the image means": table["max_of_mean_pct"].map("{:.1f}%".format),
        }
    )
    paper = paper_table("fig4_head_similarity").groupby(["model", "heads"])["similarity_pct"].mean()
    splits, later = split_verdicts(found["summary"], table), late_verdicts(found["summary"])
    return markdown_table(cells) + [
        "",
        "Max head similarity: per image and window, each head's highest cosine similarity to another head "
        "of its block, averaged over windows, heads and images (the paper's caption); the last column "
        "takes the maximum after averaging each pair over the images instead.",
        "",
        "Paper (ImageNet, mean over 12 blocks): " + ", ".join(f"{m} {h} {v:.1f}%" for (m, h), v in paper.items()) + ".",
        'Finding "feeding each head its own channel split lowers head similarity": '
        + ("; ".join(splits) if splits else "needs both full and split runs")
        + ".",
        'Finding "heads are more alike in the late blocks" (full heads, attention maps: the mean over the last '
        "third of the blocks minus the first third, points, paired within each run; the paper's own curves show "
        "it for Swin-T, not for DeiT-T): "
        + ("; ".join(later) if later else "needs full-heads runs on attention maps")
        + ".",
    ]
