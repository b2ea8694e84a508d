"""Figure 2: how much of a vision transformer's inference time goes to memory-bound operations.

Stage: find the throughput-matched DeiT/Swin subnets the preset lists (family x speed-up x MHSA proportion), then
profile them with the full-size models (`analysis/memory_profile.py`). The report tests two of the paper's
readings: memory-bound operations weigh more inside attention than inside FFN, and a subnet with fewer MHSA
layers has a smaller memory-bound share.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from analysis import memory_profile
from analysis.pipeline import (
    Context,
    Figure,
    announce,
    listed_outputs,
    read_tables,
    settings_of,
    tool_config,
    with_sidecar,
)
from analysis.published import paper_table
from analysis.verdicts import Finding, Verdict, compare
from efficientvit.config import knob
from efficientvit.results import markdown_table, write_results
from efficientvit.runtime import resolve_device
from efficientvit.subnet import SearchBudget, find_subnet, save_subnet

STAGE = "fig2"
TITLE = "Figure 2: memory-bound operations"
FOLDER = "memory_profile"
HEAVIER = "memory-bound operations weigh more inside attention than inside FFN"
TREND = "fewer MHSA layers, a smaller memory-bound share"
ProfileSettings = settings_of(memory_profile.ProfileConfig, owned=("subnet_config", "device", "out", "fresh"))


@dataclass
class Subnets:
    families: list[str] = knob([], "families whose throughput-matched subnets are profiled too")
    speedups: list[float] = knob([], "their speed-ups over the full model")
    proportions: list[float] = knob([], "their MHSA proportions")
    search: SearchBudget = knob(SearchBudget(), "the width search's timing budget (batch_size, seconds, rounds, ...)")


@dataclass
class Section:
    profile: ProfileSettings = knob(ProfileSettings(), "analysis/memory_profile.py's settings: models, batch, ...")
    subnets: Subnets = knob(Subnets(), "the throughput-matched subnets profiled beside the full-size models")


def find_subnets(section: Section, folder: Path, img_size: int, device: str) -> tuple[list[Path], list[dict]]:
    """Every subnet the section lists, saved as a model YAML; and whether each met its speed-up."""
    configs, subnets = [], []
    grid = list(itertools.product(section.subnets.families, section.subnets.speedups, section.subnets.proportions))
    # a cold search times full-size models for minutes per subnet: say which one is being timed
    progress = tqdm(grid, desc="searching subnets", unit="subnet", disable=not grid)
    for family, speedup, proportion in progress:
        name = f"{family}_{speedup}x_p{proportion}"
        progress.set_postfix_str(name)
        base = {"img_size": img_size}
        result = find_subnet(family, speedup, proportion, base=base, budget=section.subnets.search, device=device)
        configs.append(save_subnet(result, folder / f"{name}.yaml"))
        subnets.append({"name": name, **{k: v for k, v in result.items() if k not in ("model", "kwargs")}})
    return configs, subnets


def run(ctx: Context, section: Section) -> list[Path]:
    """The stage: the subnets, then the profile of every model (resumed model by model)."""
    out = ctx.out / FOLDER / "profile.csv"
    config = tool_config(memory_profile.ProfileConfig, section.profile, device=ctx.device, out=out, subnet_config=[])
    folder = ctx.out / FOLDER / "subnets"
    configs, subnets = find_subnets(section, folder, config.img_size, resolve_device(ctx.device).type)
    tables = []
    if subnets:  # whether each subnet met its speed-up: the report's trend verdict reads only those that did
        tables = with_sidecar(
            write_results(pd.DataFrame(subnets), folder / "subnets.csv", {"fig2": dataclasses.asdict(section)})
        )
    config = dataclasses.replace(config, subnet_config=[str(c) for c in configs])
    announce(config)
    memory_profile.run(config)
    return with_sidecar(config.out) + configs + tables


def tables(out: Path) -> dict[str, pd.DataFrame | None]:
    found = listed_outputs(out, f"{FOLDER}/subnets", "subnets.csv")
    return {"profile": read_tables(out, FOLDER), "subnets": pd.read_csv(found[0]) if found else None}


def summarize(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per profiled model (eager graphs, the paper's measurement): its name (a subnet's says its family,
    speed-up and MHSA proportion asked), registered model, MHSA proportion and the share of its inference time
    that is memory-bound."""
    frame = tables["profile"]
    eager = frame[frame["mode"] == "eager"]
    bound = eager[eager["memory_bound"]]
    return bound.groupby(["name", "model", "mhsa_proportion"], sort=False)["share"].sum().reset_index()


def mode_lines(frame: pd.DataFrame) -> list[str]:
    """Compiled and exported graphs: what each execution path leaves memory-bound."""
    by_mode = frame[frame["memory_bound"]].pivot_table(index="name", columns="mode", values="share", aggfunc="sum")
    cells = by_mode.map(lambda v: f"{100 * v:.1f}%").rename_axis(index="model", columns=None).reset_index()
    return markdown_table(cells) + [
        "",
        "The paper's analysis below is on the eager graphs (operators and layer scopes).",
        "",
    ]


