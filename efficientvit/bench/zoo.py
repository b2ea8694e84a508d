"""The models a bench can time, by name: every registered model (ours), torchvision's mobile CNNs (the paper's CPU
baselines) and timm's models as `timm:<name>`; each built with random weights, and its BatchNorms folded by its
own family's tool."""

from __future__ import annotations

import copy
import difflib

import timm
import torch
import torchvision
from timm.utils.model import reparameterize_model
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse

from ..errors import UserError
from ..fuse import fuse
from ..models import create_model, list_models

TORCHVISION_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf")
TIMM_PREFIX = "timm:"


def model_names() -> list[str]:
    names = list_models() + list(TORCHVISION_MODELS)
    names += [TIMM_PREFIX + n for n in timm.list_models("efficientvit_m*")]
    return names


def check_name(name: str) -> None:
    if name in list_models() or name in TORCHVISION_MODELS:
        return
    if name.startswith(TIMM_PREFIX):
        if name[len(TIMM_PREFIX) :] in timm.list_models():
            return
    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown model {name!r}.{hint} Choose from: {', '.join(model_names())}.")


def build_model(name: str, img_size: int = 224) -> nn.Module:
    """A bench model with random weights in eval mode."""
    check_name(name)
    if name in list_models():
        return create_model(name, img_size=img_size).eval()
    if name in TORCHVISION_MODELS:
        return torchvision.models.get_model(name, weights=None).eval()
    timm_name = name[len(TIMM_PREFIX) :]
    kwargs = {"img_size": img_size} if "efficientvit_m" in timm_name else {}
    return timm.create_model(timm_name, pretrained=False, **kwargs).eval()


def fold_norms(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` with its BatchNorms folded, by the model family's own tool."""
    if name in list_models():
        return fuse(model)
    if name.startswith(TIMM_PREFIX):
        return reparameterize_model(model).eval()
    return fx_fuse(copy.deepcopy(model).eval())


def perturb_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine weights, in place. Random-init models start every residual branch
    at zero (zero-init BN) and give near-zero logits; this makes every layer count when comparing modes."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model
