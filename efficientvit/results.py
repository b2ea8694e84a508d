"""Writing analysis results: long-format CSV plus a JSON sidecar (arguments, versions, device, git commit), both
written atomically so an interrupted run never leaves a half-written file in results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }


def write_results(frame: pd.DataFrame, csv_path: str | os.PathLike, arguments: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
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
