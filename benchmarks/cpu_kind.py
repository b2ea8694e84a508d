"""One CPU kind's part of benchmarks/README.md: what the reduced-precision modes do against the best fp32 mode, and
what the trainer's automatic choices pick, on the CPU this runs on (or on the kernels it is held to).

    python benchmarks/cpu_kind.py --name intel-xeon-amx                          # about 15 minutes on 2 idle cores
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_kind.py --name intel-xeon-held-to-avx2

The project's machines are not one kind (AMD EPYC with AVX2 only, AMD EPYC with AVX-512 VNNI and bf16, Intel Xeon
with AVX-512 VNNI and AMX), and an automatic choice right on one may be wrong on another. Two measurements, each with
its own tool: `efficientvit bench` times EfficientViT-M0 and M4 in every mode in turns (int8, bf16 and compiled bf16
against the best fp32 mode, per-round ratios; the header records the instruction sets), and
`benchmarks/train_speed.py` lets the trainer choose its mode for each CPU proxy (`precision: auto`, `compile:
auto`) and times that choice against plain fp32 eager over the proxy's whole run. Both land in
benchmarks/cpu_kinds/<name>/; `python benchmarks/run.py` (or `--from-csv`) writes every kind's folder into the README.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

if not __package__:  # `python benchmarks/cpu_kind.py`: the repository root, for `benchmarks.train_speed`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import train_speed
from efficientvit.bench.run import BenchConfig, BenchRun, best_modes, run_bench
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.results import markdown_table

HERE = Path(__file__).resolve().parent
KINDS = HERE / "cpu_kinds"
MODELS = ["efficientvit_m0", "efficientvit_m4"]
FP32_MODES = ["fused", "channels_last", "compile", "onnxruntime"]
REDUCED = ["int8", "bf16", "compile_bf16"]


@dataclass
class CpuKindConfig:
    name: str = knob(help="the kind's folder under benchmarks/cpu_kinds/, e.g. amd-epyc-avx2")
    threads: int = knob(2, "CPU threads")
    rounds: int = knob(3, "interleaved rounds of the bench and of the training epochs")
    seconds: float = knob(1.0, "time budget per bench measurement")
    images: int = knob(3200, "training images per timed epoch of the trainer's choice against plain fp32")


def measure(config: CpuKindConfig) -> None:
    folder = KINDS / config.name
    bench = run_bench(
        BenchConfig(
            {model: FP32_MODES + REDUCED for model in MODELS},
            threads=config.threads,
            seconds=config.seconds,
            rounds=config.rounds,
            memory=False,
        ),
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    bench.write(folder / "bench.csv", config_arguments(config))
    speed = train_speed.TrainSpeedConfig(rounds=config.rounds, images=config.images, out=folder / "train.csv")
    train_speed.run(speed)


def ratio_cell(samples: pd.DataFrame, model: str, mode: str, reference: str) -> str:
    """`model` in `mode` over itself in `reference`: the median of per-round ratios [min-max]."""
    rounds = samples[samples["model"] == model].pivot(index="round", columns="mode", values="img_s")
    ratio = rounds[mode] / rounds[reference]
    return f"{ratio.median():.2f}x [{ratio.min():.2f}-{ratio.max():.2f}]"


def kind_rows(folder: Path) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """A kind's CPU line, its inference table (per model) and its training table (per proxy)."""
    bench = BenchRun.read(folder / "bench.csv")
    samples = bench.samples
    fp32 = samples[samples["mode"].isin(FP32_MODES)]
    best = best_modes(fp32)
    inference = pd.DataFrame(
        [
            {
                "model": model,
                "best fp32 mode (img/s)": f"{best[model]} ({fp32[(fp32['model'] == model) & (fp32['mode'] == best[model])]['img_s'].median():.0f})",  # noqa: E501
                **{f"{mode} / best fp32": ratio_cell(samples, model, mode, best[model]) for mode in REDUCED},
            }
            for model in MODELS
            if model in best
        ]
    )
    training = train_speed.speed_table(pd.read_csv(folder / "train.csv"))
    training = training[["proxy", "chosen mode", "plain / chosen, run (median [min-max] over rounds)"]]
    return f"{bench.cpu}; {bench.peaks_line()}", inference, training


def section(kinds: Path = KINDS) -> list[str]:
    """benchmarks/README.md's section: one part per measured CPU kind."""
    folders = sorted(p for p in kinds.glob("*") if (p / "bench.csv").exists() and (p / "train.csv").exists())
    if not folders:
        return []
    lines = [
        "## Per CPU kind",
        "",
        "The modes whose speed depends on the instruction sets, on each kind of CPU measured "
        "(`python benchmarks/cpu_kind.py --name NAME`, 3 rounds of 1 s at batch 16, 224 px, 2 threads; a kind "
        "named `held-to-avx2` ran with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`, which holds PyTorch's "
        "and oneDNN's kernels to AVX2 but not onnxruntime's, so its int8 row still uses the CPU's VNNI). Ratios are "
        "medians of per-round ratios [min-max] against the model's best fp32 mode, timed in the same rounds. "
        "Training: the mode the trainer's `precision: auto` / `compile: auto` choose for each CPU proxy's run, and "
        "plain fp32 eager's projected run time over the chosen mode's (above 1: the choice is faster).",
        "",
    ]
    for folder in folders:
        cpu, inference, training = kind_rows(folder)
        lines += [f"### {folder.name}", "", cpu, "", *markdown_table(inference), "", *markdown_table(training), ""]
        mfu = folder / "train_mfu.md"  # benchmarks/train_mfu.py: a proxy's training step against the matmul peak
        if mfu.exists():
            lines += ["Training step against the machine (model-FLOPs utilisation):", "", mfu.read_text().strip(), ""]
    return lines


def run(config: CpuKindConfig) -> None:
    if not config.name or "/" in config.name:
        raise UserError(f"--name must be a folder name such as amd-epyc-avx2, got {config.name!r}")
    measure(config)
    print("\n".join(section()))


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/cpu_kind.py", run, parse_config(CpuKindConfig, argv, __doc__.splitlines()[0]))


if __name__ == "__main__":
    sys.exit(main())
