"""Training speed against the machine: the CPU proxies' training step (forward, backward, fused AdamW) in
multiply-adds per second over the matmul peak of the arithmetic it runs in (fp32, or bf16 for the bf16 mode),
measured in the same run: its model-FLOPs utilisation (MFU).

    python benchmarks/train_mfu.py --out benchmarks/cpu_kinds/NAME/train_mfu.csv   # 5 min on 2 idle cores, and .md

A step's work is three forward passes' multiply-adds (the forward, and in the backward the gradients of the
activations and of the weights), counted by fvcore on the forward; the peak is `runtime.peak_matmul_macs` (the one
the bench divides by) in fp32 and, for the bf16 mode, in bf16, at the same thread count (a bf16 step set against
the fp32 peak could read above 100%; the samples keep that share too, `fp32_share`). Each proxy is timed in every
mode the trainer may choose on this CPU (fp32 eager; bf16 autocast where the CPU has it natively; torch.compile),
the modes in turns, on 1 thread (a reference-run training process) and on 2 (a training alone on the machine).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import exit_status
from efficientvit.flops import count_flops
from efficientvit.models import create_model
from efficientvit.results import atomic_write_text, markdown_table, processor_name, write_results
from efficientvit.runtime import Speed, cpu_features, peak_matmul_macs, time_calls

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "experiments" / "cpu"


@dataclass
class MfuConfig:
    out: Path = knob(help="the samples' CSV, benchmarks/cpu_kinds/<kind>/train_mfu.csv (a .json and the .md beside)")
    proxies: list[str] = knob(["deit_tiny_proxy_full", "swin_tiny_proxy_full"], "configs in experiments/cpu")
    threads: list[int] = knob([1, 2], "torch threads to time at")
    steps: int = knob(20, "training steps per mode and round")
    rounds: int = knob(3, "rounds of the modes in turns")


def step_of(model: torch.nn.Module, batch: int, img_size: int, speed: Speed):
    """One training step of `model` in `speed`, on a fixed random batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if speed.compile else model
    images, targets = torch.randn(batch, 3, img_size, img_size), torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=speed.bf16):
            loss = F.cross_entropy(forward(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(config: MfuConfig) -> pd.DataFrame:
    modes = {"fp32": Speed(fused_optimizer=True), "compile": Speed(fused_optimizer=True, compile=True)}
    if cpu_features().native_bf16:
        modes["bf16"] = Speed(bf16=True, fused_optimizer=True)
    rows = []
    for threads in config.threads:
        torch.set_num_threads(threads)
        # each mode against the peak of the arithmetic it runs in: a bf16 step against the bf16 matmul peak
        peaks = {"fp32": peak_matmul_macs()}
        if "bf16" in modes:
            peaks["bf16"] = peak_matmul_macs(dtype=torch.bfloat16)
        for name in config.proxies:
            values = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
            batch, size = values["batch_size"], values["img_size"]
            model = create_model(values["model"], num_classes=10, img_size=size, **values["model_kwargs"]).train()
            macs = count_flops(model.eval(), (size, size))
            steps = {mode: step_of(model.train(), batch, size, speed) for mode, speed in modes.items()}
            for step in steps.values():
                time_calls(step, 0.0, warmup=3)  # compiles and warms every mode before any is timed
            for r in range(config.rounds):
                for mode, step in steps.items():
                    seconds = statistics.median(time_calls(step, 0.0, warmup=0)[1] for _ in range(config.steps))
                    img_s = batch / seconds
                    arithmetic = "bf16" if modes[mode].bf16 else "fp32"
                    rows.append(
                        dict(
                            proxy=name,
                            threads=threads,
                            mode=mode,
                            round=r,
                            img_s=img_s,
                            macs_per_img=macs,
                            peak_dtype=arithmetic,
                            peak_gmac_s=peaks[arithmetic] / 1e9,
                            mfu=3 * macs * img_s / peaks[arithmetic],
                            fp32_share=3 * macs * img_s / peaks["fp32"],
                        )
                    )
            print(f"{name}, {threads} threads: done", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def table(samples: pd.DataFrame) -> str:
    medians = (
        samples.groupby(["proxy", "threads", "mode"], sort=False)
        .agg(
            img_s=("img_s", "median"),
            mfu=("mfu", "median"),
            dtype=("peak_dtype", "first"),
            peak=("peak_gmac_s", "first"),
            macs=("macs_per_img", "first"),
        )
        .reset_index()
    )
    cells = medians.assign(
        img_s=medians["img_s"].map("{:.0f}".format),
        mfu=(100 * medians["mfu"]).map("{:.0f}%".format),
        peak=medians["peak"].map("{:.0f}".format),
        macs=(medians["macs"] / 1e6).map("{:.1f}".format),
    ).rename(
        columns={
            "img_s": "training img/s",
            "mfu": "MFU (of its arithmetic's peak)",
            "dtype": "peak of",
            "peak": "peak, GMAC/s",
            "macs": "forward M multiply-adds per image",
        }
    )
    return "\n".join(markdown_table(cells)) + "\n"


def run(config: MfuConfig) -> None:
    samples = measure(config)
    write_results(samples, config.out, config_arguments(config))
    command = "python benchmarks/train_mfu.py"
    text = f"`{command}` ({processor_name()}: {cpu_features().describe()})\n\n{table(samples)}"
    atomic_write_text(config.out.with_suffix(".md"), text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    return exit_status("benchmarks/train_mfu.py", run, parse_config(MfuConfig, argv, __doc__.splitlines()[0]))


if __name__ == "__main__":
    sys.exit(main())
