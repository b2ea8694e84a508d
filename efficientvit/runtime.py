"""Where and with what the code runs: the device a user asked for, optional packages, running out of memory, and
the machine's own peak rates (one timing loop).

One place for each, so every command says the same sentence for the same problem.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType

import torch

from .errors import UserError

EXTRAS = "pip install 'efficientvit-lab[bench]'"  # onnx and onnxruntime


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


def rate(fn: Callable[[], object], work: float, seconds: float, device: str | torch.device = "cpu") -> float:
    """`work` units per second of `fn`, called repeatedly for `seconds` after one warm-up call."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    sync()
    return work * runs / (time.perf_counter() - start)


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
