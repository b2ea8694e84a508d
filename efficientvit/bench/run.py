"""A bench run: every (model, mode) entry of a `BenchConfig` prepared, then timed in turns for several rounds, into
one long table of samples (one row per entry and round) with the run's metadata beside it (`BenchRun`); the
summary and ratio tables read from those samples; the CSV and JSON sidecar a run is kept as.

Weights are random, with random BatchNorm statistics (`perturb_norms`) so that every layer shapes the logits: each
mode's `max_logit_diff` is its largest |logit - eager fp32 logit| on the timed batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import knob
from ..errors import UserError
from ..results import processor_name, write_results
from ..runtime import cpu_features, out_of_memory, peak_matmul_macs, require, resolve_device
from .measure import count_macs, memory_method, peak_int8_macs, peak_memory_mb, time_entry
from .modes import BF16_MODES, MODES, Entry, check_mode, prepare
from .zoo import TIMM_PREFIX, build_model, check_name, fold_norms, perturb_norms

# The run's metadata, the CSV's last columns: every row repeats them, so the CSV stands alone
META_COLUMNS = (
    "device",
    "cpu",
    "batch",
    "threads",
    "img_size",
    "seconds",
    "peak_gmac_s",
    "peak_bf16_gmac_s",
    "peak_int8_gmac_s",
    "peak_int8_ort_gmac_s",
    "memory_method",
)
# BenchRun's peaks (multiply-adds per second) and their columns (G multiply-adds per second): as measured, also
# where a path crawls (BenchRun.native says which are peaks)
PEAKS = {
    "peak": "peak_gmac_s",
    "peak_bf16": "peak_bf16_gmac_s",
    "peak_int8": "peak_int8_gmac_s",
    "peak_int8_ort": "peak_int8_ort_gmac_s",
}


@dataclass
class BenchConfig:
    """What one bench run times, and how."""

    models: dict[str, list[str]] = knob({}, "each model to time and the modes it runs in (modes.MODE_HELP)")
    device: str = knob("cpu", "cpu or cuda")
    batch: int | None = knob(None, "images per batch (default 16 on CPU, 2048 on CUDA under AMP)")
    threads: int | None = knob(None, "CPU threads for torch and onnxruntime (default: torch's choice)")
    img_size: int = knob(224, "input side in pixels")
    seconds: float = knob(1.0, "time budget of one measurement, after warm-up")
    rounds: int = knob(5, "interleaved rounds; medians and spreads are over them")
    memory: bool = knob(True, "measure the peak memory of one batch of every entry (a process per entry on CPU)")


@dataclass
class BenchRun:
    """The samples of a run (one row per entry and round) and how they were made, the same for every sample."""

    samples: pd.DataFrame
    device: str
    batch: int
    threads: int
    img_size: int
    seconds: float
    peak: float  # fp32 matmul multiply-adds per second of the device, measured in the run
    peak_bf16: float | None  # the same in bf16, when a bf16 mode ran
    memory_method: str
    peak_int8: float | None = None  # the same in int8 through oneDNN, when the int8 mode ran
    peak_int8_ort: float | None = None  # and through onnxruntime's int8 kernels, which the int8 mode runs on
    cpu: str | None = None  # the processor and its instruction sets (runtime.CpuFeatures.describe), on CPU

    def native(self, peak: str) -> bool:
        """Whether a reduced-precision peak ("peak_bf16", "peak_int8", "peak_int8_ort") is one: measured and at least
        the fp32 rate. Below it the library has no native dot-product path for that type on this CPU (bf16 or int8
        emulated), and a crawl is no peak."""
        value = getattr(self, peak)
        return value is not None and value >= self.peak

    def own_peak(self, mode: str) -> float:
        """The peak a mode's share is taken of: onnxruntime's int8 peak for int8 (the kernels it runs on), the bf16
        peak for the bf16 modes, the fp32 peak otherwise; NaN where that type has no native path here."""
        name = "peak_int8_ort" if mode == "int8" else "peak_bf16" if mode in BF16_MODES else "peak"
        return getattr(self, name) if name == "peak" or self.native(name) else math.nan

    def peaks_line(self) -> str:
        """Every peak of the run in words, each reduced-precision path that crawls said to be emulated."""
        names = {"peak_bf16": "bf16", "peak_int8_ort": "int8 (onnxruntime)", "peak_int8": "int8 (oneDNN)"}
        parts = [f"fp32 {self.peak / 1e9:.1f}"]
        for peak, label in names.items():
            value = getattr(self, peak)
            if value is not None:
                native = self.native(peak)
                parts.append(
                    f"{label} {value / 1e9:.1f}"
                    if native
                    else f"{label}: no native dot-product path on this CPU ({value / 1e9:.2f} measured, below fp32)"
                )
        return "peaks, G multiply-adds/s: " + "; ".join(parts)

    @property
    def rounds(self) -> int:
        return int(self.samples["round"].max()) + 1

    def metadata(self) -> dict[str, Any]:
        """The run's metadata, named as the CSV's columns (peaks in G multiply-adds per second)."""
        peaks = {column: getattr(self, field) for field, column in PEAKS.items()}
        peaks = {column: None if value is None else round(value / 1e9, 2) for column, value in peaks.items()}
        values = (self.device, self.cpu, self.batch, self.threads, self.img_size, self.seconds)
        return dict(zip(META_COLUMNS, values)) | peaks | {"memory_method": self.memory_method}

    def write(self, path: str | os.PathLike, arguments: dict[str, Any]) -> Path:
        """The samples with the metadata columns, and a JSON sidecar (`arguments`, the environment, the metadata)."""
        return write_results(self.samples.assign(**self.metadata()), path, arguments, {"run": self.metadata()})

    @classmethod
    def read(cls, path: str | os.PathLike) -> BenchRun:
        """A run as `write` left it."""
        table = pd.read_csv(path)
        # a run written before the int8 mode existed has no int8 peaks
        meta = table.reindex(columns=list(META_COLUMNS)).iloc[0].to_dict()
        peaks = {field: meta.pop(column) for field, column in PEAKS.items()}
        peaks = {field: None if pd.isna(value) else value * 1e9 for field, value in peaks.items()}
        meta["cpu"] = None if pd.isna(meta["cpu"]) else meta["cpu"]  # not recorded before the instruction sets were
        return cls(table.drop(columns=list(META_COLUMNS), errors="ignore"), **meta, **peaks)


def check_config(config: BenchConfig) -> None:
    """Every name, mode and number checked before minutes of preparing models."""
    for mode in {m for modes in config.models.values() for m in modes}:
        check_mode(mode, resolve_device(config.device).type)
        if mode in ("onnxruntime", "int8"):
            require("onnxruntime", f"--mode {mode}")
    for name in config.models:
        check_name(name)
    if (config.batch is not None and config.batch < 1) or config.seconds <= 0 or config.rounds < 1:
        raise UserError("--batch and --rounds must be at least 1 and --seconds above 0")


def prepare_entries(
    config: BenchConfig, device: str, batch: int, threads: int, log: Callable[[str], None]
) -> tuple[list[Entry], dict[tuple[str, str], dict[str, float]]]:
    """Every entry prepared, and what is measured once per entry: the time to the first batch, multiply-adds,
    the logits' distance from eager fp32 and the peak memory."""
    entries, info = [], {}
    for name, modes in config.models.items():
        model = perturb_norms(build_model(name, config.img_size)).to(device)
        try:
            x = torch.randn(batch, 3, config.img_size, config.img_size)
            with torch.inference_mode():
                reference = model(x.to(device)).float().cpu()
            macs = count_macs(fold_norms(model, name), config.img_size)  # of the BN-fused graph, whatever the mode
            for mode in modes:
                log(f"preparing {name} ({mode})")
                started = time.perf_counter()
                entry = prepare(model, name, mode, device, batch, config.img_size, threads, x=x)
                out = entry.run().cpu()  # the first call also compiles (compile)
                entries.append(entry)
                info[name, mode] = {
                    # what a user waits before the first batch: compilation, or export and session set-up
                    "prepare_seconds": time.perf_counter() - started,
                    "macs_per_img": macs,
                    "max_logit_diff": (out - reference).abs().max().item(),
                    "max_abs_logit": reference.abs().max().item(),
                    "peak_mem_mb": peak_memory_mb(name, mode, device, batch, config.img_size, threads)
                    if config.memory
                    else math.nan,
                }
        except (RuntimeError, MemoryError) as e:
            if out_of_memory(e):
                raise UserError(f"batch {batch} of {name} does not fit in {device} memory; lower --batch") from None
            raise
    return entries, info


