"""Regenerate benchmarks/cpu_b16.csv and benchmarks/README.md: every figure comes from one interleaved run.

    python benchmarks/run.py                 # about 15 minutes on 2 idle cores
    python benchmarks/run.py --rounds 5 --seconds 2
    python benchmarks/run.py --from-csv benchmarks/cpu_b16.csv    # only rewrite README.md

Entries: ours M0-M5 (channels_last, fused, onnxruntime, bf16), timm's port of the same models with the same
state-dict layout (fused, channels_last) and the paper's CPU baselines (fused, channels_last, onnxruntime), on
`--threads` threads; then the models of the paper's CPU ratios again on one thread, the paper's own protocol
(cpu_b16_1thread.csv).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from efficientvit.bench import best_modes, ratios, run_bench, summarize, write_csv
from efficientvit.files import atomic_write_text

HERE = Path(__file__).resolve().parent
OURS = [f"efficientvit_m{i}" for i in range(6)]
TIMM = [f"timm:{name}" for name in OURS]
CNNS = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
EAGER = ("fused", "channels_last")
SINGLE_CSV = "cpu_b16_1thread.csv"
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


def report(samples, single, peak, args) -> str:
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
        "## Ours vs timm's port, fused eager, same weights",
        "",
        "timm's `efficientvit_m*` folded with timm's own `reparameterize_model`; ours with `efficientvit.fuse`, "
        "which also stores the conv weights channels-last (the network then runs channels-last from the stem on, "
        "whatever the input's layout). First ratio: the best eager layout of each side (`channels_last` input or "
        "plain `fused`); second: each side's folding tool as a user calls it, on an NCHW input.",
        "",
        "| model | ours img/s (mode) | timm img/s (mode) | ours / timm, best layouts | ours / timm, as folded |",
        "|---|---|---|---|---|",
    ]
    for ours, timm in zip(OURS, TIMM):
        best_ratio = one_ratio(samples, ours, eager[ours], timm, eager[timm])
        nchw = one_ratio(samples, ours, "fused", timm, "fused")
        lines.append(
            f"| {ours} | {fmt_speed(summary, ours, eager[ours])} ({eager[ours]}) | "
            f"{fmt_speed(summary, timm, eager[timm])} ({eager[timm]}) | {fmt_ratio(best_ratio)} | "
            f"{fmt_ratio(nchw)} |"
        )
    lines += [
        "",
        "## Best mode vs timm's fused eager",
        "",
        "Our fastest mode against timm's best eager layout. Accuracy cost: the largest |logit - eager fp32 logit| on "
        "the timed batch, with random BatchNorm statistics so every layer shapes the logits (largest |logit| in "
        "brackets).",
        "",
        "| model | best mode | img/s | vs timm fused eager | max logit diff [max abs logit] |",
        "|---|---|---|---|---|",
    ]
    for ours, timm in zip(OURS, TIMM):
        r = summary[(summary.model == ours) & (summary["mode"] == best[ours])].iloc[0]
        lines.append(
            f"| {ours} | {best[ours]} | {fmt_speed(summary, ours, best[ours])} | "
            f"{fmt_ratio(one_ratio(samples, ours, best[ours], timm, eager[timm]))} | "
            f"{r.max_logit_diff:.1e} [{r.max_abs_logit:.2g}] |"
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
        "threads (under the same load). Share of peak = fvcore multiply-adds per image x img/s / peak (bf16 "
        "entries are also divided by the fp32 peak). Peak MB: "
        f"{meta['memory_method']}.",
        "",
        "| model | mode | img/s [min-max] | ms/batch | GMACs/img | share of peak | peak MB | max logit diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.model} | {r.mode} | {r.img_s:.1f} [{r.img_s_min:.1f}-{r.img_s_max:.1f}] | "
            f"{r.latency_ms:.0f} | {r.gmacs:.3f} | {100 * r.share_of_peak:.1f}% | {r.peak_mem_mb:.0f} | "
            f"{r.max_logit_diff:.1e} |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--out", type=Path, default=HERE, help="folder for cpu_b16.csv and README.md (benchmarks/)")
    parser.add_argument("--from-csv", type=Path, help="only rewrite README.md from samples written before")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_csv:
        import pandas as pd

        samples = pd.read_csv(args.from_csv)
        single = pd.read_csv(args.from_csv.with_name(SINGLE_CSV))
        args.rounds, args.seconds = samples["round"].max() + 1, samples["seconds"].iloc[0]
        args.threads = samples["threads"].iloc[0]
        return write_report(report(samples, single, samples["peak_gmac_s"].iloc[0] * 1e9, args), args.out)
    modes = {
        **{m: ["fused", "channels_last", "onnxruntime", "bf16"] for m in OURS},
        **{m: list(EAGER) for m in TIMM},
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
    return write_report(report(samples, single, peak, args), args.out)


def write_report(text: str, folder: Path) -> int:
    atomic_write_text(folder / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
