"""Where and how fast the code runs: the device a user asked for, optional packages, running out of memory, the
one timing loop (`time_calls`, and `rate` on top of it) with the machine's own peak rates, and how a training step
runs (`Speed`: bf16, channels-last, fused optimizer, compile), chosen by timing where that pays.

One place for each, so every command says the same sentence for the same problem and every figure in img/s or
GMAC/s comes from the same loop.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .models import model_family

if TYPE_CHECKING:
    from .train_config import TrainConfig

EXTRAS = "pip install 'efficientvit-lab[bench]'"  # onnx and onnxruntime
TUNE_ROUNDS = 10  # timed training steps per mode when the trainer chooses its mode
# bf16 or compile replace fp32 eager only when the trial measures them at least this much faster: a short trial's
# medians vary by about that much (the DeiT proxy's bf16 step, 7% slower, was once chosen), and fp32 is exact
MODE_MARGIN = 1.05
TUNE_MIN_STEPS = 50  # shorter runs (tests, smoke runs) skip that measurement: it would cost more than it could save
# Before a compiled step is measured: what compiling costs (the CPU proxies: 15-95 s, forward and backward) and how
# much faster it might then run. Compiling is timed only where these say it could pay: on runs of tens of minutes.
COMPILE_SECONDS = 60.0
COMPILE_GAIN = 1.5


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` (CUDA when there is one); a CUDA device that is not there is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: choose cpu, cuda or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}: choose cpu, cuda or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for but no CUDA device is available: use cpu or auto")
    return device


def require(module: str, what: str, install: str = EXTRAS) -> ModuleType:
    """Import a package imported only where it is used, or say which feature needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module}, which is not installed: {install}") from None


def out_of_memory(error: BaseException) -> bool:
    """True for the ways torch, the allocator and the OS report running out of memory."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def time_calls(
    fn: Callable[[], object], seconds: float, device: str | torch.device = "cpu", warmup: int = 1
) -> tuple[list[float], float]:
    """Call `fn` `warmup` times, then repeatedly for `seconds` (at least once): the seconds of every timed call, and
    the seconds of them all. CUDA is synchronised before and after the timed calls, not between them, so the
    per-call times are the device's only when `fn` waits for it."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    sync()
    return times, time.perf_counter() - start


def rate(
    fn: Callable[[], object], work: float, seconds: float, device: str | torch.device = "cpu", warmup: int = 1
) -> float:
    """`work` units per second of `fn`, called repeatedly for `seconds` after `warmup` calls."""
    times, elapsed = time_calls(fn, seconds, device, warmup)
    return work * len(times) / elapsed


def sized_rate(call: Callable[[int], Callable[[], object]], largest: int, seconds: float, device="cpu") -> float:
    """Multiply-adds per second of `call(n)`, an n-square matmul: n doubles from 256 until one call takes a tenth
    of `seconds` or n reaches `largest`, then calls of that size are timed for `seconds`. So a path that crawls (bf16
    or int8 emulated on a CPU without the instructions: well under 1 G multiply-adds/s) is measured in a fraction of
    a second instead of minutes, and a fast one on a matrix large enough to reach its peak."""
    n = 256
    while True:
        fn = call(n)
        _, once = time_calls(fn, 0.0, device, warmup=1)
        if n >= largest or once >= seconds / 10:
            return rate(fn, n**3, seconds, device, warmup=0)
        n *= 2


def peak_matmul_macs(device: str | torch.device = "cpu", seconds: float = 1.0, dtype=torch.float32) -> float:
    """Multiply-adds per second of a large square matmul (up to 2048 on CPU, 8192 on GPU): the machine's practical
    peak, in the unit fvcore counts model FLOPs in (one FLOP is half a multiply-add elsewhere: `2 * peak`)."""

    def call(n: int) -> Callable[[], object]:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        return lambda: a @ b

    return sized_rate(call, 8192 if torch.device(device).type == "cuda" else 2048, seconds, device)


