"""Swin Transformer (Liu et al., 2021) with an editable layout of attention (A) and FFN (F) layers per stage.

Attention runs in windows with a relative position bias; every other attention layer of a stage shifts its
windows by half a window. The standard Swin-T is "AF" * (2, 2, 6, 2); the paper's Fig. 3 subnets change the share
of A layers and the widths. timm's layout (`layers.s.blocks.b.norm1/attn/norm2/mlp`) loads through
`efficientvit.load_checkpoint`, which hands it to `checkpoint_filter`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import stochastic_depth

from ..errors import UserError
from .attention import TokenAttention, join_qkv, match_qkv_layout
from .efficientvit import as_pair
from .layers import FFNLayer, init_transformer_weights, resize_grid, resize_to_model
from .layout import layer_dims_for, layer_to_timm_block, parse_stage_layouts, per_stage, timm_block_to_layer
from .registry import register_model


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, windows, window * window, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, -1, window * window, C)


def window_reverse(x: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    B, C = x.shape[0], x.shape[-1]
    x = x.view(B, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def shift_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(windows, 1, N, N) logits mask: after the cyclic shift, tokens only attend within their original region."""
    H, W = resolution
    regions = torch.zeros(1, H, W, 1)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, hs, ws, :] = label
            label += 1
    regions = window_partition(regions, window).squeeze(-1)[0]  # (windows, N)
    different = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, -100.0).unsqueeze(1)


class WindowAttentionLayer(nn.Module):
    """An `A` layer of Swin on (B, H, W, C): x + WindowAttention(LayerNorm(x)), windows shifted by `shift`."""

    profile_scope = "attention"

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        head_dim: int | None,
        window: int,
        shift: int,
        kind: str,
        fused_qkv: bool,
        drop_path: float,
        dims: list | None = None,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TokenAttention(
            dim,
            num_heads,
            head_dim,
            kind,
            fused_qkv,
            window=(window, window),
            **dict(zip(("qk_dim", "v_dim"), dims or ())),
        )
        self.window, self.shift, self.drop_path = window, shift, drop_path
        self.register_buffer("attn_mask", shift_mask(resolution, window, shift) if shift else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = self.norm(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, self.window), mask=self.attn_mask), self.window, H, W)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        return x + stochastic_depth(y, self.drop_path, "row", self.training)


class SwinPatchMerging(nn.Module):
    """Swin's down-sampling: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear to the next width."""

    profile_scope = "patch_merging"

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


@dataclass(frozen=True)
class StageSettings:
    """What every stage of one Swin shares (see `Swin`)."""

    window_size: int
    head_dim: int | None
    mlp_ratio: float
    attention: str
    fused_qkv: bool
    stride: int  # the model's total stride, for the hint when a window does not tile a stage


