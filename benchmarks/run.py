"""Regenerate benchmarks/cpu_b16.csv and benchmarks/README.md: every figure comes from one interleaved run.

    python benchmarks/run.py                 # about 30 minutes on 2 idle cores
    python benchmarks/run.py --rounds 5 --seconds 2
    python benchmarks/run.py --from-csv benchmarks/cpu_b16.csv    # only rewrite README.md

Entries: ours M0-M5 and timm's port of the same models (same state-dict layout) in every mode both run (fused,
channels_last, compile, onnxruntime, bf16, compile_bf16), and the paper's CPU baselines (fused, channels_last,
onnxruntime), on `--threads` threads; then the models of the paper's CPU ratios again on one thread, the paper's
own protocol (cpu_b16_1thread.csv); then the Fig. 2 profiler on M0 and M4 in eager, compile and onnxruntime
(profile_modes.csv; `--no-profile` skips it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from efficientvit.bench import BF16_MODES, best_modes, ratios, run_bench, summarize, write_csv
from efficientvit.files import atomic_write_text

HERE = Path(__file__).resolve().parent
OURS = [f"efficientvit_m{i}" for i in range(6)]
TIMM = [f"timm:{name}" for name in OURS]
CNNS = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
EAGER = ("fused", "channels_last")
# every mode ours and timm's both run
MODES = ("fused", "channels_last", "compile", "onnxruntime", "bf16", "compile_bf16")
FP32 = MODES[:4]
TARGETS = {"per_mode": 1.2, "best": 1.3, "fp32_share_of_peak": 0.6}  # the targets, medians over rounds
SINGLE_CSV = "cpu_b16_1thread.csv"
PROFILE_CSV = "profile_modes.csv"
PROFILED = ["efficientvit_m0", "efficientvit_m4"]  # the smallest and the paper's Fig. 2 model
PROFILED_MODES = ["eager", "compile", "onnxruntime"]
PAPER = [
    ("efficientvit_m3", "mobilenet_v2", "~3x (Intel CPU)"),
    ("efficientvit_m5", "efficientnet_b0", "~1.9x"),
    ("efficientvit_m5", "mobilenet_v3_large", "faster (Table 2 lists both)"),
]


def fmt_ratio(row) -> str:
    return f"{row.speedup:.2f}x [{row.speedup_min:.2f}-{row.speedup_max:.2f}]"


def fmt_speed(summary, model, mode) -> str:
    r = summary[(summary.model == model) & (summary["mode"] == mode)].iloc[0]
    return f"{r.img_s:.1f} [{r.img_s_min:.1f}-{r.img_s_max:.1f}]"


def one_ratio(samples, model, mode, ref, ref_mode):
    return ratios(samples, [model], [ref], {model: mode, ref: ref_mode}).iloc[0]


def mark(value: float, target: float, percent: bool = False) -> str:
    """The value, in bold with a check mark when it meets its target."""
    text = f"{100 * value:.0f}%" if percent else f"{value:.2f}x"
    return f"**{text}** ✓" if value >= target else text


def report(samples, single, peak, peak_bf16, args, profile=None) -> str:
    summary = summarize(samples)
    best = best_modes(samples)
    eager = {m: best_modes(samples[samples["mode"].isin(EAGER)])[m] for m in OURS + TIMM + CNNS}
    meta = samples.iloc[0]
    lines = [
        "# Benchmarks",
        "",
        "Regenerate everything on this page (tables and `cpu_b16.csv`) with one command:",
        "",
        "```",
        f"python benchmarks/run.py --threads {args.threads} --rounds {args.rounds} --seconds {args.seconds}",
        "```",
        "",
        f"Protocol (the paper's): random weights, eval mode, batch {meta['batch']}, {meta['img_size']} px, CPU with "
        f"{meta['threads']} threads ({os.cpu_count()} cores on this machine, {torch.__version__}), warm-up then "
        f"batches for {args.seconds} s; all {len(summary)} entries below were timed in turns, {args.rounds} rounds. "
        "Figures are medians over rounds with [min-max]; a speed-up is the median of per-round ratios (both sides "
        "timed in the same round), so drifts of the machine during the run cancel. BatchNorm is folded in every "
        "mode but `eager`. Every model, ours and the baselines alike, gets its best layout: each table names the "
        "mode it used.",
        "",
        *noisy_warning(summary),
        "## Ours / timm, mode by mode",
        "",
        "timm's `efficientvit_m*` (same weights) against ours in every mode both run: BatchNorm folded by each "
        "side's own tool (timm's `reparameterize_model`, our `efficientvit.fuse`), exported by the same ONNX "
        "exporter, compiled by the same inductor. Each cell: median of per-round ratios [min-max]. Last column: "
        "each side's fastest mode against the other's.",
        "",
        "| model | " + " | ".join(MODES) + " | ours best / timm best |",
        "|---|" + "---|" * (len(MODES) + 1),
    ]
    for ours, timm in zip(OURS, TIMM):
        cells = [fmt_ratio(one_ratio(samples, ours, mode, timm, mode)) for mode in MODES]
        best_ratio = one_ratio(samples, ours, best[ours], timm, best[timm])
        lines.append(f"| {ours} | {' | '.join(cells)} | {fmt_ratio(best_ratio)} ({best[ours]} / {best[timm]}) |")
    lines += [
        "",
        "## Targets",
        "",
        f"Ours / timm at least {TARGETS['per_mode']}x in every mode and {TARGETS['best']}x best against best; the "
        f"best fp32 mode at {100 * TARGETS['fp32_share_of_peak']:.0f}% or more of the fp32 matmul peak (M3-M5); "
        "the best bf16 entry faster than the fp32 peak allows (multiply-adds per second over the fp32 peak above "
        f"1; M4/M5). Peaks this run: fp32 {peak / 1e9:.1f}, bf16 {peak_bf16 / 1e9:.1f} G multiply-adds/s.",
        "",
        "| model | worst mode: ours / timm | best / best | best fp32 mode: share of fp32 peak | bf16: share of "
        "fp32 peak (of bf16 peak) |",
        "|---|---|---|---|---|",
    ]
    for ours, timm in zip(OURS, TIMM):
        per_mode = {mode: one_ratio(samples, ours, mode, timm, mode).speedup for mode in MODES}
        worst = min(per_mode, key=per_mode.get)
        best_ratio = one_ratio(samples, ours, best[ours], timm, best[timm]).speedup
        fp32 = summary[(summary.model == ours) & summary["mode"].isin(FP32)].sort_values("img_s").iloc[-1]
        bf16 = summary[(summary.model == ours) & summary["mode"].isin(BF16_MODES)].sort_values("img_s").iloc[-1]
        lines.append(
            f"| {ours} | {mark(per_mode[worst], TARGETS['per_mode'])} ({worst}) | "
            f"{mark(best_ratio, TARGETS['best'])} | "
            f"{mark(fp32.share_of_peak, TARGETS['fp32_share_of_peak'], percent=True)} ({fp32['mode']}) | "
            f"{mark(bf16.share_of_peak, 1.0, percent=True)} ({100 * bf16.share_of_own_peak:.0f}%, {bf16['mode']}) |"
        )
    lines += ["", *profile_section(profile)]
    lines += [
        "## Compile time and numerics",
        "",
        "Seconds from an eval-mode model to its first batch (compile: inductor with freezing, its caches "
        "disabled so this is a first compile; onnxruntime: export and session), and each mode's largest |logit - "
        "eager fp32 logit| on the timed batch, with random BatchNorm statistics so every layer shapes the logits.",
        "",
        "| model | compile s, ours / timm | onnxruntime s, ours / timm | max logit diff, ours: "
        + ", ".join(MODES)
        + " |",
        "|---|---|---|---|",
    ]
    for ours, timm in zip(OURS, TIMM):
        entry = summary.set_index(["model", "mode"])
        diffs = ", ".join(f"{entry.loc[(ours, mode), 'max_logit_diff']:.0e}" for mode in MODES)
        lines.append(
            f"| {ours} | {entry.loc[(ours, 'compile'), 'prepare_seconds']:.0f} / "
            f"{entry.loc[(timm, 'compile'), 'prepare_seconds']:.0f} | "
            f"{entry.loc[(ours, 'onnxruntime'), 'prepare_seconds']:.1f} / "
            f"{entry.loc[(timm, 'onnxruntime'), 'prepare_seconds']:.1f} | {diffs} |"
        )
    lines += [
        "",
        "## The paper's CPU ratios, in this run",
        "",
        f"Each side in its best eager layout on {args.threads} threads and on one thread (the paper's Table 2 "
        "protocol: one thread, batch 16), and each side in onnxruntime (the same runtime for both).",
        "",
        f"| ours | baseline | paper | eager, best layout, {args.threads} threads | eager, best layout, 1 thread | "
        "onnxruntime |",
        "|---|---|---|---|---|---|",
    ]
    single_eager = best_modes(single)
    for ours, cnn, paper in PAPER:
        lines.append(
            f"| {ours} ({eager[ours]}) | {cnn} ({eager[cnn]}) | {paper} | "
            f"{fmt_ratio(one_ratio(samples, ours, eager[ours], cnn, eager[cnn]))} | "
            f"{fmt_ratio(one_ratio(single, ours, single_eager[ours], cnn, single_eager[cnn]))} | "
            f"{fmt_ratio(one_ratio(samples, ours, 'onnxruntime', cnn, 'onnxruntime'))} |"
        )
    lines += [
        "",
        "## Every entry, and the share of the machine's peak",
        "",
        f"Peak: {peak / 1e9:.1f} G multiply-adds/s, a 2048x2048 fp32 matmul timed by the bench itself on the same "
        f"threads (under the same load; bf16: {peak_bf16 / 1e9:.1f}). Share of peak = fvcore multiply-adds per "
        "image x img/s / the fp32 peak (bf16 entries: of the bf16 peak in brackets). First batch: seconds from the "
        f"model to its first output. Peak MB: {meta['memory_method']}.",
        "",
        "| model | mode | img/s [min-max] | ms/batch | GMACs/img | share of peak | first batch s | peak MB | "
        "max logit diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        own = f" ({100 * r.share_of_own_peak:.1f}%)" if r.mode in BF16_MODES else ""
        lines.append(
            f"| {r.model} | {r.mode} | {r.img_s:.1f} [{r.img_s_min:.1f}-{r.img_s_max:.1f}] | "
            f"{r.latency_ms:.0f} | {r.gmacs:.3f} | {100 * r.share_of_peak:.1f}%{own} | {r.prepare_seconds:.1f} | "
            f"{r.peak_mem_mb:.0f} | {r.max_logit_diff:.1e} |"
        )
    return "\n".join(lines) + "\n"


def profile_section(profile) -> list[str]:
    """Where the time goes in each execution path: the Fig. 2 profiler's memory-bound share per model and mode."""
    lines = [
        "## Where the time goes, per execution path",
        "",
    ]
    if profile is None:
        return lines + [f"Not profiled in this run (`--no-profile`, or no {PROFILE_CSV} beside the samples).", ""]
    lines += [
        "The paper's Fig. 2 profiler (`analysis/memory_profile.py --modes eager compile onnxruntime`, batch 16, "
        "224 px) on each path a user takes: eager as the paper profiled it (BatchNorm unfolded), `torch.compile` "
        "(inductor with freezing; its generated kernels are the category `fused`, memory-bound), onnxruntime "
        "(its own profiler's node times). Memory-bound: reshape, copy, element-wise, normalization and fused "
        "kernels.",
        "",
        "| model | mode | ms per batch (profiled) | memory-bound share | largest memory-bound categories | "
        "matmul + convolution |",
        "|---|---|---|---|---|---|",
    ]
    for (name, mode), g in profile.groupby(["name", "mode"], sort=False):
        by_category = g.groupby("category")["share"].sum().sort_values(ascending=False)
        bound = by_category[by_category.index.isin(g.loc[g["memory_bound"], "category"])]
        largest = ", ".join(f"{cat} {100 * share:.1f}%" for cat, share in bound.head(3).items())
        compute = by_category.reindex(["matmul", "convolution"]).fillna(0).sum()
        lines.append(
            f"| {name} | {mode} | {g['step_time_us'].iloc[0] / 1e3:.1f} | {100 * bound.sum():.1f}% | {largest} | "
            f"{100 * compute:.1f}% |"
        )
    return lines + [""]


