"""Attention kinds the paper compares, on (B, C, H, W) feature maps.

`full`    every head sees all channels (standard multi-head self-attention),
`split`   head i sees only the i-th channel split (Sec. 3.2, "feeding each head with a split"),
`cascade` head i sees split i plus the output of head i-1 (Cascaded Group Attention, Eq. 1-2).

All three are one module with one loop over heads, so an ablation is a constructor argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNorm, Tap, make_activation

ATTENTION_KINDS = ("cascade", "split", "full")


def relative_offset_index(height: int, width: int) -> torch.Tensor:
    """(N, N) index into a table of |dy| * width + |dx| offsets between the N = height * width window tokens.

    This is the order in which the official code discovers offsets (row-major from the first token), so its
    `attention_biases` tables load unchanged.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * width + (xs[:, None] - xs[None, :]).abs()


def fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Truncate or zero-pad dim 1 to `channels`: lets a cascade run when V is wider or narrower than a split."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] > channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


class CascadedGroupAttention(nn.Module):
    """Attention inside one window, computed head by head (EfficientViT, Sec. 3.2).

    Every head has its own Q/K/V projection (`qkvs`), a depthwise conv on Q (`dws`, the token interaction of
    Q) and a learned bias per relative offset (`attention_biases`). The heads' outputs are concatenated and
    projected back to `dim` after a ReLU.

    Taps: when a hook listens on `attn_tap` it receives the per-head attention maps (B, heads, N, N); a hook on
    `head_tap` receives (and may replace) the per-head outputs (B, heads, N, value_dim). With nobody listening
    the heads run `F.scaled_dot_product_attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        key_dim: int = 16,
        value_dim: int | None = None,
        window: tuple[int, int] = (7, 7),
        q_kernels: tuple[int, ...] = (5, 5, 5, 5),
        kind: str = "cascade",
        q_dwconv: bool = True,
        act: str = "relu",
        norm: str = "bn",
    ):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        if q_dwconv and len(q_kernels) < num_heads:
            raise ValueError(f"q_kernels needs one kernel size per head ({num_heads}), got {tuple(q_kernels)}")
        self.kind = kind
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or dim // num_heads
        self.split_dim = dim // num_heads
        self.scale = key_dim**-0.5
        in_dim = dim if kind == "full" else self.split_dim
        qkv_dim = 2 * key_dim + self.value_dim
        self.qkvs = nn.ModuleList(ConvNorm(in_dim, qkv_dim, norm=norm) for _ in range(num_heads))
        self.dws = nn.ModuleList(
            ConvNorm(key_dim, key_dim, k, 1, k // 2, groups=key_dim, norm=norm) for k in q_kernels[:num_heads]
        ) if q_dwconv else nn.ModuleList()
        self.proj = nn.Sequential(
            make_activation(act), ConvNorm(self.value_dim * num_heads, dim, bn_weight_init=0.0, norm=norm)
        )
        self.window = tuple(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window[0] * window[1]))
        self.register_buffer("attention_bias_idxs", relative_offset_index(*window), persistent=False)
        self.attn_tap = Tap()
        self.head_tap = Tap()

    def attention_bias(self) -> torch.Tensor:
        """The (heads, N, N) bias, gathered from the table at every call. The gather costs microseconds, and not
        caching it means it can never go stale (the official eval-mode cache does, after loading or `.to()`)."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        bias = self.attention_bias()
        listening = self.attn_tap.listening or self.head_tap.listening
        splits = x.chunk(self.num_heads, dim=1)
        outputs, maps = [], []
        for i, qkv in enumerate(self.qkvs):
            if self.kind == "full":
                head_in = x
            elif self.kind == "cascade" and i > 0:
                head_in = splits[i] + fit_channels(outputs[-1], self.split_dim)
            else:
                head_in = splits[i]
            q, k, v = qkv(head_in).split([self.key_dim, self.key_dim, self.value_dim], dim=1)
            if self.dws:
                q = self.dws[i](q)
            q, k, v = (t.flatten(2).transpose(1, 2) for t in (q, k, v))  # (B, N, channels)
            if listening:
                attn = ((q @ k.transpose(1, 2)) * self.scale + bias[i]).softmax(dim=-1)
                maps.append(attn)
                out = attn @ v
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[i], scale=self.scale)
            outputs.append(out.transpose(1, 2).reshape(B, self.value_dim, H, W))
        if listening:
            self.attn_tap(torch.stack(maps, dim=1))
            heads = torch.stack([o.flatten(2).transpose(1, 2) for o in outputs], dim=1)  # (B, heads, N, Dv)
            x = self.head_tap(heads).transpose(2, 3).reshape(B, -1, H, W)
        else:
            x = torch.cat(outputs, dim=1)
        return self.proj(x)


class LocalWindowAttention(nn.Module):
    """Cascaded group attention applied to non-overlapping windows; the map is zero-padded to whole windows.

    The window is clipped to the feature map the model was built for (stage 3 of a 224 px model is 4x4, so its
    window is 4x4, as in the official code). Feature maps of other sizes are padded to whole windows.
    """

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int], window_size: int = 7, **kwargs):
        super().__init__()
        self.window = (min(window_size, resolution[0]), min(window_size, resolution[1]))
        self.attn = CascadedGroupAttention(dim, num_heads, window=self.window, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        wh, ww = self.window
        if (H, W) == (wh, ww):
            return self.attn(x)
        pad_b, pad_r = -H % wh, -W % ww
        x = F.pad(x, (0, pad_r, 0, pad_b))
        nh, nw = (H + pad_b) // wh, (W + pad_r) // ww
        x = x.view(B, C, nh, wh, nw, ww).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, wh, ww)
        x = self.attn(x)
        x = x.view(B, nh, nw, C, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(B, C, nh * wh, nw * ww)
        return x[:, :, :H, :W]