def copy_bandwidth(device: str | torch.device = "cpu", seconds: float = 0.5) -> float:
    """Bytes per second read plus written by a copy of 128 MiB, far beyond the caches."""
    src = torch.randn(32 * 2**20, device=device)
    dst = torch.empty_like(src)
    return rate(lambda: dst.copy_(src), 2 * src.numel() * src.element_size(), seconds, device)


# The instruction sets the CPU modes depend on, as /proc/cpuinfo names them: AVX-512, the int8 dot products (VNNI,
# in its AVX-512 and AVX forms), bf16 dot products (AVX-512 BF16) and Intel's matrix tiles (AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """What a CPU computes natively, and what the libraries are allowed to use of it: PyTorch's own kernels
    (`ATEN_CPU_CAPABILITY` lowers it) and oneDNN's (`ONEDNN_MAX_CPU_ISA`), which run matmuls, convolutions and bf16."""

    capability: str  # PyTorch's kernels: DEFAULT, AVX2, AVX512
    flags: tuple[str, ...]  # those of CPU_FLAGS the CPU has
    onednn_limit: str | None  # ONEDNN_MAX_CPU_ISA, when set

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware that oneDNN may use (elsewhere it emulates bf16, slower than fp32)."""
        return (
            bool({"avx512_bf16", "amx_bf16"} & set(self.flags))
            and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )

    def describe(self) -> str:
        """One line for a header: `PyTorch kernels AVX512; avx2 avx512f avx512_vnni ...; oneDNN limited to AVX2`."""
        limit = f"; oneDNN limited to {self.onednn_limit}" if self.onednn_limit else ""
        return f"PyTorch kernels {self.capability}; {' '.join(self.flags) or 'no ' + '/'.join(CPU_FLAGS[:2])}{limit}"


def cpu_features() -> CpuFeatures:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        words = set()
    return CpuFeatures(
        torch.backends.cpu.get_cpu_capability(),
        tuple(flag for flag in CPU_FLAGS if flag in words),
        os.environ.get("ONEDNN_MAX_CPU_ISA"),
    )


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX, usable by oneDNN: bf16 dot products in hardware. Elsewhere oneDNN emulates bf16."""
    return cpu_features().native_bf16


@dataclass(frozen=True)
class Speed:
    """How the training step runs; `choose_speed` picks it, `describe` says it in the log."""

    bf16: bool = False
    channels_last: bool = False
    fused_optimizer: bool = False
    compile: bool = False

    def describe(self) -> str:
        parts = [
            name
            for name, on in (
                ("bf16 autocast", self.bf16),
                ("channels-last", self.channels_last),
                ("fused AdamW", self.fused_optimizer),
                ("torch.compile", self.compile),
            )
            if on
        ]
        return ", ".join(parts) or "plain fp32 eager"


def fastest(steps_per_s: dict[Speed, float], setup_seconds: dict[Speed, float], total_steps: int) -> Speed:
    """The mode that finishes `total_steps` training steps first, its setup (compiling) included; a mode with bf16
    or compile is charged MODE_MARGIN on its steps, so it wins over fp32 eager only when clearly faster."""

    def finish(speed: Speed) -> float:
        margin = MODE_MARGIN if speed.bf16 or speed.compile else 1.0
        return setup_seconds.get(speed, 0.0) + margin * total_steps / steps_per_s[speed]

    return min(steps_per_s, key=finish)


