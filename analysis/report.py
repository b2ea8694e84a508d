"""results/REPORT.md: a header, the stages' times, then for each figure our result, the paper's, and whether the
paper's finding holds here (each figure module writes its own section).

Re-render a results folder's report from its tables (e.g. after changing a section):
    python analysis/report.py --results results --preset reference --data fashion-mnist
The paper's values are the CSVs in analysis/published/ (Table 2 exact, Figs. 3-5 read off the plots).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from analysis.figures import proxies, registered
from analysis.pipeline import listed_outputs, recorded_stages, stage_timing
from efficientvit.config import knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.files import atomic_write_text
from efficientvit.results import markdown_table

NOTEBOOKS = Path("notebooks")


def sections() -> list[tuple]:
    """The report's sections, one per registered figure with a title: (title, its stage, its figure's file, the
    figures whose report lines it holds: its own, then those reported in it, as the Pareto in Fig. 5's)."""
    figures = registered()
    return [
        (
            figure.title,
            figure.key,
            f"{figure.notebook}.png",
            [figure, *(f for f in figures if f.report_in == figure.key)],
        )
        for figure in figures
        if figure.title is not None
    ]


RULES = (
    "Verdicts follow the rules in `analysis/verdicts.py`: a finding is **reproduced** when its effect's 95% "
    "t-interval over runs (Welch's across seeds, paired within a run or a profiled model) lies on the paper's side "
    "of zero and the effect is at least a third of the paper's; on the paper's side but smaller, **same direction, "
    "Nx smaller**; on the other side, **not reproduced** (on trained proxies the cell adds that it is about these "
    "small models and this device, not the paper's); straddling zero, or with a single run on a side, "
    "**inconclusive**. A verdict read on proxies still learning (below 88% top-1 and not at their plateau: 0.3 "
    "points or more gained over the two epochs before) says **on unconverged proxies** in its own cell. "
    "Fig. 3's best point must beat each neighbour, paired over seeds, to count; the late-blocks finding of Fig. 5 is "
    "a trend over the blocks after the first, and Fig. 4's takes each family's direction from the paper's own curve."
)


def timing_section(out: Path) -> list[str]:
    """How long each stage took and where (summed over the runs that resumed it), from the manifest."""
    timing = stage_timing(out)
    if not timing:
        return []
    rows = [
        [stage, f"{t['seconds'] / 60:.1f}", t["runs"], "; ".join(t["devices"]) or "-"] for stage, t in timing.items()
    ]
    total = sum(t["seconds"] for t in timing.values()) / 60
    rows.append(["all", f"{total:.1f}", "", ""])
    return markdown_table(pd.DataFrame(rows, columns=["stage", "minutes", "runs", "device"])) + [""]


def ran(stage: str, stages: set[str] | None) -> bool:
    """Whether the run did `stage` (at any budget); a folder without a manifest did everything it holds."""
    return stages is None or any(name == stage or name.startswith(f"{stage} (") for name in stages)


def glance_section(out: Path, stages: set[str] | None) -> list[str]:
    """Every finding tested, its evidence and verdict at the longest training budget, in one table."""
    rows = [
        dataclasses.asdict(finding)
        for _, stage, _, figures in sections()
        if ran(stage, stages)
        for figure in figures
        if figure.glance is not None
        for finding in figure.glance(out)
    ]
    if not rows:
        return []
    table = pd.DataFrame(rows).assign(verdict=lambda f: "**" + f["verdict"] + "**")
    learned = proxies.headline(out)
    table.columns = [
        "figure",
        "the paper's finding",
        "tested here on",
        "effect [95% interval], runs",
        "verdict",
        "control",
        "paper",
    ]
    return [
        "## The findings at a glance",
        "",
        "Each finding at the longest training budget (effects in points; the sections below give every budget, "
        "the tables behind each effect and what the controls say):",
        "",
        *markdown_table(table),
        "",
        *(["**The proxies behind Figs. 4 and 5.** " + " ".join(learned), ""] if learned else []),
    ]


