"""Fold every BatchNorm into the conv or linear layer next to it, for inference."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .models.layers import ConvNorm, NormLinear


def bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as y = x * scale + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fuse(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of `model` in eval mode in which Conv->BN becomes one conv with bias and the head's BN->Linear one
    Linear. Norms that cannot be folded (LayerNorm) are left in place.

    With `channels_last` the conv weights are stored channels-last. A conv with channels-last weights returns a
    channels-last map whatever the input's layout, so from the stem on the whole network runs in the layout in
    which its 1x1 convs are plain GEMMs and its depthwise convs faster on CPU (the logits are the same; the
    timings are in benchmarks/README.md, modes `fused` and `channels_last`).
    """
    model = copy.deepcopy(model).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, ConvNorm) and isinstance(module.bn, nn.BatchNorm2d):
            scale, shift = bn_scale_shift(module.bn)
            module.conv.weight.mul_(scale[:, None, None, None])
            module.conv.bias = nn.Parameter(shift)
            module.bn = nn.Identity()
        elif isinstance(module, NormLinear) and isinstance(module.bn, nn.BatchNorm1d):
            scale, shift = bn_scale_shift(module.bn)
            linear = module.linear
            linear.bias.add_(linear.weight @ shift)
            linear.weight.mul_(scale[None, :])
            module.bn = nn.Identity()
    return model