def choose_speed(
    config: TrainConfig, model: nn.Module, device: torch.device, batch_shape: tuple, total_steps: int
) -> Speed:
    """The training config's `fast`, `precision` and `compile` made concrete for this model on this device.

    Where more than one mode is open (`precision: auto` on a CPU with native bf16, `compile: auto`) and the run
    has TUNE_MIN_STEPS steps or more, the modes are timed on training steps of a copy of the model: the eager
    ones first (cheap); the compiled ones only if, at the best eager rate times COMPILE_GAIN, a compiled mode
    would finish the run sooner even when charged COMPILE_SECONDS for every compiled mode the trial compiles (so
    runs of minutes never pay a compilation). The mode that finishes the run first (`fastest`, a compiled mode
    charged its measured compile time) is kept.
    """
    # conv models only: channels-last turns 1x1 convs into GEMMs; ViTs hold (tokens, channels) and gain nothing
    base = Speed(
        channels_last=config.fast and model_family(model.spec.name) == "efficientvit", fused_optimizer=config.fast
    )
    precisions = {"fp32": [False], "bf16": [True]}.get(config.precision) or (
        ([False, True] if cpu_has_native_bf16() else [False])
        if device.type == "cpu"
        else [torch.cuda.is_bf16_supported()]
    )
    compiles = [False, True] if config.compile == "auto" else [config.compile]
    candidates = [dataclasses.replace(base, bf16=bf16, compile=c) for c in compiles for bf16 in precisions]
    if len(candidates) == 1 or total_steps < TUNE_MIN_STEPS:  # untimed: bf16 where native, compile only if asked
        return dataclasses.replace(base, bf16=precisions[-1], compile=config.compile is True)
    eager = [speed for speed in candidates if not speed.compile]
    steps_per_s, setup_seconds = time_training_steps(model, batch_shape, eager, device) if eager else ({}, {})
    compiled = [speed for speed in candidates if speed.compile]
    if compiled and eager:
        guess = {speed: max(steps_per_s.values()) * COMPILE_GAIN for speed in compiled}
        trial = dict.fromkeys(compiled, COMPILE_SECONDS * len(compiled))  # every compiled mode tried is compiled
        if not fastest({**steps_per_s, **guess}, trial, total_steps).compile:
            compiled = []
    if compiled:
        measured = time_training_steps(model, batch_shape, compiled, device)
        steps_per_s, setup_seconds = {**steps_per_s, **measured[0]}, {**setup_seconds, **measured[1]}
    return fastest(steps_per_s, setup_seconds, total_steps)


def time_training_steps(
    model: nn.Module, batch_shape: tuple, speeds: list[Speed], device: torch.device
) -> tuple[dict[Speed, float], dict[Speed, float]]:
    """Training steps (forward and backward) per second of a copy of `model` in each mode, and each mode's setup:
    its first step's seconds beyond a timed one (compiling, for a compiled mode). The modes take turns, one step
    each, TUNE_ROUNDS times: all see the same drift of a shared machine. The run's random stream is untouched."""
    targets = torch.zeros(batch_shape[0], dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        images = torch.randn(batch_shape, device=device)
        steps = {speed: training_step(model, images, targets, speed) for speed in speeds}
        first = {speed: time_calls(step, 0.0, device, warmup=0)[1] for speed, step in steps.items()}
        seconds = {speed: [] for speed in speeds}
        for _ in range(TUNE_ROUNDS):
            for speed, step in steps.items():
                seconds[speed].append(time_calls(step, 0.0, device, warmup=0)[1])
    per_step = {speed: statistics.median(times) for speed, times in seconds.items()}
    return (
        {speed: 1 / per_step[speed] for speed in speeds},
        {speed: max(0.0, first[speed] - per_step[speed]) for speed in speeds},
    )


def training_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, speed: Speed) -> Callable[[], None]:
    """Forward and backward of a copy of `model` as `speed` runs them (no optimizer step: the copy is thrown away)."""
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    probe = copy.deepcopy(model).to(memory_format=memory_format).train()
    forward = torch.compile(probe) if speed.compile else probe
    images = images.contiguous(memory_format=memory_format)

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=speed.bf16):
            outputs = forward(images)
            loss = F.cross_entropy(outputs[0] if isinstance(outputs, tuple) else outputs, targets)
        loss.backward()
        probe.zero_grad(set_to_none=True)

    return step