def provenance(out: Path, data: str) -> str:
    """Where the run's numbers come from: proxies trained here, or the paper's own released weights read as they
    are (then every comparison with the paper is like for like)."""
    found = proxies.tables(out)
    if found["released"] is not None and found["summary"] is None:
        return (
            f"Our numbers come from the paper's own released weights, read as they are and evaluated on `{data}`: "
            "each section compares them with the paper's like for like."
        )
    return (
        f"Our numbers come from small proxies trained on `{data}` (Fig. 2 times the full-size models); the paper's "
        "from ImageNet-scale models. Each section says whether the paper's finding shows at this scale."
    )


def write_report(out: Path, preset: str, data: str) -> Path:
    """REPORT.md from the files the run's manifest lists; a stage the manifest lacks is said to be missing."""
    stages = recorded_stages(out)
    lines = [
        f"# efficientvit-lab reproduction report (preset `{preset}`)",
        "",
        f"Generated by `python analysis/reproduce.py --preset {preset}`. " + provenance(out, data),
        "",
        *timing_section(out),
        RULES,
        "",
        *glance_section(out, stages),
    ]
    for title, stage, figure, figures in sections():
        lines += [f"## {title}", ""]
        if (out / "figures" / figure).exists():
            lines += [f"![{title}](figures/{figure})", ""]
        if ran(stage, stages):
            lines += [line for f in figures for line in f.report(out)]
        else:
            lines.append(f"Not run: this results folder's manifest has no `{stage}` stage.")
        lines.append("")
    return atomic_write_text(out / "REPORT.md", "\n".join(lines))


def execute_notebook(path: Path, results: Path, kernel: KernelManager | None = None) -> None:
    """Run a notebook headless from its folder against `results`, injected (as papermill does) after the cell
    tagged `parameters`; each notebook writes its figures to results/figures. `kernel`: a running kernel to reuse
    (the notebooks' imports, torch among them, then load once for all of them); by default a fresh one."""
    notebook = nbformat.read(path, as_version=4)
    where = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(where + 1, nbformat.v4.new_code_cell(f"RESULTS = {str(Path(results).resolve())!r}"))
    client = NotebookClient(
        notebook, km=kernel, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    if kernel is not None:
        client.kc.stop_channels()


DRAWN = "drawn.json"  # in <out>/figures: what each notebook drew its figures from


def inputs_digest(notebook: Path, files: list[Path]) -> str:
    """A fingerprint of a notebook and the run's tables: equal, its figures would come out the same."""
    digest = hashlib.sha256(notebook.read_bytes())
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def draw_figures(out: Path) -> None:
    """Every notebook whose results folder the run wrote, unless its figures exist and were drawn from the same
    notebook and tables (a resumed run that redid nothing draws nothing again)."""
    drawn_path = out / "figures" / DRAWN
    drawn = json.loads(drawn_path.read_text()) if drawn_path.exists() else {}
    tables = listed_outputs(out, ".", "**/*.csv")  # a notebook may read several folders (Fig. 5: the Pareto too)
    notebooks = {figure.notebook: figure.folder for figure in registered() if figure.notebook}
    kernel = KernelManager(kernel_name="python3")  # started by the first notebook drawn, shared by the others
    try:
        for notebook, folder in notebooks.items():
            path = NOTEBOOKS / f"{notebook}.ipynb"
            if not listed_outputs(out, folder):
                continue
            digest = inputs_digest(path, tables)
            if drawn.get(notebook) == digest and (out / "figures" / f"{notebook}.png").exists():
                continue
            print(f"  {path.name}", flush=True)
            execute_notebook(path, out, kernel)
            drawn[notebook] = digest
            atomic_write_text(drawn_path, json.dumps(drawn, indent=2, sort_keys=True))
    finally:
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)


@dataclass
class ReportConfig:
    results: Path = knob(help="a results folder written by analysis/reproduce.py (its manifest lists its tables)")
    preset: str = knob("reference", "the preset that wrote it (named in the header)")
    data: str = knob("fashion-mnist", "the data it was trained on (named in the header)")
    figures: bool = knob(False, "redraw the figures (execute the notebooks) too")


def run(config: ReportConfig) -> Path:
    if not config.results.is_dir():
        raise UserError(f"results folder {config.results} does not exist")
    if config.figures:
        draw_figures(config.results)
    report = write_report(config.results, config.preset, config.data)
    print(f"written {report}")
    return report


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ReportConfig, argv, "Re-render REPORT.md of a results folder from its tables.")
    return exit_status("report", run, config)


if __name__ == "__main__":
    sys.exit(main())
