"""Regenerate benchmarks/cpu_b16.csv and benchmarks/README.md: every figure comes from one interleaved run.

    python benchmarks/run.py                 # about 30 minutes on 2 idle cores
    python benchmarks/run.py --rounds 5 --seconds 2
    python benchmarks/run.py --from-csv benchmarks/cpu_b16.csv    # only rewrite README.md

Entries: ours M0-M5 and timm's port of the same models (same state-dict layout) in every mode both run (fused,
channels_last, compile, onnxruntime, bf16, compile_bf16), and the paper's CPU baselines (fused, channels_last,
onnxruntime), on `--threads` threads; then the models of the paper's CPU ratios again on one thread, the paper's
own protocol (cpu_b16_1thread.csv); then the Fig. 2 profiler on M0 and M4 in eager, compile and onnxruntime
(profile_modes.csv; `--no-profile` skips it); then the int8 mode's two flows against each other and its profile
(benchmarks/int8.py: int8_flows.csv, profile_int8.csv). The README is written from those files, section by section.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

if not __package__:  # `python benchmarks/run.py`: the repository root, for `benchmarks.int8`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cpu_kind
from efficientvit.bench.modes import BF16_MODES
from efficientvit.bench.run import BenchConfig, BenchRun, best_modes, ratios, run_bench, summarize
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.files import atomic_write_text
from efficientvit.results import markdown_table, read_results, write_results

HERE = Path(__file__).resolve().parent
OURS = [f"efficientvit_m{i}" for i in range(6)]
TIMM = [f"timm:{name}" for name in OURS]
CNNS = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
EAGER = ("fused", "channels_last")
# every mode ours and timm's both run
MODES = ("fused", "channels_last", "compile", "onnxruntime", "bf16", "compile_bf16", "int8")
FP32 = MODES[:4]
# the targets, medians over rounds: ours / timm in every mode and in fused eager, best against best, the best fp32
# mode's share of the fp32 peak (M3-M5), int8 over our best fp32 mode (M3-M5)
TARGETS = {"per_mode": 1.0, "fused": 1.15, "best": 1.3, "fp32_share_of_peak": 0.6, "int8": 1.5}
INT8_TARGET_MODELS = OURS[3:]
SAMPLES_CSV = "cpu_b16.csv"
SINGLE_CSV = "cpu_b16_1thread.csv"
PROFILE_CSV = "profile_modes.csv"
PROFILED = ["efficientvit_m0", "efficientvit_m4"]  # the smallest and the paper's Fig. 2 model
PROFILED_MODES = ["eager", "compile", "onnxruntime"]
FLOWS_CSV = "int8_flows.csv"
INT8_PROFILE_CSV = "profile_int8.csv"
INT8_FLOW_MODELS = OURS[3:]
# `efficientvit eval --modes ... int8` of the Fashion-MNIST M0 the demo trains, saved beside the tables by hand
INT8_ACCURACY = "eval_int8_m0_fashion_mnist.txt"
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
    int8: bool = knob(True, f"compare the int8 flows on {', '.join(INT8_FLOW_MODELS)} and profile the int8 graph")
    out: Path = knob(HERE, "folder for cpu_b16.csv and README.md (benchmarks/)")
    from_csv: Path | None = knob(None, "only rewrite README.md from samples written before (the cpu_b16.csv of a run)")


# -- the run ---------------------------------------------------------------------------------------------------


def measure(config: BenchmarksConfig) -> tuple[BenchRun, BenchRun, pd.DataFrame | None, pd.DataFrame | None]:
    """Both bench runs, the profiles and the int8 flows, each written to config.out as soon as it ends."""
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
    # an older profile or flow table beside these timings would be read back with them by --from-csv
    skipped = ([] if config.profile else [PROFILE_CSV]) + ([] if config.int8 else [FLOWS_CSV, INT8_PROFILE_CSV])
    for stale in skipped:
        for path in (config.out / stale, (config.out / stale).with_suffix(".json")):
            path.unlink(missing_ok=True)
    profile = profile_modes(config) if config.profile else None
    flows = None
    if config.int8:
        flows, int8_profile = int8_runs(config)
        profile = int8_profile if profile is None else pd.concat([profile, int8_profile], ignore_index=True)
    return bench, single, profile, flows


def int8_runs(config: BenchmarksConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The int8 flows timed in turns (FLOWS_CSV) and the int8 graph's profile (INT8_PROFILE_CSV)."""
    from benchmarks import int8

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    flows = int8.measure_flows(INT8_FLOW_MODELS, config.threads, config.rounds, config.seconds, log)
    write_results(flows, config.out / FLOWS_CSV, config_arguments(config))
    log("profiling the int8 graphs")
    profile = int8.profile_int8(PROFILED, config.threads)
    write_results(profile, config.out / INT8_PROFILE_CSV, config_arguments(config))
    return flows, profile


