"""EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention (Liu et al., CVPR 2023).

Read bottom-up: the sandwich block, the subsample block, the stage, the model, then the Table 1 configurations
and their registered constructors. Parameter counts and outputs equal the official release's (M0..M5); the
ablations of Table 6 and Fig. 7 are constructor arguments.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .attention import ATTENTION_KINDS, LocalWindowAttention
from .layers import (
    FFN,
    ConvNorm,
    NormLinear,
    PatchMerging,
    Residual,
    depthwise_residual,
    ffn_residual,
    make_activation,
    resize_grid,
    resize_to_model,
)
from .layout import per_stage
from .registry import register_model

PATCH_SIZES = (2, 4, 8, 16)  # the stem's stride; 16 is the paper's, 4 and 8 suit 28-64 px images
BLOCK_LAYOUTS = ("sandwich", "alternate")


def halve(size: int) -> int:
    """Output size of a 3x3 stride-2 conv with padding 1."""
    return (size + 1) // 2


@dataclass(frozen=True)
class BlockSettings:
    """What every block of one model shares: the knobs of Table 6 and Fig. 7 (see `EfficientViT`)."""

    key_dim: int
    window_size: int
    q_kernels: tuple[int, ...]
    mlp_ratio: float
    attention: str
    sandwich: int
    block_layout: str
    qkv_allocation: bool
    v_ratio: float
    token_interaction: bool
    q_dwconv: bool
    norm: str
    act: str

    def window_attention(
        self, dim: int, heads: int, resolution: tuple[int, int], dims: dict | None = None
    ) -> LocalWindowAttention:
        """The attention layer of a block: Q/K of key_dim and V of v_ratio x C/H per head, or all of width C/H
        without the QKV allocation of Sec. 3.3; `dims` the widths kept by pruning (see `block_dims`)."""
        head_dim = dim // heads
        dims = dims or {}
        return LocalWindowAttention(
            dim,
            num_heads=heads,
            resolution=resolution,
            window_size=self.window_size,
            key_dim=self.key_dim if self.qkv_allocation else head_dim,
            value_dim=int(self.v_ratio * dim / heads) if self.qkv_allocation else head_dim,
            q_kernels=self.q_kernels,
            kind=self.attention,
            q_dwconv=self.q_dwconv,
            act=self.act,
            norm=self.norm,
            qk_dim=dims.get("qk_dim"),
            value_channels=dims.get("v_channels"),
        )

    def ffns(self) -> int:
        """FFN layers per block: 2N in the sandwich, one in the alternation."""
        return 2 * self.sandwich if self.block_layout == "sandwich" else 1


BLOCK_DIMS = ("qk_dim", "v_channels", "ffn")


def check_block_dims(block_dims: list | None, depth: tuple[int, ...], ffns: int) -> list:
    """Per block of the whole model (stage by stage), the widths structured pruning kept, or None for the design's:
    {"qk_dim": Q/K channels per head, "v_channels": [V channels kept, per head], "ffn": [hidden width per FFN]}."""
    if block_dims is None:
        return [None] * sum(depth)
    if len(block_dims) != sum(depth):
        raise UserError(f"block_dims has {len(block_dims)} entries for {sum(depth)} blocks (depth {tuple(depth)})")
    for dims in block_dims:
        unknown = set(dims or {}) - set(BLOCK_DIMS)
        if unknown:
            raise UserError(f"block_dims entries take {', '.join(BLOCK_DIMS)}; got {', '.join(sorted(unknown))}")
        if dims and "ffn" in dims and len(dims["ffn"]) != ffns:
            raise UserError(f"block_dims: a block has {ffns} FFN layers, got hidden widths {dims['ffn']}")
    return list(block_dims)


class EfficientViTBlock(nn.Sequential):
    """The sandwich layout (Sec. 3.1): N x (DW conv + FFN), one attention layer, N x (DW conv + FFN).

    Children are named dw0, ffn0, mixer, dw1, ffn1 for N = 1, as in the official code and timm. The `alternate`
    layout is the Swin-like ablation of Table 6: attention then one (DW conv +) FFN.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        resolution: tuple[int, int],
        drop_path: float,
        settings: BlockSettings,
        dims: dict | None = None,
    ):
        s = settings
        # The attention is built first: the order in which layers draw their initial weights, so that a seed
        # gives the weights it always gave.
        mixer = Residual(s.window_attention(dim, heads, resolution, dims), drop_path)
        hidden = (dims or {}).get("ffn")

        def dw_ffn(i: int):
            if s.token_interaction:
                yield f"dw{i}", depthwise_residual(dim, 0.0, s.norm, drop_path)
            if hidden is None:
                yield f"ffn{i}", ffn_residual(dim, s.mlp_ratio, s.act, s.norm, drop_path)
            else:
                yield f"ffn{i}", Residual(FFN(dim, hidden[i], act=s.act, norm=s.norm), drop_path)

        if s.block_layout == "sandwich":
            before = [layer for i in range(s.sandwich) for layer in dw_ffn(i)]
            after = [layer for i in range(s.sandwich, 2 * s.sandwich) for layer in dw_ffn(i)]
        else:
            before, after = [], list(dw_ffn(0))
        super().__init__(OrderedDict([*before, ("mixer", mixer), *after]))


