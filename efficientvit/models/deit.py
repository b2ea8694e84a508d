"""DeiT (Touvron et al., 2021) with an editable layout of attention (A) and FFN (F) layers.

The standard model is the layout "AF" * 12; the paper's Fig. 3 subnets change the share of A layers and the
width. Weights in timm's layout (`blocks.i.norm1/attn/norm2/mlp`) load through `efficientvit.load_checkpoint`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import UserError
from .attention import TokenAttention, join_qkv, match_qkv_layout
from .efficientvit import as_pair
from .layers import AttentionLayer, FFNLayer, init_transformer_weights, resize_grid, resize_to_model
from .layout import layer_dims_for, layer_to_timm_block, parse_layout, timm_block_to_layer
from .registry import register_model

NORM_EPS = 1e-6  # DeiT's (and timm's ViT) LayerNorm epsilon; torch's default 1e-5 shifts the logits measurably


class DeiT(nn.Module):
    """Vision transformer with a class token; `layout` is the sequence of A/F layers (each pre-norm, residual)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        num_heads: int = 3,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        layout: str = "AF" * 12,
        attention: str = "full",
        fused_qkv: bool = True,
        drop_path_rate: float = 0.0,
        layer_dims: list | None = None,
        global_pool: str | None = None,
    ):
        super().__init__()
        img_size = as_pair(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise UserError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise UserError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.layout = parse_layout(layout)
        # The class token reads the image only through attention: a layout without A layers (the 0% MHSA point of
        # Fig. 3, which the paper trains to 46.8% on ImageNet) must pool the patch tokens instead.
        self.global_pool = global_pool or ("token" if "A" in self.layout else "avg")
        if self.global_pool not in ("token", "avg"):
            raise UserError(
                f"global_pool must be 'token' (the class token) or 'avg' (mean of patch tokens), got {global_pool!r}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_classes = num_classes
        self.num_features = embed_dim

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        drop_paths = torch.linspace(0, drop_path_rate, len(self.layout)).tolist()
        dims = layer_dims_for(self.layout, layer_dims)
        self.layers = nn.Sequential(
            *(
                AttentionLayer(
                    embed_dim,
                    TokenAttention(
                        embed_dim, num_heads, head_dim, attention, fused_qkv, **dict(zip(("qk_dim", "v_dim"), d or ()))
                    ),
                    dp,
                    norm_eps=NORM_EPS,
                )
                if kind == "A"
                else FFNLayer(embed_dim, mlp_ratio, dp, hidden_dim=d, norm_eps=NORM_EPS)
                for kind, dp, d in zip(self.layout, drop_paths, dims)
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.stage_info = [dict(stage=1, resolution=self.grid, width=embed_dim, layout=self.layout, heads=num_heads)]
        self.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.layers(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- timm's layout: blocks.i = (norm1, attn) + (norm2, mlp) = our layers 2i and 2i+1 (timm_key) -------------
    def to_timm_layout(self) -> dict[str, torch.Tensor]:
        if self.layout != "AF" * (len(self.layout) // 2):
            raise UserError(f"only the standard layout AF...AF has a timm equivalent, not {self.layout!r}")
        if self.layers[0].attn.kind != "full":
            raise UserError("timm's layout exists for attention='full' only")

        def rename(key: str) -> str:
            m = re.match(r"^layers\.(\d+)\.(norm|attn|mlp)\.(.*)$", key)
            if not m:
                return key
            block, part = layer_to_timm_block(int(m[1]), m[2])
            return f"blocks.{block}.{part}.{m[3]}"

        return {rename(k): v for k, v in join_qkv(self.state_dict()).items()}


def timm_key(key: str) -> str:
    """timm's DeiT key in ours: blocks.i.(norm1|attn) -> layers.2i, blocks.i.(norm2|mlp) -> layers.2i+1."""
    m = re.match(r"^blocks\.(\d+)\.(norm1|attn|norm2|mlp)\.(.*)$", key)
    if not m:
        return key
    layer, part = timm_block_to_layer(int(m[1]), m[2])
    return f"layers.{layer}.{part}.{m[3]}"


def resize_pos_embed(pos_embed: torch.Tensor, deit: DeiT, shape: torch.Size) -> torch.Tensor:
    """Position embeddings of another patch grid: the class token's kept, the patches' resized to `deit.grid`."""
    if pos_embed.shape[2] != shape[2]:
        return pos_embed
    patches = resize_grid(pos_embed[0, 1:].t(), deit.grid).t()
    return torch.cat([pos_embed[0, :1], patches])[None]


def checkpoint_filter(state: dict[str, torch.Tensor], fmt: str, model: DeiT) -> dict[str, torch.Tensor]:
    """A state dict of timm's DeiT, or of ours with another q/k/v layout or image size, in `model`'s layout: timm's
    keys renamed (`timm_key`), q/k/v fused or separate as the model has them, position embeddings resized."""
    if fmt == "timm":
        state = {timm_key(k): v for k, v in state.items()}
    return resize_to_model(match_qkv_layout(state, model), model, "pos_embed", resize_pos_embed)


CONFIGS = {
    "deit_tiny": dict(embed_dim=192, num_heads=3),
    "deit_small": dict(embed_dim=384, num_heads=6),
    "deit_base": dict(embed_dim=768, num_heads=12),
}


def _register(name: str) -> None:
    def build(**kwargs) -> DeiT:
        return DeiT(**{**CONFIGS[name], **kwargs})

    build.__name__ = name
    register_model(name, family="deit", checkpoint_filter=checkpoint_filter)(build)


for _name in CONFIGS:
    _register(_name)