def profile_modes(config: BenchmarksConfig) -> pd.DataFrame:
    """The Fig. 2 profile of PROFILED in every execution path, written to PROFILE_CSV (redone from scratch)."""
    from analysis.memory_profile import ProfileConfig
    from analysis.memory_profile import run as run_profile

    profile = ProfileConfig(
        models=PROFILED, modes=PROFILED_MODES, threads=config.threads, out=config.out / PROFILE_CSV, fresh=True
    )
    return run_profile(profile)


def read_back(samples_csv: Path) -> tuple[BenchRun, BenchRun, pd.DataFrame | None, pd.DataFrame | None]:
    """What `measure` wrote, from the folder of `samples_csv`."""
    missing = [p for p in (samples_csv, samples_csv.with_name(SINGLE_CSV)) if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]} does not exist: give --from-csv the {SAMPLES_CSV} of a full run")
    single = BenchRun.read(samples_csv.with_name(SINGLE_CSV))
    profiles = [read_results(samples_csv.with_name(name)) for name in (PROFILE_CSV, INT8_PROFILE_CSV)]
    profiles = [p for p in profiles if p is not None]
    profile = pd.concat(profiles, ignore_index=True) if profiles else None
    return BenchRun.read(samples_csv), single, profile, read_results(samples_csv.with_name(FLOWS_CSV))


# -- the README, section by section ------------------------------------------------------------------------------


def fmt_ratio(row) -> str:
    return f"{row.speedup:.2f}x [{row.speedup_min:.2f}-{row.speedup_max:.2f}]"


def one_ratio(samples: pd.DataFrame, model: str, mode: str, ref: str, ref_mode: str):
    return ratios(samples, [model], [ref], {model: mode, ref: ref_mode}).iloc[0]


def modes_run(samples: pd.DataFrame) -> list[str]:
    """The MODES this run timed (a run from before the int8 mode has none of it)."""
    return [mode for mode in MODES if mode in set(samples["mode"])]


def mode_ratio(samples: pd.DataFrame, model: str, mode: str, ref_mode: str) -> pd.Series:
    """`model` in `mode` over itself in `ref_mode`: the median of per-round ratios and their range."""
    by_round = samples[samples["model"] == model].pivot(index="round", columns="mode", values="img_s")
    ratio = by_round[mode] / by_round[ref_mode]
    return pd.Series({"speedup": ratio.median(), "speedup_min": ratio.min(), "speedup_max": ratio.max()})


def own_share(share: float) -> str:
    """A share of the mode's own type's peak, or that the type has no native path on this CPU."""
    return "bf16 emulated here" if pd.isna(share) else f"{100 * share:.0f}%"


def mark(value: float, target: float, percent: bool = False) -> str:
    """The value, in bold with a check mark when it meets its target."""
    text = f"{100 * value:.0f}%" if percent else f"{value:.2f}x"
    return f"**{text}** ✓" if value >= target else text


