"""Throughput as the paper measures it: random weights, eval mode, warm-up, then timed batches."""

from __future__ import annotations

import time

import torch
from torch import nn


@torch.inference_mode()
def measure_throughput(model: nn.Module, batch_size: int = 16, img_size: tuple[int, int] | None = None,
                       seconds: float = 1.0, warmup: int = 3) -> float:
    """Images per second of `model` (eval mode) on random input: `warmup` batches, then batches for `seconds`."""
    model = model.eval()
    height, width = img_size or model.img_size
    device = next(model.parameters()).device
    x = torch.randn(batch_size, 3, height, width, device=device)
    for _ in range(warmup):
        model(x)
    batches, start = 0, time.perf_counter()
    while True:
        model(x)
        batches += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return batches * batch_size / elapsed


def interleaved_throughput(models: list[nn.Module], rounds: int = 3, **kwargs) -> list[list[float]]:
    """Throughput of several models measured in turns (A, B, A, B, ...), `rounds` times each.

    Timing on shared machines drifts by tens of percent between passes; interleaving exposes every model to the
    same drift, so ratios of per-round figures (or of medians) are far steadier than separate runs.
    """
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, runs in zip(models, samples):
            runs.append(measure_throughput(model, **kwargs))
    return samples