class Subsample(nn.Module):
    """The subsample block between stages: (DW + FFN) -> PatchMerging (stride 2) -> (DW + FFN)."""

    def __init__(self, in_dim: int, out_dim: int, token_interaction: bool, mlp_ratio: float, act: str, norm: str):
        super().__init__()

        def dw_ffn(dim: int) -> nn.Sequential:
            # The official code leaves these depthwise norms at weight 1 (unlike the blocks' zero init).
            dw = [depthwise_residual(dim, 1.0, norm, 0.0)] if token_interaction else []
            return nn.Sequential(*dw, ffn_residual(dim, mlp_ratio, act, norm, 0.0))

        self.res1 = dw_ffn(in_dim)
        self.patchmerge = PatchMerging(in_dim, out_dim, act=act, norm=norm)
        self.res2 = dw_ffn(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.patchmerge(self.res1(x)))


class EfficientViTStage(nn.Module):
    """One stage of Table 1: the subsample block from the previous stage's width `in_dim` (none in the first
    stage), then one block of width `dim` per drop-path rate. `resolution` is the map it receives; `info` says
    what it computes on. `block_dims`: each block's pruned widths (None: the design's)."""

    def __init__(
        self,
        in_dim: int | None,
        dim: int,
        heads: int,
        resolution: tuple[int, int],
        drop_paths: list[float],
        settings: BlockSettings,
        block_dims: list[dict | None] | None = None,
    ):
        super().__init__()
        s = settings
        self.downsample = nn.Identity()
        if in_dim is not None:
            self.downsample = Subsample(in_dim, dim, s.token_interaction, s.mlp_ratio, s.act, s.norm)
            resolution = (halve(resolution[0]), halve(resolution[1]))
        block_dims = block_dims or [None] * len(drop_paths)
        self.blocks = nn.Sequential(
            *(EfficientViTBlock(dim, heads, resolution, dp, s, dims) for dp, dims in zip(drop_paths, block_dims))
        )
        window = (min(s.window_size, resolution[0]), min(s.window_size, resolution[1]))
        self.info = dict(resolution=resolution, width=dim, depth=len(drop_paths), heads=heads, window=window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def stem_strides(patch_size: int) -> list[int]:
    """Strides of the stem's four convs: 2, 2, 2, 2 at patch_size 16; 2, 2, 2, 1 at 8; 2, 2, 1, 1 at 4."""
    # The first convs downsample, the last keep stride 1: the widest convs then run at the lowest resolution (cheapest).
    return [2 if 2 ** (i + 1) <= patch_size else 1 for i in range(4)]


def patch_embed(in_chans: int, dim: int, act: str, norm: str, patch_size: int = 16) -> nn.Sequential:
    """Four 3x3 Conv-BN layers widening to dim/8, dim/4, dim/2, dim, all of stride 2 at the paper's patch_size 16.
    The layers, their keys and shapes are the same at every patch_size; only the strides differ."""
    widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
    strides = stem_strides(patch_size)
    layers = []
    for i in range(4):
        layers.append((f"conv{i + 1}", ConvNorm(widths[i], widths[i + 1], 3, strides[i], 1, norm=norm)))
        if i < 3:
            layers.append((f"act{i + 1}", make_activation(act, inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def stem_resolution(img_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The map the stem hands to the first stage."""
    resolution = img_size
    for stride in stem_strides(patch_size):
        if stride == 2:
            resolution = (halve(resolution[0]), halve(resolution[1]))
    return resolution


def as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_configuration(
    embed_dim: tuple[int, ...],
    depth: tuple[int, ...],
    num_heads: tuple[int, ...],
    attention: str,
    block_layout: str,
    sandwich: int,
    patch_size: int,
    img_size: tuple[int, int],
) -> None:
    """Every constructor argument that can be wrong on its own, in one sentence naming it."""
    if not len(embed_dim) == len(depth) == len(num_heads):
        raise UserError("embed_dim, depth and num_heads need one entry per stage")
    if attention not in ATTENTION_KINDS:
        raise UserError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    if block_layout not in BLOCK_LAYOUTS:
        raise UserError(f"block_layout must be one of {BLOCK_LAYOUTS}, got {block_layout!r}")
    if sandwich < 1:
        raise UserError(f"sandwich (N DW+FFN pairs per side) must be at least 1, got {sandwich}")
    if patch_size not in PATCH_SIZES:
        raise UserError(f"patch_size (the stem's stride) must be one of {PATCH_SIZES}, got {patch_size!r}")
    subsample = 2 ** (len(embed_dim) - 1)  # 2 at each subsample block
    if min(img_size) < patch_size * subsample:
        fits = [p for p in PATCH_SIZES if p * subsample <= min(img_size)]
        smallest = PATCH_SIZES[0]
        hint = (
            f"for small images set patch_size={fits[-1]} (img_size must be at least {subsample} x patch_size)"
            if fits
            else f"even the smallest, patch_size={smallest}, needs {smallest * subsample} px"
        )
        raise UserError(
            f"img_size {img_size} is smaller than the model's total stride {patch_size * subsample} "
            f"(patch_size {patch_size} x {subsample}): {hint}"
        )


PER_STAGE_SETTINGS = ("key_dim", "v_ratio", "mlp_ratio")


def stage_settings(stages: int, **fields) -> list[BlockSettings]:
    """Each stage's BlockSettings from the model's arguments, where key_dim, v_ratio and mlp_ratio are one number
    for every stage or a list of one per stage."""
    lists = {}
    for name in PER_STAGE_SETTINGS:
        value = fields[name]
        if isinstance(value, (list, tuple)) and len(value) != stages:
            raise UserError(f"{name} needs one value per stage ({stages}) or one number, got {list(value)}")
        lists[name] = list(value) if isinstance(value, (list, tuple)) else [value] * stages
    return [BlockSettings(**{**fields, **{name: lists[name][i] for name in lists}}) for i in range(stages)]


class EfficientViT(nn.Module):
    """EfficientViT. Defaults are M0; the ablation knobs (Table 6, Fig. 7):

    sandwich: N, the number of DW+FFN pairs on each side of the attention (1; Table 6 tries 2 and 3)
    block_layout: "sandwich", or "alternate" for the Swin-like attention/FFN alternation
    attention: "cascade" (CGA), "split" (no cascade) or "full" (standard MHSA over all channels)
    qkv_allocation: False gives Q, K and V the head width C/H instead of qk_dim and v_ratio * C/H
    key_dim: the Q/K width per head (16); v_ratio: V width per head as a multiple of C/H (1.0)
    mlp_ratio: FFN expansion (2); token_interaction: the DW convs before each FFN; q_dwconv: the DW conv on Q
    norm: "bn" or "ln"; act: "relu" or "hardswish"
    key_dim, v_ratio and mlp_ratio may also be lists, one value per stage (a designed variant's settings).
    block_dims: the widths structured pruning kept in each block (`check_block_dims`; analysis/taylor_pruning.py).

    patch_size: the stem's stride (16 as in the paper; 2, 4 or 8 for small images such as 28 px Fashion-MNIST).
    The total stride is patch_size x 4 (the two subsample blocks), so img_size must be at least that.
    """

    def __init__(
        self,
        embed_dim: tuple[int, ...] = (64, 128, 192),
        depth: tuple[int, ...] = (1, 2, 3),
        num_heads: tuple[int, ...] = (4, 4, 4),
        key_dim: int | list[int] = 16,
        window_size: int = 7,
        q_kernels: tuple[int, ...] = (5, 5, 5, 5),
        mlp_ratio: float | list[float] = 2.0,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        distillation: bool = False,
        drop_path_rate: float = 0.0,
        attention: str = "cascade",
        sandwich: int = 1,
        block_layout: str = "sandwich",
        qkv_allocation: bool = True,
        v_ratio: float | list[float] = 1.0,
        token_interaction: bool = True,
        q_dwconv: bool = True,
        norm: str = "bn",
        act: str = "relu",
        patch_size: int = 16,
        block_dims: list | None = None,
    ):
        super().__init__()
        self.img_size = as_pair(img_size)
        check_configuration(embed_dim, depth, num_heads, attention, block_layout, sandwich, patch_size, self.img_size)
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.num_features = embed_dim[-1]
        self.distillation = distillation
        settings = stage_settings(
            len(depth),
            key_dim=key_dim,
            window_size=window_size,
            q_kernels=q_kernels,
            mlp_ratio=mlp_ratio,
            attention=attention,
            sandwich=sandwich,
            block_layout=block_layout,
            qkv_allocation=qkv_allocation,
            v_ratio=v_ratio,
            token_interaction=token_interaction,
            q_dwconv=q_dwconv,
            norm=norm,
            act=act,
        )

        self.patch_embed = patch_embed(in_chans, embed_dim[0], act, norm, patch_size)
        resolution = stem_resolution(self.img_size, patch_size)
        stages = []
        drop_paths = per_stage(torch.linspace(0, drop_path_rate, sum(depth)).tolist(), depth)
        dims = per_stage(check_block_dims(block_dims, depth, settings[0].ffns()), depth)
        for i in range(len(depth)):
            in_dim = embed_dim[i - 1] if i > 0 else None
            stage = EfficientViTStage(
                in_dim, embed_dim[i], num_heads[i], resolution, drop_paths[i], settings[i], dims[i]
            )
            stages.append(stage)
            resolution = stage.info["resolution"]
        self.stages = nn.Sequential(*stages)
        self.stage_info = [dict(stage=i + 1, **stage.info) for i, stage in enumerate(stages)]
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if distillation:
            self.head_dist = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.distillation:
            self.head_dist = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if pre_logits:
            return x
        if not self.distillation:
            return self.head(x)
        logits, logits_dist = self.head(x), self.head_dist(x)
        # DeiT-style: both heads while training (the loss uses both), their mean at inference.
        return (logits, logits_dist) if self.training else (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def official_key(key: str) -> str:
    """The official (Cream) release's key in ours: blocksK.* -> stages.(K-1).*, `c` -> conv, `l` -> linear, stem
    0/2/4/6 -> conv1..4."""
    key = re.sub(r"^patch_embed\.(\d)\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.", key)
    match = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", key)
    if match:
        stage, index, rest = int(match[1]) - 1, int(match[2]), match[3]
        if stage > 0 and index < 3:  # the subsample block opens every stage after the first
            key = f"stages.{stage}.downsample.{('res1', 'patchmerge', 'res2')[index]}.{rest}"
        else:
            key = f"stages.{stage}.blocks.{index - 3 if stage > 0 else index}.{rest}"
    return ".".join({"c": "conv", "l": "linear"}.get(part, part) for part in key.split("."))


def resize_bias_table(table: torch.Tensor, attention: nn.Module, shape: torch.Size) -> torch.Tensor:
    """A (heads, window offsets) table of another window size, resized over the offsets (never across heads)."""
    return resize_grid(table, attention.window) if table.shape[0] == shape[0] else table


def checkpoint_filter(state: dict[str, torch.Tensor], fmt: str, model: EfficientViT) -> dict[str, torch.Tensor]:
    """A state dict of another release, or trained at another input size, in `model`'s layout: the official
    release's keys renamed (`official_key`; timm's port already uses our names), its bias indices dropped (the
    model builds its own), and attention-bias tables of other windows resized to the model's (bicubic)."""
    if fmt == "official":
        state = {official_key(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("attention_bias_idxs")}
    return resize_to_model(state, model, "attention_biases", resize_bias_table)


# Table 1 of the paper (analysis/published/table1_variants.csv): widths, depths and heads per stage, and the kernel
# size of the depthwise conv on Q of each head. All use key_dim 16, window 7, FFN ratio 2.
CONFIGS = {
    "efficientvit_m0": dict(embed_dim=(64, 128, 192), depth=(1, 2, 3), num_heads=(4, 4, 4), q_kernels=(5, 5, 5, 5)),
    "efficientvit_m1": dict(embed_dim=(128, 144, 192), depth=(1, 2, 3), num_heads=(2, 3, 3), q_kernels=(7, 5, 3, 3)),
    "efficientvit_m2": dict(embed_dim=(128, 192, 224), depth=(1, 2, 3), num_heads=(4, 3, 2), q_kernels=(7, 5, 3, 3)),
    "efficientvit_m3": dict(embed_dim=(128, 240, 320), depth=(1, 2, 3), num_heads=(4, 3, 4), q_kernels=(5, 5, 5, 5)),
    "efficientvit_m4": dict(embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), q_kernels=(7, 5, 3, 3)),
    "efficientvit_m5": dict(embed_dim=(192, 288, 384), depth=(1, 3, 4), num_heads=(3, 3, 4), q_kernels=(7, 5, 3, 3)),
}


def _register(name: str) -> None:
    def build(**kwargs) -> EfficientViT:
        return EfficientViT(**{**CONFIGS[name], **kwargs})

    build.__name__ = name
    build.__doc__ = f"EfficientViT-{name[-2:].upper()} (Table 1): {CONFIGS[name]}"
    register_model(name, family="efficientvit", checkpoint_filter=checkpoint_filter)(build)


for _name in CONFIGS:
    _register(_name)