def run_bench(config: BenchConfig, log: Callable[[str], None] = lambda s: None) -> BenchRun:
    """Time every (model, mode) of `config` in turns for `config.rounds` rounds, with the device's measured peak
    multiply-adds per second, fp32 and (when a bf16 mode runs) bf16."""
    check_config(config)
    device = resolve_device(config.device).type
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    batch = (2048 if device == "cuda" else 16) if config.batch is None else config.batch
    entries, info = prepare_entries(config, device, batch, threads, log)
    log("measuring the peak matmul rates")
    modes = {mode for modes in config.models.values() for mode in modes}
    peak = peak_matmul_macs(device, config.seconds)
    peak_bf16 = peak_matmul_macs(device, config.seconds, torch.bfloat16) if modes & set(BF16_MODES) else None
    peak_int8_ort, peak_int8 = peak_int8_macs(threads, config.seconds) if "int8" in modes else (None, None)
    rows, entries = [], timing_order(entries)
    for r in range(config.rounds):
        log(f"round {r + 1}/{config.rounds}")
        # every other round backwards: a drift during a round then favours neither side of a pair
        for entry in entries if r % 2 == 0 else entries[::-1]:
            load = os.getloadavg()[0]  # how busy the machine was (1-minute load average) as this sample began
            img_s, latency = time_entry(entry, config.seconds)
            row = {"model": entry.name, "mode": entry.mode, "round": r, "img_s": img_s, "latency_ms": latency}
            row["load_avg"] = load
            rows.append({**row, **info[entry.name, entry.mode]})
    cpu = f"{processor_name()} ({cpu_features().describe()})" if device == "cpu" else None
    run = BenchRun(
        pd.DataFrame(rows),
        device,
        batch,
        threads,
        config.img_size,
        config.seconds,
        peak,
        peak_bf16,
        memory_method(device),
        peak_int8,
        peak_int8_ort,
        cpu,
    )
    work = run.samples["macs_per_img"] * run.samples["img_s"]
    run.samples["share_of_peak"] = work / peak  # of the fp32 peak, every mode
    run.samples["share_of_own_peak"] = work / run.samples["mode"].map(run.own_peak)
    return run


