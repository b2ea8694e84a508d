"""`efficientvit bench`: the summary and ratio tables of one bench run on stdout, progress on stderr, every round's
sample to --out (efficientvit/bench/ does the work)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..bench.modes import MODE_HELP, MODES
from ..bench.run import BenchConfig, BenchRun, ratios, run_bench, summarize
from ..bench.zoo import TORCHVISION_MODELS
from ..config import config_arguments, field_default

HELP = "throughput, latency, memory and share of peak, models timed in turns"
SETTINGS = {f.name: f for f in dataclasses.fields(BenchConfig)}


def setting(parser: argparse.ArgumentParser, name: str, **options) -> None:
    """A flag for a BenchConfig field: its help, and its default when it has one to show."""
    default = field_default(SETTINGS[name])
    shown = "" if default is None else f" ({default})"
    parser.add_argument(
        f"--{name.replace('_', '-')}", default=default, help=SETTINGS[name].metadata["help"] + shown, **options
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The paper's protocol: random weights, eval mode, warm-up, then batches until a "
        "time budget; the models (and --vs references) are timed in turns for --rounds "
        "rounds, so their ratios come from one run. Names: `efficientvit list`, "
        f"{', '.join(TORCHVISION_MODELS)} (torchvision), timm:<name> (timm). "
        "Modes: " + "; ".join(f"{k}: {v}" for k, v in MODE_HELP.items()) + "."
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models to time")
    parser.add_argument(
        "--vs",
        nargs="+",
        metavar="MODEL",
        help="references: also timed, and every model's speed-up over each is printed (each side in its fastest mode)",
    )
    parser.add_argument(
        "--mode",
        nargs="+",
        default=["channels_last"],
        choices=MODES,
        metavar="MODE",
        help=f"one or more of {', '.join(MODES)} (default channels_last: fused, the best eager "
        "layout of every model here on CPU)",
    )
    setting(parser, "device")
    setting(parser, "batch", type=int)
    setting(parser, "threads", type=int)
    setting(parser, "img_size", type=int)
    setting(parser, "seconds", type=float)
    setting(parser, "rounds", type=int)
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurement (a process per entry)"
    )
    parser.add_argument("--out", metavar="CSV", help="write every round's sample (long format, plus a .json sidecar)")


def config_from(args: argparse.Namespace) -> BenchConfig:
    names = dict.fromkeys(args.models + (args.vs or []))
    return BenchConfig(
        models={name: args.mode for name in names},
        device=args.device,
        batch=args.batch,
        threads=args.threads,
        img_size=args.img_size,
        seconds=args.seconds,
        rounds=args.rounds,
        memory=not args.no_memory,
    )


def print_summary(run: BenchRun) -> None:
    summary = summarize(run.samples)
    print(
        f"{run.cpu or run.device}, batch {run.batch}, {run.threads} threads, {run.img_size} px, "
        f"{run.rounds} interleaved rounds of {run.seconds} s; img/s median [min-max]"
    )
    table = summary.assign(
        **{
            "img/s": summary["img_s"].map("{:.1f}".format),
            "[min-max]": [f"[{a:.1f}-{b:.1f}]" for a, b in zip(summary["img_s_min"], summary["img_s_max"])],
            "ms/batch": summary["latency_ms"].map("{:.1f}".format),
            "peak MB": summary["peak_mem_mb"].map("{:.0f}".format),
            "GMACs": summary["gmacs"].map("{:.3f}".format),
            "% of peak": (100 * summary["share_of_peak"]).map("{:.1f}".format),
            "max logit diff": summary["max_logit_diff"].map("{:.1e}".format),
        }
    )
    print(
        table[
            ["model", "mode", "img/s", "[min-max]", "ms/batch", "peak MB", "GMACs", "% of peak", "max logit diff"]
        ].to_string(index=False)
    )
    print(
        f"{run.peaks_line()}. % of peak = fvcore multiply-adds x img/s / the fp32 matmul peak (GMAC/s); peak MB: "
        f"{run.memory_method}; max logit diff: vs eager fp32 on the timed batch (logits up to "
        f"{summary['max_abs_logit'].max():.2g})"
    )
    beyond = summary[summary["share_of_own_peak"] > 1]
    for row in beyond.itertuples():  # a peak that a model beats was no peak: say so rather than print 3,000%
        print(f"note: {row.model} ({row.mode}) runs at {100 * row.share_of_own_peak:.0f}% of its type's measured peak")


def print_ratios(run: BenchRun, models: list[str], references: list[str]) -> None:
    table = ratios(run.samples, models, references)
    if len(table):
        print("\nspeed-up, per-round ratios (each model in its fastest mode): median [min-max]")
        for row in table.itertuples():
            print(
                f"  {row.model} ({row.mode}) vs {row.reference} ({row.reference_mode}): {row.speedup:.2f}x "
                f"[{row.speedup_min:.2f}-{row.speedup_max:.2f}]"
            )


def run(args: argparse.Namespace) -> None:
    config = config_from(args)
    bench = run_bench(config, log=lambda text: print(text, file=sys.stderr, flush=True))
    print_summary(bench)
    if args.vs:
        print_ratios(bench, list(dict.fromkeys(args.models)), list(dict.fromkeys(args.vs)))
    if args.out:
        bench.write(args.out, config_arguments(config) | {"vs": args.vs, "out": args.out})
        print(f"samples written to {args.out}")