def noisy_warning(summary) -> list[str]:
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement (1.0)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-entry peak-memory processes")
    parser.add_argument(
        "--no-profile", action="store_true", help=f"skip the per-mode profile of {' and '.join(PROFILED)}"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder for cpu_b16.csv and README.md (benchmarks/)")
    parser.add_argument("--from-csv", type=Path, help="only rewrite README.md from samples written before")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_csv:
        import pandas as pd

        missing = [p for p in (args.from_csv, args.from_csv.with_name(SINGLE_CSV)) if not p.exists()]
        if missing:
            sys.exit(f"benchmarks/run.py: {missing[0]} does not exist: give --from-csv the cpu_b16.csv of a full run")

        samples = pd.read_csv(args.from_csv)
        single = pd.read_csv(args.from_csv.with_name(SINGLE_CSV))
        args.rounds, args.seconds = samples["round"].max() + 1, samples["seconds"].iloc[0]
        args.threads = samples["threads"].iloc[0]
        peaks = samples["peak_gmac_s"].iloc[0] * 1e9, samples["peak_bf16_gmac_s"].iloc[0] * 1e9
        profile_csv = args.from_csv.with_name(PROFILE_CSV)
        profile = pd.read_csv(profile_csv) if profile_csv.exists() else None
        return write_report(report(samples, single, *peaks, args, profile), args.out)
    # A compile time is what a first compile costs: inductor's on-disk caches would make a rerun's near zero.
    torch.compiler.config.force_disable_caches = True
    modes = {
        **{m: list(MODES) for m in OURS + TIMM},
        **{m: [*EAGER, "onnxruntime"] for m in CNNS},
    }
    samples, peak = run_bench(
        OURS + TIMM + CNNS,
        modes,
        "cpu",
        16,
        args.threads,
        224,
        args.seconds,
        args.rounds,
        memory=not args.no_memory,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    write_csv(samples, args.out / "cpu_b16.csv", meta=vars(args))
    paper_models = list(dict.fromkeys(name for pair in PAPER for name in pair[:2]))
    single, _ = run_bench(
        paper_models,
        list(EAGER),
        "cpu",
        16,
        1,
        224,
        args.seconds,
        args.rounds,
        memory=False,
        log=lambda s: print(f"1 thread: {s}", file=sys.stderr, flush=True),
    )
    write_csv(single, args.out / SINGLE_CSV, meta={**vars(args), "threads": 1})
    if args.no_profile:  # an older profile beside these timings would be read back with them by --from-csv
        for stale in (args.out / PROFILE_CSV, (args.out / PROFILE_CSV).with_suffix(".json")):
            stale.unlink(missing_ok=True)
    profile = None if args.no_profile else profile_modes(args)
    peak_bf16 = samples["peak_bf16_gmac_s"].iloc[0] * 1e9
    return write_report(report(samples, single, peak, peak_bf16, args, profile), args.out)


def profile_modes(args: argparse.Namespace):
    """The Fig. 2 profile of PROFILED in every execution path, written to PROFILE_CSV (redone from scratch)."""
    from analysis.memory_profile import ProfileConfig
    from analysis.memory_profile import run as run_profile

    config = ProfileConfig(
        models=PROFILED, modes=PROFILED_MODES, threads=args.threads, out=args.out / PROFILE_CSV, fresh=True
    )
    return run_profile(config)


def write_report(text: str, folder: Path) -> int:
    atomic_write_text(folder / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