def timing_order(entries: list[Entry]) -> list[Entry]:
    """The entries in the order they are timed: each model beside its peer (`x` beside timm's `timm:x`), mode by
    mode, so the two sides of a ratio are timed seconds apart rather than a whole round apart, and a ratio sees
    what load the shared machine had at that moment on both sides."""
    peer = [entry.name.removeprefix(TIMM_PREFIX) for entry in entries]
    first = {name: i for i, name in reversed(list(enumerate(peer)))}
    return [
        entry for _, entry in sorted(zip(peer, entries), key=lambda pair: (first[pair[0]], MODES.index(pair[1].mode)))
    ]


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """Median and spread (min-max over rounds) of every entry."""
    if "load_avg" not in samples:  # a run written before the load was recorded
        samples = samples.assign(load_avg=float("nan"))
    g = samples.groupby(["model", "mode"], sort=False)
    out = g.agg(
        img_s=("img_s", "median"),
        img_s_min=("img_s", "min"),
        img_s_max=("img_s", "max"),
        latency_ms=("latency_ms", "median"),
        peak_mem_mb=("peak_mem_mb", "first"),
        gmacs=("macs_per_img", "first"),
        share_of_peak=("share_of_peak", "median"),
        share_of_own_peak=("share_of_own_peak", "median"),
        prepare_seconds=("prepare_seconds", "first"),
        max_logit_diff=("max_logit_diff", "first"),
        max_abs_logit=("max_abs_logit", "first"),
        load_avg=("load_avg", "median"),
        rounds=("round", "count"),
    ).reset_index()
    out["gmacs"] = out["gmacs"] / 1e9
    return out


def best_modes(samples: pd.DataFrame) -> dict[str, str]:
    """Each model's fastest mode by median throughput (how a baseline gets its best layout)."""
    medians = samples.groupby(["model", "mode"], sort=False)["img_s"].median().reset_index()
    return {m: rows.sort_values("img_s").iloc[-1]["mode"] for m, rows in medians.groupby("model", sort=False)}


def ratios(
    samples: pd.DataFrame, models: list[str], references: list[str], modes: dict[str, str] | None = None
) -> pd.DataFrame:
    """Speed of each model over each reference, from per-round ratios (both timed in the same round): median and
    min-max. Each side runs in `modes[name]`, by default its fastest mode."""
    modes = modes or best_modes(samples)
    by = samples.set_index(["model", "mode", "round"])["img_s"].sort_index()
    rows = []
    for model in models:
        for ref in references:
            if model == ref:
                continue
            per_round = (by[model, modes[model]] / by[ref, modes[ref]]).dropna()
            rows.append(
                {
                    "model": model,
                    "mode": modes[model],
                    "reference": ref,
                    "reference_mode": modes[ref],
                    "speedup": per_round.median(),
                    "speedup_min": per_round.min(),
                    "speedup_max": per_round.max(),
                }
            )
    return pd.DataFrame(rows)
