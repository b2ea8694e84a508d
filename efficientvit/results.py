"""Writing analysis results: long-format CSV plus a JSON sidecar (arguments, versions, device, git commit), both
written atomically so an interrupted run never leaves a half-written file in results/; and Markdown tables of
data frames for the reports.
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


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a Markdown table of `frame`, one row per row, cells as they are (format them first)."""

    def line(cells) -> str:
        return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in map(str, cells)) + "|"

    return [line(frame.columns), "|" + "---|" * len(frame.columns)] + [
        line(row) for row in frame.itertuples(index=False)
    ]
