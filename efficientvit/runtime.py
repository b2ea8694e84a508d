"""Where and with what the code runs: the device a user asked for, optional packages, running out of memory.

One place for each, so every command says the same sentence for the same problem.
"""

from __future__ import annotations

import importlib
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
