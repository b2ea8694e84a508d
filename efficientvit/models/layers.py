"""The small blocks every model in this package is built from.

Names follow the EfficientViT paper (Liu et al., CVPR 2023) and timm's port of it, so that state dicts in timm's
layout load by name; the official release's cryptic names (`c`, `l`, numbered stem) are converted at the edge, by
each family's `checkpoint_filter` (which resizes, with the helpers at the end of this file, the tables that depend
on the input resolution).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation, stochastic_depth

from ..errors import CheckpointError, UserError

ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "gelu": nn.GELU}
NORMS = ("bn", "ln")


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """`inplace=True` where the input is a fresh conv output nobody else reads: it saves a full-size allocation,
    which on CPU costs as much as the activation itself."""
    if name not in ACTIVATIONS:
        raise UserError(f"act must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name](inplace=True) if inplace and name != "gelu" else ACTIVATIONS[name]()


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of every pixel of a (B, C, H, W) map: the `BN -> LN` ablation of Table 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a (B, C, H, W) map stored channels-last (and not also plain contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution that, on a channels-last fp32 map in eager mode, runs as one GEMM over the pixels.

    A channels-last (B, C, H, W) map is a (B*H*W, C) matrix in memory, so the conv is `addmm` with no copy. At
    EfficientViT's widths (16 to 1024 channels, 16 to 3136 pixels per image) the GEMM is faster on CPU in eager
    mode than oneDNN's 1x1 conv, most of all for the narrow per-head Q/K/V projections (benchmarks/README.md times
    the modes); in bfloat16 oneDNN's conv is the faster. Under torch.compile (and torch.export, and in an ONNX
    export) it stays a conv: inductor then calls oneDNN's conv with the bias, the ReLU and the residual add fused
    into it, where an `addmm` becomes an MKL GEMM followed by a separate kernel for each of them (the deficit to
    timm's compiled graph the profile in benchmarks/README.md found). Other inputs take the ordinary conv;
    weights and state-dict keys are those of `nn.Conv2d`.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__(in_dim, out_dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eager_fp32 = x.dtype == torch.float32 and not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())
        if not (eager_fp32 and is_channels_last(x)):
            return super().forward(x)
        B, C, H, W = x.shape
        pixels, weight = x.permute(0, 2, 3, 1).reshape(-1, C), self.weight.flatten(1).t()
        y = pixels @ weight if self.bias is None else torch.addmm(self.bias, pixels, weight)
        return y.view(B, H, W, -1).permute(0, 3, 1, 2)


class ConvNorm(nn.Module):
    """Conv2d without bias followed by a norm (BatchNorm by default), the unit of every EfficientViT layer.

    `bn_weight_init=0` starts a residual branch as the identity, as the official code does. `efficientvit.fuse`
    folds the BatchNorm into the conv for inference (the norm becomes an Identity and the conv gets a bias).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
        norm: str = "bn",
    ):
        super().__init__()
        if (kernel_size, stride, padding, groups) == (1, 1, 0, 1):
            self.conv = PointwiseConv2d(in_dim, out_dim, bias=False)
        else:
            self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, groups=groups, bias=False)
        if norm == "bn":
            self.bn = nn.BatchNorm2d(out_dim)
        elif norm == "ln":
            self.bn = LayerNorm2d(out_dim)
        else:
            raise UserError(f"norm must be one of {NORMS}, got {norm!r}")
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class NormLinear(nn.Module):
    """BatchNorm1d then Linear: the classifier head (and the distillation head)."""

    def __init__(self, in_dim: int, out_dim: int, std: float = 0.02):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        nn.init.trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))


class Residual(nn.Module):
    """x + m(x), with stochastic depth (drop path) on the branch while training."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = m
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or torch.is_grad_enabled()):
            # Inference: the branch output is a fresh tensor, so adding into it saves a full-size allocation.
            return self.m(x).add_(x)
        return x + stochastic_depth(self.m(x), self.drop_path, "row", self.training)


class FFN(nn.Module):
    """Pointwise expand, activation, pointwise project; the projection's norm starts at zero (residual branch)."""

    profile_scope = "ffn"

    def __init__(self, dim: int, hidden_dim: int, act: str = "relu", norm: str = "bn"):
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden_dim, norm=norm)
        self.act = make_activation(act, inplace=True)
        self.pw2 = ConvNorm(hidden_dim, dim, bn_weight_init=0.0, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


def depthwise_residual(dim: int, bn_weight_init: float, norm: str, drop_path: float) -> Residual:
    """The 3x3 depthwise token interaction placed before every FFN (Sec. 3.1, "sandwich layout")."""
    return Residual(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init, norm=norm), drop_path)