def scope_shares(eager: pd.DataFrame) -> pd.DataFrame:
    """Per model with both kinds of layer: the share of attention's and of FFN's own time that is memory-bound."""
    scoped = eager[eager["scope"].isin(["attention", "ffn"])]
    per_scope = (
        scoped.groupby(["name", "scope"], sort=False)
        .apply(lambda g: g.loc[g["memory_bound"], "share"].sum() / g["share"].sum(), include_groups=False)
        .unstack()
    )
    return per_scope.dropna()


def heavier(per_scope: pd.DataFrame) -> Verdict:
    """Attention's memory-bound share of its own time minus FFN's, paired within each profiled model."""
    return compare(100 * per_scope["attention"], 100 * per_scope["ffn"], "greater", paired=True, unit="models")


def trend(shares: pd.DataFrame, subnets: pd.DataFrame) -> Verdict | None:
    """The pipeline's subnets (<family>_<speed-up>x_p<proportion>) that met their speed-up, as a series per family
    and speed-up: the most MHSA layers against the fewest, paired within each series (None: no such series)."""
    matched = shares[shares["name"].isin(subnets.index[subnets["met"].astype(bool)])]
    series = matched.assign(series=matched["name"].str.extract(r"^(.+x)_p[\d.]+$")[0])
    ends = series.sort_values("mhsa_proportion").groupby("series")["share"].agg(["first", "last", "count"])
    ends = ends[ends["count"] > 1]
    if not len(ends):
        return None
    return compare(100 * ends["last"], 100 * ends["first"], "greater", paired=True, unit="subnet series")


def subnet_table(found: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """The profiled subnets by name (empty when the run profiled none)."""
    return found["subnets"].set_index("name") if found["subnets"] is not None else pd.DataFrame(columns=["met"])


def speed(name: str, subnets: pd.DataFrame) -> str:
    """A subnet's speed-up, asked and measured, and whether it missed; "-" for a full-size model."""
    if name not in subnets.index:
        return "-"
    subnet = subnets.loc[name]
    return f"{subnet.speedup_target}x ({subnet.speedup_measured:.2f}x{'' if subnet.met else ' **missed**'})"


def report(out: Path) -> list[str]:
    found = tables(out)
    frame = found["profile"]
    if frame is None:
        return ["Not run."]
    lines = mode_lines(frame) if frame["mode"].nunique() > 1 else []
    subnets, shares = subnet_table(found), summarize(found)
    lines += markdown_table(
        pd.DataFrame(
            {
                "model": shares["name"],
                "MHSA proportion": shares["mhsa_proportion"].map("{:.2f}".format),
                "speed-up asked (measured)": [speed(name, subnets) for name in shares["name"]],
                "memory-bound share": (100 * shares["share"]).map("{:.1f}%".format),
            }
        )
    )
    per_scope = scope_shares(frame[frame["mode"] == "eager"])
    series = trend(shares, subnets)
    lines += ["", "Share of each layer kind's own time that is memory-bound (models with both kinds of layer):", ""]
    lines += markdown_table(
        pd.DataFrame(
            {
                "model": per_scope.index,
                "attention": (100 * per_scope["attention"]).map("{:.1f}%".format),
                "FFN": (100 * per_scope["ffn"]).map("{:.1f}%".format),
            }
        )
    )
    paper = paper_table("fig2_memory_bound").iloc[0]
    return lines + [
        "",
        f"Paper ({paper.device}, PyTorch profiler): {paper.memory_bound_pct}% of Swin-T-1.25x's runtime "
        f"({100 * paper.mhsa_proportion:.0f}% MHSA) is memory-bound, most of it inside MHSA.",
        f'Finding "{HEAVIER}" (attention minus FFN, points, paired within each profiled model): '
        f"{heavier(per_scope).describe(where='on this CPU')} here (CPU).",
        f'Finding "{TREND}" (the throughput-matched subnet with the most MHSA layers minus the one with the fewest, '
        "points, paired within each family and speed-up, one profile each; subnets that missed their speed-up left "
        "out): "
        + (
            series.describe(where="on this CPU")
            if series
            else "no series of two or more throughput-matched subnets: not tested"
        )
        + ".",
    ]


def glance(out: Path) -> list[Finding]:
    """Both findings for the report's table at a glance."""
    found = tables(out)
    if found["profile"] is None:
        return []
    eager = found["profile"][found["profile"]["mode"] == "eager"]
    rows = [(HEAVIER, "every profiled model: attention's memory-bound share minus FFN's", heavier(scope_shares(eager)))]
    series = trend(summarize(found), subnet_table(found))
    if series:
        rows.append((TREND, "throughput-matched subnets: the most MHSA layers minus the fewest", series))
    paper = paper_table("fig2_memory_bound").iloc[0]
    theirs = {HEAVIER: f"{paper.memory_bound_pct}% of Swin-T-1.25x memory-bound, most inside MHSA ({paper.device})"}
    return [
        Finding("Fig. 2", claim, on, v.evidence(), v.word("on this CPU"), paper=theirs.get(claim, "-"))
        for claim, on, v in rows
    ]


FIGURE = Figure(
    STAGE,
    Section,
    "Figure 2: memory-bound operations",
    run,
    title=TITLE,
    report=report,
    glance=glance,
    folder=FOLDER,
    notebook="fig2_memory_bound",
)
