"""Where and how fast the code runs: the device a user asked for, optional packages, running out of memory, the
one timing loop (`time_calls`, and `rate` on top of it) with the machine's own peak rates, and how a training step
runs (`Speed`: bf16, channels-last, fused optimizer, compile), chosen by timing where that pays.

One place for each, so every command says the same sentence for the same problem and every figure in img/s or
GMAC/s comes from the same loop.
"""

from __future__ import annotations

import copy
import importlib
import re
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
TUNE_ROUNDS = 3  # timed training steps per precision when the trainer measures whether bf16 pays off
TUNE_MIN_STEPS = 50  # shorter runs (tests, smoke runs) skip that measurement: it would cost more than it could save


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


def require(module: str, what: str) -> ModuleType:
    """Import an optional package, or say which feature needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module}, which is not installed: {EXTRAS}") from None


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


def peak_matmul_macs(device: str | torch.device = "cpu", seconds: float = 1.0, dtype=torch.float32) -> float:
    """Multiply-adds per second of a large square matmul (2048 on CPU, 8192 on GPU): the machine's practical peak,
    in the unit fvcore counts model FLOPs in (one FLOP is half a multiply-add elsewhere: `2 * peak`)."""
    n = 8192 if torch.device(device).type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return rate(lambda: a @ b, n**3, seconds, device)


def copy_bandwidth(device: str | torch.device = "cpu", seconds: float = 0.5) -> float:
    """Bytes per second read plus written by a copy of 128 MiB, far beyond the caches."""
    src = torch.randn(32 * 2**20, device=device)
    dst = torch.empty_like(src)
    return rate(lambda: dst.copy_(src), 2 * src.numel() * src.element_size(), seconds, device)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 dot products in hardware. Elsewhere oneDNN emulates bf16, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return (
        torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None
    )


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


def choose_speed(
    config: TrainConfig, model: nn.Module, device: torch.device, batch_shape: tuple, total_steps: int
) -> Speed:
    """The training config's `fast` and `precision` made concrete for this model on this device."""
    # conv models only: channels-last turns 1x1 convs into GEMMs; ViTs hold (tokens, channels) and gain nothing
    channels_last = config.fast and model_family(model.spec.name) == "efficientvit"
    bf16 = config.precision == "bf16"
    if config.precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        if bf16 and device.type == "cpu" and total_steps >= TUNE_MIN_STEPS:
            bf16 = bf16_pays_off(model, batch_shape, channels_last)
    return Speed(bf16=bf16, channels_last=channels_last, fused_optimizer=config.fast, compile=config.compile)


def bf16_pays_off(model: nn.Module, batch_shape: tuple, channels_last: bool) -> bool:
    """Time training steps (forward and backward) of a copy of `model` in fp32 and under bf16 autocast, in turns,
    on the CPU; True if bf16 is faster. On small matrices the casts can cost more than bf16's faster matmuls."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    probe = copy.deepcopy(model).to(memory_format=memory_format).train()
    targets = torch.zeros(batch_shape[0], dtype=torch.long)
    with torch.random.fork_rng(devices=[]):  # the run's random stream is untouched (dropout, drop-path)
        images = torch.randn(batch_shape).contiguous(memory_format=memory_format)

        def step(bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outputs = probe(images)
                loss = F.cross_entropy(outputs[0] if isinstance(outputs, tuple) else outputs, targets)
            loss.backward()
            probe.zero_grad(set_to_none=True)

        for bf16 in (False, True):  # warm-up
            step(bf16)
        # one step per measurement, the two precisions in turns: both see the same drift of the machine
        steps_per_s = {False: [], True: []}
        for _ in range(TUNE_ROUNDS):
            for bf16 in (False, True):
                steps_per_s[bf16].append(rate(lambda bf16=bf16: step(bf16), 1, 0.0, warmup=0))
    return statistics.median(steps_per_s[True]) > statistics.median(steps_per_s[False])