def ffn_residual(dim: int, mlp_ratio: float, act: str, norm: str, drop_path: float) -> Residual:
    return Residual(FFN(dim, int(dim * mlp_ratio), act=act, norm=norm), drop_path)


def se_channels(dim: int, ratio: float = 0.25, divisor: int = 8) -> int:
    """Squeeze width as the official code (timm's SqueezeExcite) rounds it: nearest multiple of 8, at least 8."""
    return max(divisor, int(dim * ratio + divisor / 2) // divisor * divisor)


class PatchMerging(nn.Module):
    """EfficientViT's down-sampling: 1x1 conv to 4C, 3x3 depthwise stride 2, squeeze-excite 0.25, 1x1 conv."""

    profile_scope = "patch_merging"

    def __init__(self, dim: int, out_dim: int, act: str = "relu", norm: str = "bn"):
        super().__init__()
        hidden_dim = dim * 4
        self.conv1 = ConvNorm(dim, hidden_dim, norm=norm)
        self.act1 = make_activation(act, inplace=True)
        self.conv2 = ConvNorm(hidden_dim, hidden_dim, 3, 2, 1, groups=hidden_dim, norm=norm)
        self.act2 = make_activation(act, inplace=True)
        self.se = SqueezeExcitation(hidden_dim, se_channels(hidden_dim), activation=ACTIVATIONS[act])
        self.conv3 = ConvNorm(hidden_dim, out_dim, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.conv3(self.se(x))


class Tap(nn.Identity):
    """A pass-through point that analyses hook: they see the heads through taps, never by patching a model.

    Attention modules check `listening` and only then compute what the tap shows (per-head maps, per-head
    outputs); with no hook attached they keep the fused fast path.
    """

    @property
    def listening(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks)


class Mlp(nn.Module):
    """The transformer FFN on tokens: Linear, GELU, Linear (timm's `fc1`/`fc2`)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FFNLayer(nn.Module):
    """An `F` layer: x + FFN(LayerNorm(x)), with drop path."""

    profile_scope = "ffn"

    def __init__(
        self, dim: int, mlp_ratio: float, drop_path: float = 0.0, hidden_dim: int | None = None, norm_eps: float = 1e-5
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim or int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + stochastic_depth(self.mlp(self.norm(x)), self.drop_path, "row", self.training)


class AttentionLayer(nn.Module):
    """An `A` layer on a token sequence: x + Attention(LayerNorm(x)), with drop path."""

    profile_scope = "attention"

    def __init__(self, dim: int, attn: nn.Module, drop_path: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + stochastic_depth(self.attn(self.norm(x)), self.drop_path, "row", self.training)


def init_transformer_weights(module: nn.Module) -> None:
    """timm's ViT/Swin initialisation: truncated normal 0.02 for Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def resize_grid(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (channels, n) table laid out on a square grid of n = side * side entries."""
    side = math.isqrt(table.shape[1])
    if side * side != table.shape[1]:
        raise CheckpointError(f"cannot resize a table of {table.shape[1]} entries: it is not a square grid")
    grid = table.reshape(1, table.shape[0], side, side).float()
    resized = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return resized.reshape(table.shape[0], -1).to(table.dtype)


def resize_to_model(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    suffix: str,
    resize: Callable[[torch.Tensor, nn.Module, torch.Size], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`state` with each tensor named `...suffix` whose shape differs from the model's replaced by `resize(tensor,
    owner, model's shape)`, owner being the module that holds it: a table trained at another input resolution, made
    to fit this one. `resize` returns the tensor unchanged when it cannot fit it (the strict load then says why)."""
    own = model.state_dict()
    return {
        key: resize(value, model.get_submodule(key.rpartition(".")[0]), own[key].shape)
        if key.endswith(suffix) and key in own and value.shape != own[key].shape
        else value
        for key, value in state.items()
    }
