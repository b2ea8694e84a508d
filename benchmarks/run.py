"""Regenerate benchmarks/cpu_b16.csv and benchmarks/README.md: every figure comes from one interleaved run.

    python benchmarks/run.py                 # about 30 minutes on 2 idle cores
    python benchmarks/run.py --rounds 5 --seconds 2
    python benchmarks/run.py --from-csv benchmarks/cpu_b16.csv    # only rewrite README.md

Entries: ours M0-M5 and timm's port of the same models (same state-dict layout) in every mode both run (fused,
channels_last, compile, onnxruntime, bf16, compile_bf16), and the paper's CPU baselines (fused, channels_last,
onnxruntime), on `--threads` threads; then the models of the paper's CPU ratios again on one thread, the paper's
own protocol (cpu_b16_1thread.csv); then the Fig. 2 profiler on M0 and M4 in eager, compile and onnxruntime
(profile_modes.csv; `--no-profile` skips it). The README is written from those files, section by section.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from efficientvit.bench.modes import BF16_MODES
from efficientvit.bench.run import BenchConfig, BenchRun, best_modes, ratios, run_bench, summarize
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.files import atomic_write_text
from efficientvit.results import markdown_table, read_results

HERE = Path(__file__).resolve().parent
OURS = [f"efficientvit_m{i}" for i in range(6)]
TIMM = [f"timm:{name}" for name in OURS]
CNNS = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
EAGER = ("fused", "channels_last")
# every mode ours and timm's both run
MODES = ("fused", "channels_last", "compile", "onnxruntime", "bf16", "compile_bf16")
FP32 = MODES[:4]
TARGETS = {"per_mode": 1.2, "best": 1.3, "fp32_share_of_peak": 0.6}  # the targets, medians over rounds
SAMPLES_CSV = "cpu_b16.csv"
SINGLE_CSV = "cpu_b16_1thread.csv"
PROFILE_CSV = "profile_modes.csv"
PROFILED = ["efficientvit_m0", "efficientvit_m4"]  # the smallest and the paper's Fig. 2 model
PROFILED_MODES = ["eager", "compile", "onnxruntime"]
PAPER = [
    ("efficientvit_m3", "mobilenet_v2", "~3x (Intel CPU)"),
    ("efficientvit_m5", "efficientnet_b0", "~1.9x"),
    ("efficientvit_m5", "mobilenet_v3_large", "faster (Table 2 lists both)"),
]


@dataclass
class BenchmarksConfig:
    threads: int = knob(2, "CPU threads")
    rounds: int = knob(3, "interleaved rounds")
    seconds: float = knob(1.0, "time budget per measurement")
    memory: bool = knob(True, "measure each entry's peak memory (a process per entry)")
    profile: bool = knob(True, f"profile {' and '.join(PROFILED)} in every execution path (profile_modes.csv)")
    out: Path = knob(HERE, "folder for cpu_b16.csv and README.md (benchmarks/)")
    from_csv: Path | None = knob(None, "only rewrite README.md from samples written before (the cpu_b16.csv of a run)")


# -- the run ---------------------------------------------------------------------------------------------------


def measure(config: BenchmarksConfig) -> tuple[BenchRun, BenchRun, pd.DataFrame | None]:
    """Both bench runs and the profile, each written to config.out as soon as it ends."""
    # A compile time is what a first compile costs: inductor's on-disk caches would make a rerun's near zero.
    torch.compiler.config.force_disable_caches = True
    models = {m: list(MODES) for m in OURS + TIMM} | {m: [*EAGER, "onnxruntime"] for m in CNNS}
    bench = run_bench(
        BenchConfig(models, threads=config.threads, seconds=config.seconds, rounds=config.rounds, memory=config.memory),
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    bench.write(config.out / SAMPLES_CSV, config_arguments(config))
    paper_models = dict.fromkeys(name for pair in PAPER for name in pair[:2])
    single = run_bench(
        BenchConfig(
            {m: list(EAGER) for m in paper_models},
            threads=1,
            seconds=config.seconds,
            rounds=config.rounds,
            memory=False,
        ),
        log=lambda s: print(f"1 thread: {s}", file=sys.stderr, flush=True),
    )
    single.write(config.out / SINGLE_CSV, config_arguments(config) | {"threads": 1})
    if not config.profile:  # an older profile beside these timings would be read back with them by --from-csv
        for stale in (config.out / PROFILE_CSV, (config.out / PROFILE_CSV).with_suffix(".json")):
            stale.unlink(missing_ok=True)
    return bench, single, profile_modes(config) if config.profile else None


def profile_modes(config: BenchmarksConfig) -> pd.DataFrame:
    """The Fig. 2 profile of PROFILED in every execution path, written to PROFILE_CSV (redone from scratch)."""
    from analysis.memory_profile import ProfileConfig
    from analysis.memory_profile import run as run_profile

    profile = ProfileConfig(
        models=PROFILED, modes=PROFILED_MODES, threads=config.threads, out=config.out / PROFILE_CSV, fresh=True
    )
    return run_profile(profile)


def read_back(samples_csv: Path) -> tuple[BenchRun, BenchRun, pd.DataFrame | None]:
    """What `measure` wrote, from the folder of `samples_csv`."""
    missing = [p for p in (samples_csv, samples_csv.with_name(SINGLE_CSV)) if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]} does not exist: give --from-csv the {SAMPLES_CSV} of a full run")
    single = BenchRun.read(samples_csv.with_name(SINGLE_CSV))
    return BenchRun.read(samples_csv), single, read_results(samples_csv.with_name(PROFILE_CSV))


# -- the README, section by section ------------------------------------------------------------------------------


def fmt_ratio(row) -> str:
    return f"{row.speedup:.2f}x [{row.speedup_min:.2f}-{row.speedup_max:.2f}]"


def one_ratio(samples: pd.DataFrame, model: str, mode: str, ref: str, ref_mode: str):
    return ratios(samples, [model], [ref], {model: mode, ref: ref_mode}).iloc[0]


def mark(value: float, target: float, percent: bool = False) -> str:
    """The value, in bold with a check mark when it meets its target."""
    text = f"{100 * value:.0f}%" if percent else f"{value:.2f}x"
    return f"**{text}** ✓" if value >= target else text


def report(bench: BenchRun, single: BenchRun, profile: pd.DataFrame | None) -> str:
    summary = summarize(bench.samples)
    sections = [
        header(bench, summary),
        ours_against_timm(bench.samples),
        targets(bench, summary),
        profile_section(profile),
        compile_and_numerics(summary),
        paper_ratios(bench, single),
        every_entry(bench, summary),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def header(bench: BenchRun, summary: pd.DataFrame) -> list[str]:
    return [
        "# Benchmarks",
        "",
        "Regenerate everything on this page (tables and `cpu_b16.csv`) with one command:",
        "",
        "```",
        f"python benchmarks/run.py --threads {bench.threads} --rounds {bench.rounds} --seconds {bench.seconds}",
        "```",
        "",
        f"Protocol (the paper's): random weights, eval mode, batch {bench.batch}, {bench.img_size} px, CPU with "
        f"{bench.threads} threads ({os.cpu_count()} cores on this machine, {torch.__version__}), warm-up then "
        f"batches for {bench.seconds} s; all {len(summary)} entries below were timed in turns, {bench.rounds} "
        "rounds. Figures are medians over rounds with [min-max]; a speed-up is the median of per-round ratios (both "
        "sides timed in the same round), so drifts of the machine during the run cancel. BatchNorm is folded in "
        "every mode but `eager`. Every model, ours and the baselines alike, gets its best layout: each table names "
        "the mode it used.",
        "",
        *noisy_warning(summary),
    ]


def noisy_warning(summary: pd.DataFrame) -> list[str]:
    """A loud line when the rounds disagree so much that the ratios below cannot be trusted."""
    spread = summary["img_s_max"] / summary["img_s_min"]
    wide = int((spread > 1.5).sum())
    if wide <= len(summary) // 4:
        return []
    return [
        f"**Warning: in {wide} of {len(summary)} entries the fastest round was over 1.5x the slowest (median "
        f"{spread.median():.1f}x): the machine was too busy during this run for these figures to settle "
        "anything. Rerun on a quiet machine before quoting them.**",
        "",
    ]


def ours_against_timm(samples: pd.DataFrame) -> list[str]:
    best = best_modes(samples)
    rows = []
    for ours, timm in zip(OURS, TIMM):
        cells = {mode: fmt_ratio(one_ratio(samples, ours, mode, timm, mode)) for mode in MODES}
        best_ratio = one_ratio(samples, ours, best[ours], timm, best[timm])
        rows.append(
            {"model": ours, **cells, "ours best / timm best": f"{fmt_ratio(best_ratio)} ({best[ours]} / {best[timm]})"}
        )
    return [
        "## Ours / timm, mode by mode",
        "",
        "timm's `efficientvit_m*` (same weights) against ours in every mode both run: BatchNorm folded by each "
        "side's own tool (timm's `reparameterize_model`, our `efficientvit.fuse`), exported by the same ONNX "
        "exporter, compiled by the same inductor. Each cell: median of per-round ratios [min-max]. Last column: "
        "each side's fastest mode against the other's.",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def targets(bench: BenchRun, summary: pd.DataFrame) -> list[str]:
    samples, best = bench.samples, best_modes(bench.samples)
    rows = []
    for ours, timm in zip(OURS, TIMM):
        per_mode = {mode: one_ratio(samples, ours, mode, timm, mode).speedup for mode in MODES}
        worst = min(per_mode, key=per_mode.get)
        best_ratio = one_ratio(samples, ours, best[ours], timm, best[timm]).speedup
        fp32 = summary[(summary.model == ours) & summary["mode"].isin(FP32)].sort_values("img_s").iloc[-1]
        bf16 = summary[(summary.model == ours) & summary["mode"].isin(BF16_MODES)].sort_values("img_s").iloc[-1]
        rows.append(
            {
                "model": ours,
                "worst mode: ours / timm": f"{mark(per_mode[worst], TARGETS['per_mode'])} ({worst})",
                "best / best": mark(best_ratio, TARGETS["best"]),
                "best fp32 mode: share of fp32 peak": f"{mark(fp32.share_of_peak, TARGETS['fp32_share_of_peak'], True)}"
                f" ({fp32['mode']})",
                "bf16: share of fp32 peak (of bf16 peak)": f"{mark(bf16.share_of_peak, 1.0, percent=True)} "
                f"({100 * bf16.share_of_own_peak:.0f}%, {bf16['mode']})",
            }
        )
    return [
        "## Targets",
        "",
        f"Ours / timm at least {TARGETS['per_mode']}x in every mode and {TARGETS['best']}x best against best; the "
        f"best fp32 mode at {100 * TARGETS['fp32_share_of_peak']:.0f}% or more of the fp32 matmul peak (M3-M5); "
        "the best bf16 entry faster than the fp32 peak allows (multiply-adds per second over the fp32 peak above "
        f"1; M4/M5). Peaks this run: fp32 {bench.peak / 1e9:.1f}, bf16 {bench.peak_bf16 / 1e9:.1f} G "
        "multiply-adds/s.",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def profile_section(profile: pd.DataFrame | None) -> list[str]:
    """Where the time goes in each execution path: the Fig. 2 profiler's memory-bound share per model and mode."""
    lines = ["## Where the time goes, per execution path", ""]
    if profile is None:
        return lines + [f"Not profiled in this run (`--no-profile`, or no {PROFILE_CSV} beside the samples).", ""]
    rows = []
    for (name, mode), g in profile.groupby(["name", "mode"], sort=False):
        by_category = g.groupby("category")["share"].sum().sort_values(ascending=False)
        bound = by_category[by_category.index.isin(g.loc[g["memory_bound"], "category"])]
        compute = by_category.reindex(["matmul", "convolution"]).fillna(0).sum()
        rows.append(
            {
                "model": name,
                "mode": mode,
                "ms per batch (profiled)": f"{g['step_time_us'].iloc[0] / 1e3:.1f}",
                "memory-bound share": f"{100 * bound.sum():.1f}%",
                "largest memory-bound categories": ", ".join(
                    f"{cat} {100 * share:.1f}%" for cat, share in bound.head(3).items()
                ),
                "matmul + convolution": f"{100 * compute:.1f}%",
            }
        )
    return lines + [
        "The paper's Fig. 2 profiler (`analysis/memory_profile.py --modes eager compile onnxruntime`, batch 16, "
        "224 px) on each path a user takes: eager as the paper profiled it (BatchNorm unfolded), `torch.compile` "
        "(inductor with freezing; its generated kernels are the category `fused`, memory-bound), onnxruntime "
        "(its own profiler's node times). Memory-bound: reshape, copy, element-wise, normalization and fused "
        "kernels.",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def compile_and_numerics(summary: pd.DataFrame) -> list[str]:
    entry = summary.set_index(["model", "mode"])
    rows = [
        {
            "model": ours,
            "compile s, ours / timm": f"{entry.loc[(ours, 'compile'), 'prepare_seconds']:.0f} / "
            f"{entry.loc[(timm, 'compile'), 'prepare_seconds']:.0f}",
            "onnxruntime s, ours / timm": f"{entry.loc[(ours, 'onnxruntime'), 'prepare_seconds']:.1f} / "
            f"{entry.loc[(timm, 'onnxruntime'), 'prepare_seconds']:.1f}",
            "max logit diff, ours: " + ", ".join(MODES): ", ".join(
                f"{entry.loc[(ours, mode), 'max_logit_diff']:.0e}" for mode in MODES
            ),
        }
        for ours, timm in zip(OURS, TIMM)
    ]
    return [
        "## Compile time and numerics",
        "",
        "Seconds from an eval-mode model to its first batch (compile: inductor with freezing, its caches "
        "disabled so this is a first compile; onnxruntime: export and session), and each mode's largest |logit - "
        "eager fp32 logit| on the timed batch, with random BatchNorm statistics so every layer shapes the logits.",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def paper_ratios(bench: BenchRun, single: BenchRun) -> list[str]:
    samples = bench.samples
    eager = best_modes(samples[samples["mode"].isin(EAGER)])
    single_eager = best_modes(single.samples)
    rows = [
        {
            "ours": f"{ours} ({eager[ours]})",
            "baseline": f"{cnn} ({eager[cnn]})",
            "paper": paper,
            f"eager, best layout, {bench.threads} threads": fmt_ratio(
                one_ratio(samples, ours, eager[ours], cnn, eager[cnn])
            ),
            "eager, best layout, 1 thread": fmt_ratio(
                one_ratio(single.samples, ours, single_eager[ours], cnn, single_eager[cnn])
            ),
            "onnxruntime": fmt_ratio(one_ratio(samples, ours, "onnxruntime", cnn, "onnxruntime")),
        }
        for ours, cnn, paper in PAPER
    ]
    return [
        "## The paper's CPU ratios, in this run",
        "",
        f"Each side in its best eager layout on {bench.threads} threads and on one thread (the paper's Table 2 "
        "protocol: one thread, batch 16), and each side in onnxruntime (the same runtime for both).",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def every_entry(bench: BenchRun, summary: pd.DataFrame) -> list[str]:
    own = [
        f" ({100 * s:.1f}%)" if mode in BF16_MODES else ""
        for s, mode in zip(summary.share_of_own_peak, summary["mode"])
    ]
    table = pd.DataFrame(
        {
            "model": summary.model,
            "mode": summary["mode"],
            "img/s [min-max]": [f"{r.img_s:.1f} [{r.img_s_min:.1f}-{r.img_s_max:.1f}]" for r in summary.itertuples()],
            "ms/batch": summary.latency_ms.map("{:.0f}".format),
            "GMACs/img": summary.gmacs.map("{:.3f}".format),
            "share of peak": [f"{100 * s:.1f}%{o}" for s, o in zip(summary.share_of_peak, own)],
            "first batch s": summary.prepare_seconds.map("{:.1f}".format),
            "peak MB": summary.peak_mem_mb.map("{:.0f}".format),
            "max logit diff": summary.max_logit_diff.map("{:.1e}".format),
        }
    )
    return [
        "## Every entry, and the share of the machine's peak",
        "",
        f"Peak: {bench.peak / 1e9:.1f} G multiply-adds/s, a 2048x2048 fp32 matmul timed by the bench itself on the "
        f"same threads (under the same load; bf16: {bench.peak_bf16 / 1e9:.1f}). Share of peak = fvcore "
        "multiply-adds per image x img/s / the fp32 peak (bf16 entries: of the bf16 peak in brackets). First batch: "
        f"seconds from the model to its first output. Peak MB: {bench.memory_method}.",
        "",
        *markdown_table(table),
    ]


# -- the command -------------------------------------------------------------------------------------------------


def run(config: BenchmarksConfig) -> None:
    runs = read_back(config.from_csv) if config.from_csv else measure(config)
    text = report(*runs)
    atomic_write_text(config.out / "README.md", text)
    print(text)


def parse_args(argv: list[str] | None = None) -> BenchmarksConfig:
    return parse_config(BenchmarksConfig, argv, __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/run.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