def report(
    bench: BenchRun,
    single: BenchRun,
    profile: pd.DataFrame | None,
    flows: pd.DataFrame | None = None,
    accuracy: str | None = None,
) -> str:
    """The README: `accuracy` is the int8 accuracy run's printout (INT8_ACCURACY), when there is one."""
    summary = summarize(bench.samples)
    sections = [
        header(bench, summary),
        ours_against_timm(bench.samples),
        targets(bench, summary),
        cpu_kind.section(),
        int8_section(flows, accuracy),
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
        f"{bench.threads} threads ({os.cpu_count()} cores of {bench.cpu or 'an unrecorded CPU'}, {torch.__version__}), "
        "warm-up then "
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
        cells = {mode: fmt_ratio(one_ratio(samples, ours, mode, timm, mode)) for mode in modes_run(samples)}
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
        per_mode = {mode: one_ratio(samples, ours, mode, timm, mode).speedup for mode in modes_run(samples)}
        worst = min(per_mode, key=per_mode.get)
        best_ratio = one_ratio(samples, ours, best[ours], timm, best[timm]).speedup
        fp32 = summary[(summary.model == ours) & summary["mode"].isin(FP32)].sort_values("img_s").iloc[-1]
        bf16 = summary[(summary.model == ours) & summary["mode"].isin(BF16_MODES)].sort_values("img_s").iloc[-1]
        int8 = mode_ratio(samples, ours, "int8", fp32["mode"]) if "int8" in per_mode else None
        int8_cell = "not run" if int8 is None else f"{fmt_ratio(int8)} (over {fp32['mode']})"
        if int8 is not None and ours in INT8_TARGET_MODELS:
            int8_cell = f"{mark(int8.speedup, TARGETS['int8'])} [{int8.speedup_min:.2f}-{int8.speedup_max:.2f}] " + (
                f"(over {fp32['mode']})"
            )
        rows.append(
            {
                "model": ours,
                "worst mode: ours / timm": f"{mark(per_mode[worst], TARGETS['per_mode'])} ({worst})",
                "fused: ours / timm": mark(per_mode["fused"], TARGETS["fused"]),
                "best / best": mark(best_ratio, TARGETS["best"]),
                "best fp32 mode: share of fp32 peak": f"{mark(fp32.share_of_peak, TARGETS['fp32_share_of_peak'], True)}"
                f" ({fp32['mode']})",
                "bf16: share of fp32 peak (of bf16 peak)": f"{mark(bf16.share_of_peak, 1.0, percent=True)} "
                f"({own_share(bf16.share_of_own_peak)}, {bf16['mode']})",
                "int8 / our best fp32 mode": int8_cell,
            }
        )
    return [
        "## Targets",
        "",
        f"Ours / timm at least {TARGETS['per_mode']}x in every mode, {TARGETS['fused']}x in fused eager and "
        f"{TARGETS['best']}x best against best; the best fp32 mode at {100 * TARGETS['fp32_share_of_peak']:.0f}% or "
        "more of the fp32 matmul peak (M3-M5); the best bf16 entry faster than the fp32 peak allows (multiply-adds "
        f"per second over the fp32 peak above 1; M4/M5); int8 at least {TARGETS['int8']}x our best fp32 mode "
        f"(M3-M5; per-round ratios, both timed in the same round). This run's {bench.peaks_line()}.",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
    ]


def int8_section(flows: pd.DataFrame | None, accuracy: str | None) -> list[str]:
    """The int8 mode: which quantization flow it keeps and why, and its accuracy on a trained model."""
    from benchmarks.int8 import flows_table

    lines = [
        "## int8",
        "",
        "The `int8` mode is onnxruntime's static quantization of the BN-fused graph (QDQ: int8 weights per output "
        "channel, uint8 activations with ranges calibrated on training images; softmax, the attention-bias add, "
        "most residual adds and normalisation stay in float: `efficientvit/export.py` says which and why). Its peer "
        "flow is PyTorch's PT2E with the x86 inductor quantizer (torchao), compiled with freezing; both calibrated "
        "on the same images and timed in turns with `compile` (fp32).",
        "",
    ]
    if flows is None:
        lines += [f"Flows not measured in this run (`--no-int8`, or no {FLOWS_CSV} beside the samples).", ""]
    else:
        lines += [*markdown_table(flows_table(flows)), ""]
    if accuracy:
        lines += [
            f"Accuracy and agreement with fp32 of the Fashion-MNIST EfficientViT-M0 the demo trains ({INT8_ACCURACY}):",
            "",
            "```",
            *accuracy.strip().splitlines(),
            "```",
            "",
        ]
    return lines


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
            "max logit diff, ours: " + ", ".join(modes_run(summary)): ", ".join(
                f"{entry.loc[(ours, mode), 'max_logit_diff']:.0e}" for mode in modes_run(summary)
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
        f" ({100 * s:.1f}%)" if mode in (*BF16_MODES, "int8") else ""
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
        "multiply-adds per image x img/s / the fp32 peak (bf16 and int8 entries: of their own peak in brackets, "
        "int8's the oneDNN VNNI one). First batch: "
        f"seconds from the model to its first output. Peak MB: {bench.memory_method}.",
        "",
        *markdown_table(table),
    ]


# -- the command -------------------------------------------------------------------------------------------------


def run(config: BenchmarksConfig) -> None:
    runs = read_back(config.from_csv) if config.from_csv else measure(config)
    accuracy = config.out / INT8_ACCURACY
    text = report(*runs, accuracy.read_text() if accuracy.exists() else None)
    atomic_write_text(config.out / "README.md", text)
    print(text)


def parse_args(argv: list[str] | None = None) -> BenchmarksConfig:
    return parse_config(BenchmarksConfig, argv, __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/run.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
