"""Writing analysis results: long-format CSV plus a JSON sidecar (arguments, versions, device, git commit), both
written atomically so an interrupted run never leaves a half-written file in results/.

A results folder written by `python analysis/reproduce.py` also holds manifest.json: for each stage, the files it
wrote. Readers (the report, the notebooks) take the files it lists, so a stray CSV from another run, copied into
the folder, changes nothing; a folder without a manifest (analyses run by hand) is read whole.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .files import atomic_write_text


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def processor_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_description(device: str | torch.device) -> str:
    """One line for reports: the GPU's name, or the CPU's with the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{processor_name()}, {torch.get_num_threads()} threads"


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }


def write_results(
    frame: pd.DataFrame, csv_path: str | os.PathLike, arguments: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Write `frame` to csv_path and csv_path with .json beside it: what is needed to rerun and to read it."""
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, frame.to_csv(index=False))
    sidecar = {"arguments": arguments, "environment": environment(), **(extra or {})}
    atomic_write_text(csv_path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))
    return csv_path


def read_results(csv_path: str | os.PathLike) -> pd.DataFrame | None:
    """The rows of an earlier run, or None when there is none (used to resume)."""
    csv_path = Path(csv_path)
    return pd.read_csv(csv_path) if csv_path.exists() else None


MANIFEST = "manifest.json"


def read_manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {"stages": {}}


def record_outputs(out: str | os.PathLike, stage: str, paths: list[Path]) -> None:
    """List in out/manifest.json the files `stage` wrote (replacing what that stage listed before)."""
    out = Path(out)
    manifest = read_manifest(out)
    manifest["stages"][stage] = sorted(str(Path(p).relative_to(out)) for p in paths if Path(p).exists())
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


def add_stage_time(out: str | os.PathLike, stage: str, seconds: float, device: str) -> None:
    """Add `seconds` on `device` to the stage's time in out/manifest.json: a stage interrupted and resumed over
    several runs sums the time each spent on it, finished or not."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    timing = manifest.setdefault("timing", {}).setdefault(stage, {"seconds": 0.0, "runs": 0, "devices": []})
    timing["seconds"] += seconds
    timing["runs"] += 1
    timing["devices"] = sorted(set(timing["devices"]) | {device})
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


def stage_timing(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per stage: the seconds all runs spent on it, how many runs, on which devices (empty without a manifest)."""
    return read_manifest(Path(out)).get("timing", {})


def recorded_stages(out: str | os.PathLike) -> set[str] | None:
    """The stages out/manifest.json lists, or None for a folder without a manifest."""
    path = Path(out) / MANIFEST
    return set(json.loads(path.read_text())["stages"]) if path.exists() else None


def listed_outputs(out: str | os.PathLike, folder: str, pattern: str = "*.csv") -> list[Path]:
    """The files of out/folder matching `pattern`: those the manifest lists, or all of them without a manifest."""
    out = Path(out)
    files = sorted((out / folder).glob(pattern))
    if not (out / MANIFEST).exists():
        return files
    listed = {out / p for paths in json.loads((out / MANIFEST).read_text())["stages"].values() for p in paths}
    return [f for f in files if f in listed]


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a Markdown table of `frame`, one row per row, cells as they are (format them first)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