class SwinStage(nn.Module):
    """One stage: patch merging from the previous stage's width `in_dim` (none in the first stage), then the A/F
    layers of `layout` at width `dim`, every other A layer with shifted windows. `resolution` is the map it
    receives; `info` says what it computes on."""

    def __init__(
        self,
        number: int,
        in_dim: int | None,
        dim: int,
        layout: str,
        heads: int,
        resolution: tuple[int, int],
        drop_paths: list[float],
        dims: list,
        settings: StageSettings,
    ):
        super().__init__()
        s = settings
        if dim % heads:
            raise UserError(f"embed_dim {dim} of stage {number} is not divisible by num_heads {heads}")
        self.downsample = nn.Identity()
        if in_dim is not None:
            self.downsample = SwinPatchMerging(in_dim, dim)
            resolution = (resolution[0] // 2, resolution[1] // 2)
        # As in Swin: a map no larger than the window is one window, and is not shifted.
        window = min(s.window_size, *resolution)
        if resolution[0] % window or resolution[1] % window:
            raise UserError(
                f"window_size {s.window_size} does not tile stage {number}'s {resolution[0]}x"
                f"{resolution[1]} map: use an img_size that gives multiples of the window "
                f"(e.g. {s.stride * s.window_size}) or a window_size dividing {resolution[0]}"
            )
        shift = window // 2 if min(resolution) > s.window_size else 0
        layers, n_attention = [], 0
        for kind, drop_path, layer_dims in zip(layout, drop_paths, dims):
            if kind == "A":
                shifted = shift if n_attention % 2 else 0
                layers.append(
                    WindowAttentionLayer(
                        dim,
                        resolution,
                        heads,
                        s.head_dim,
                        window,
                        shifted,
                        s.attention,
                        s.fused_qkv,
                        drop_path,
                        layer_dims,
                    )
                )
                n_attention += 1
            else:
                layers.append(FFNLayer(dim, s.mlp_ratio, drop_path, hidden_dim=layer_dims))
        self.layers = nn.Sequential(*layers)
        self.info = dict(resolution=resolution, width=dim, layout=layout, heads=heads, window=(window, window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsample(x))


def check_configuration(
    layouts: list[str],
    embed_dim: tuple[int, ...],
    num_heads: tuple[int, ...],
    patch_size: int,
    img_size: tuple[int, int],
) -> int:
    """One entry per stage, and an input every stage can halve; returns the model's total stride."""
    if not len(layouts) == len(embed_dim) == len(num_heads):
        raise UserError(
            f"layout ({len(layouts)} stages), embed_dim ({len(embed_dim)}) and num_heads "
            f"({len(num_heads)}) need one entry per stage"
        )
    stride = patch_size * 2 ** (len(layouts) - 1)
    if img_size[0] % stride or img_size[1] % stride:
        raise UserError(f"img_size {img_size} must be a multiple of patch_size x 2^(stages-1) = {stride}")
    return stride


class Swin(nn.Module):
    """Swin Transformer; `layout` holds one A/F string per stage."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: tuple[int, ...] = (96, 192, 384, 768),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        head_dim: int | None = None,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        layout: str | list[str] | tuple[str, ...] = ("AF" * 2, "AF" * 2, "AF" * 6, "AF" * 2),
        attention: str = "full",
        fused_qkv: bool = True,
        drop_path_rate: float = 0.0,
        layer_dims: list | None = None,
    ):
        super().__init__()
        self.layout = parse_stage_layouts(layout)
        self.img_size = as_pair(img_size)
        stride = check_configuration(self.layout, embed_dim, num_heads, patch_size, self.img_size)
        self.num_classes = num_classes
        self.num_features = embed_dim[-1]
        settings = StageSettings(window_size, head_dim, mlp_ratio, attention, fused_qkv, stride)

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim[0], patch_size, patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim[0])
        lengths = [len(stage) for stage in self.layout]
        drop_paths = per_stage(torch.linspace(0, drop_path_rate, sum(lengths)).tolist(), lengths)
        dims = per_stage(layer_dims_for("".join(self.layout), layer_dims), lengths)
        resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        stages = []
        for i, stage_layout in enumerate(self.layout):
            in_dim = embed_dim[i - 1] if i > 0 else None
            stage = SwinStage(
                i + 1, in_dim, embed_dim[i], stage_layout, num_heads[i], resolution, drop_paths[i], dims[i], settings
            )
            stages.append(stage)
            resolution = stage.info["resolution"]
        self.stages = nn.Sequential(*stages)
        self.stage_info = [dict(stage=i + 1, **stage.info) for i, stage in enumerate(stages)]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_transformer_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "relative_position_bias_table" in name}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        return self.norm(self.stages(x))  # (B, H, W, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- timm's layout: layers.s.blocks.b = (norm1, attn) + (norm2, mlp) = our stages.s.layers 2b and 2b+1 -----
    def to_timm_layout(self) -> dict[str, torch.Tensor]:
        if any(s != "AF" * (len(s) // 2) for s in self.layout):
            raise UserError(f"only standard layouts (AF...AF per stage) have a timm equivalent, not {self.layout}")
        if self.stages[0].layers[0].attn.kind != "full":
            raise UserError("timm's layout exists for attention='full' only")

        def rename(key: str) -> str:
            key = re.sub(r"^head\.", "head.fc.", key)
            key = re.sub(r"^stages\.(\d+)\.downsample\.", r"layers.\1.downsample.", key)
            m = re.match(r"^stages\.(\d+)\.layers\.(\d+)\.(norm|attn|mlp)\.(.*)$", key)
            if not m:
                return key
            block, part = layer_to_timm_block(int(m[2]), m[3])
            return f"layers.{m[1]}.blocks.{block}.{part}.{m[4]}"

        return {rename(k): v for k, v in join_qkv(self.state_dict()).items()}


def timm_key(key: str) -> str:
    """timm's Swin key in ours: layers.s.blocks.b -> stages.s.layers 2b (attention) and 2b+1 (FFN), head.fc -> head."""
    key = re.sub(r"^head\.fc\.", "head.", key)
    key = re.sub(r"^layers\.(\d+)\.downsample\.", r"stages.\1.downsample.", key)
    m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.(norm1|attn|norm2|mlp)\.(.*)$", key)
    if not m:
        return key
    layer, part = timm_block_to_layer(int(m[2]), m[3])
    return f"stages.{m[1]}.layers.{layer}.{part}.{m[4]}"


def resize_position_table(table: torch.Tensor, attention: nn.Module, shape: torch.Size) -> torch.Tensor:
    """A ((2h-1)(2w-1), heads) relative-position table of another window size, resized over the offsets."""
    if table.shape[1] != shape[1]:
        return table
    wh, ww = attention.window
    return resize_grid(table.t(), (2 * wh - 1, 2 * ww - 1)).t()


def checkpoint_filter(state: dict[str, torch.Tensor], fmt: str, model: Swin) -> dict[str, torch.Tensor]:
    """A state dict of timm's Swin, or of ours with another q/k/v layout or window, in `model`'s layout: timm's keys
    renamed (`timm_key`), the shift masks and position indices dropped (the model builds its own), q/k/v fused or
    separate as the model has them, relative-position tables of other windows resized (bicubic)."""
    if fmt == "timm":
        state = {timm_key(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    return resize_to_model(match_qkv_layout(state, model), model, "relative_position_bias_table", resize_position_table)


CONFIGS = {
    "swin_tiny": dict(
        embed_dim=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), layout=("AF" * 2, "AF" * 2, "AF" * 6, "AF" * 2)
    ),
    "swin_small": dict(
        embed_dim=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), layout=("AF" * 2, "AF" * 2, "AF" * 18, "AF" * 2)
    ),
}


def _register(name: str) -> None:
    def build(**kwargs) -> Swin:
        return Swin(**{**CONFIGS[name], **kwargs})

    build.__name__ = name
    register_model(name, family="swin", checkpoint_filter=checkpoint_filter)(build)


for _name in CONFIGS:
    _register(_name)
