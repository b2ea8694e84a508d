"""The one evaluator: top-1, top-5 and mean cross-entropy of a model over a loader, exact under torchrun (each
process evaluates a share, the counts are summed). Training evaluates every epoch with it, `efficientvit eval`
evaluates a checkpoint with it, and the analyses evaluate their models with it, so a top-1 means the same
everywhere."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .data.pipeline import check_bad_images


def hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many images have their class first, and among the first five, of their logits."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
    return top[:, 0].sum(), top.any(dim=1).sum()


@torch.no_grad()  # without it every batch's graph hangs on the loss sum until the end (22 GB at 10,000 images)
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, skip_bad: bool, distributed: bool) -> dict:
    """Top-1, top-5 (%) and mean cross-entropy over this process's share of the data, summed over processes."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, loss, images, skipped
    for images, targets, bad in loader:
        sums[4] += check_bad_images(bad, skip_bad)
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        logits = model(images).float()
        top1, top5 = hits(logits, targets)
        sums[0] += top1
        sums[1] += top5
        sums[2] += F.cross_entropy(logits, targets, reduction="sum")
        sums[3] += len(targets)
    if distributed:
        dist.all_reduce(sums)
    top1, top5, loss, count, skipped = sums.tolist()
    count = max(count, 1)
    return {"top1": 100 * top1 / count, "top5": 100 * top5 / count, "loss": loss / count, "skipped": int(skipped)}
