"""The training objective: cross-entropy, and DeiT's distillation from a teacher (Touvron et al. 2021), as the
official code's `DistillationLoss` (Cream/EfficientViT losses.py) combines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

DISTILLATION_KINDS = ("hard", "soft")


class DistillationLoss(nn.Module):
    """`base(outputs, targets)`, or with a teacher, (1 - alpha) x base on the class head + alpha x distillation on
    the distillation head: `hard` is cross-entropy with the teacher's top class, `soft` the KL divergence from the
    teacher's distribution at temperature `tau` (times tau^2, per logit, as DeiT)."""

    def __init__(
        self,
        base: nn.Module,
        teacher: nn.Module | None = None,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
    ):
        super().__init__()
        if kind not in DISTILLATION_KINDS:
            raise UserError(f"distillation must be one of {DISTILLATION_KINDS}, got {kind!r}")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, images: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.base(outputs, targets)
        logits, logits_dist = outputs
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if self.kind == "hard":
            distillation = F.cross_entropy(logits_dist, teacher_logits.argmax(dim=1))
        else:
            t = self.tau
            distillation = (
                F.kl_div(
                    F.log_softmax(logits_dist / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (t * t)
                / logits_dist.numel()
            )
        return (1 - self.alpha) * self.base(logits, targets) + self.alpha * distillation
