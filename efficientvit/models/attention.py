"""Attention kinds the paper compares:

`full`    every head sees all channels (standard multi-head self-attention),
`split`   head i sees only the i-th channel split (Sec. 3.2, "feeding each head with a split"),
`cascade` head i sees split i plus the output of head i-1 (Cascaded Group Attention, Eq. 1-2).

The rule is written once (`head_input`); two modules apply it: `CascadedGroupAttention` on EfficientViT's
(B, C, H, W) windows with conv projections, and `TokenAttention` on DeiT's and Swin's (..., N, C) tokens with
Linear projections. In both the kind is a constructor argument, so an ablation is one knob.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .layers import ConvNorm, Tap, is_channels_last, make_activation

ATTENTION_KINDS = ("cascade", "split", "full")


def relative_offset_index(height: int, width: int) -> torch.Tensor:
    """(N, N) index into a table of |dy| * width + |dx| offsets between the N = height * width window tokens.

    This is the order in which the official code discovers offsets (row-major from the first token), so its
    `attention_biases` tables load unchanged.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * width + (xs[:, None] - xs[None, :]).abs()


def fit_channels(x: torch.Tensor, channels: int, dim: int = 1) -> torch.Tensor:
    """Truncate or zero-pad `dim` to `channels`: lets a cascade run when V is wider or narrower than a split."""
    size = x.shape[dim]
    if size == channels:  # no narrow: an exported graph would keep it as a Slice that copies
        return x
    if size > channels:
        return x.narrow(dim, 0, channels)
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, channels - size]
    return F.pad(x, pad)


def head_input(
    kind: str, x: torch.Tensor, splits: tuple, i: int, previous: torch.Tensor | None, dim: int
) -> torch.Tensor:
    """What head i reads, the one rule of the three kinds: all channels (full), its own split (split), or its
    split plus the previous head's output (cascade, Eq. 1-2 of the paper). `dim` is the channel dimension."""
    if kind == "full":
        return x
    if kind == "cascade" and previous is not None:
        return splits[i] + fit_channels(previous, splits[i].shape[dim], dim=dim)
    return splits[i]


def cascade_gather(value_channels: list[list[int]] | None, split_dim: int) -> torch.Tensor | None:
    """(heads, split_dim) index that puts each head's kept V channels back where the cascade adds them: entry p of
    head i is the position of designed channel p among the channels head i keeps, or the kept width (an appended
    zero channel) where channel p was pruned. None when nothing was pruned (`fit_channels` then does it)."""
    if value_channels is None:
        return None
    gather = torch.full((len(value_channels), split_dim), len(value_channels[0]), dtype=torch.long)
    for head, kept in enumerate(value_channels):
        for position, channel in enumerate(kept):
            if channel < split_dim:  # designed channels past the split never fed the cascade (fit_channels)
                gather[head, channel] = position
    return gather


def attend(q, k, v, bias: torch.Tensor | None, scale: float, keep_map: bool):
    """softmax(q k^T * scale + bias) v, and the attention map when asked for it (a tap listens); otherwise the
    fused `F.scaled_dot_product_attention` runs and no map is materialised."""
    if not keep_map:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), None
    attn = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    return attn @ v, attn


class CascadedGroupAttention(nn.Module):
    """Attention inside one window, computed head by head (EfficientViT, Sec. 3.2).

    Every head has its own Q/K/V projection (`qkvs`), a depthwise conv on Q (`dws`, the token interaction of
    Q) and a learned bias per relative offset (`attention_biases`). The heads' outputs are concatenated and
    projected back to `dim` after a ReLU.

    Taps: when a hook listens on `attn_tap` it receives the per-head attention maps (B, heads, N, N); a hook on
    `head_tap` receives (and may replace) the per-head outputs (B, heads, N, value_dim).

    Each head runs softmax(Q K^T * scale + bias) V as `baddbmm`, softmax, `bmm`: for windows of 49 tokens and
    16-wide keys that is faster on CPU than `F.scaled_dot_product_attention` (whose CPU kernels are built for long
    sequences) and than timm's scale, matmul, add. Under torch.compile it is matmul, scale, add, which inductor
    fuses with the softmax (its `baddbmm` would first copy the bias out to every image). The maps exist anyway,
    so taps cost nothing.
    Heads follow the input's memory format, so a channels-last model never converts back and forth.

    After structured pruning (analysis/taylor_pruning.py) a head keeps `qk_dim` of its `key_dim` Q/K channels and
    the V channels `value_channels[head]` of its designed `value_dim` (equal counts in every head, each head its
    own channels). The softmax scale stays the designed key_dim's, and head i-1's kept V channels are added to
    head i's split at their designed positions, zeros where channels were pruned: the pruned model computes what
    the unpruned one does with those channels zeroed.
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
        qk_dim: int | None = None,
        value_channels: list[list[int]] | None = None,
    ):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise UserError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        if dim % num_heads:
            raise UserError(f"width {dim} is not divisible by num_heads {num_heads}")
        if q_dwconv and len(q_kernels) < num_heads:
            raise UserError(f"q_kernels needs one kernel size per head ({num_heads}), got {tuple(q_kernels)}")
        self.kind = kind
        self.num_heads = num_heads
        self.split_dim = dim // num_heads
        self.key_dim = qk_dim or key_dim
        self.scale = key_dim**-0.5
        self.value_dim = value_dim or self.split_dim
        if value_channels is not None:
            check_value_channels(value_channels, num_heads, self.value_dim)
            self.value_dim = len(value_channels[0])
        self.value_channels = value_channels
        in_dim = dim if kind == "full" else self.split_dim
        qkv_dim = 2 * self.key_dim + self.value_dim
        self.qkvs = nn.ModuleList(ConvNorm(in_dim, qkv_dim, norm=norm) for _ in range(num_heads))
        self.dws = (
            nn.ModuleList(
                ConvNorm(self.key_dim, self.key_dim, k, 1, k // 2, groups=self.key_dim, norm=norm)
                for k in q_kernels[:num_heads]
            )
            if q_dwconv
            else nn.ModuleList()
        )
        self.proj = nn.Sequential(
            make_activation(act, inplace=True), ConvNorm(self.value_dim * num_heads, dim, bn_weight_init=0.0, norm=norm)
        )
        self.window = tuple(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window[0] * window[1]))
        self.register_buffer("attention_bias_idxs", relative_offset_index(*window), persistent=False)
        self.register_buffer("cascade_gather", cascade_gather(value_channels, self.split_dim), persistent=False)
        self.attn_tap = Tap()
        self.head_tap = Tap()

    def cascaded(self, previous: torch.Tensor, head: int) -> torch.Tensor:
        """Head `head`'s output as the next head's split receives it: its kept V channels at their designed
        positions (zeros for the pruned ones), or as it is when nothing was pruned."""
        if self.cascade_gather is None:
            return previous
        return F.pad(previous, (0, 0, 0, 0, 0, 1)).index_select(1, self.cascade_gather[head])

    def attention_bias(self) -> torch.Tensor:
        """The (heads, N, N) bias, gathered from the table at every call. The gather costs microseconds, and not
        caching it means it can never go stale (the official eval-mode cache does, after loading or `.to()`)."""
        n = self.attention_bias_idxs.shape[0]
        return self.attention_biases.index_select(1, self.attention_bias_idxs.view(-1)).view(-1, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        bias = self.attention_bias()
        listening = self.attn_tap.listening or self.head_tap.listening
        # Token-major heads (B, N, Dv) are the channels-last layout of (B, Dv, H, W); channel-major ones are NCHW.
        token_major = is_channels_last(x)
        splits = x.chunk(self.num_heads, dim=1)
        outputs, maps = [], []
        for i, qkv in enumerate(self.qkvs):
            previous = self.cascaded(outputs[-1], i - 1) if outputs and self.kind == "cascade" else None
            head_in = head_input(self.kind, x, splits, i, previous, dim=1)
            q, k, v = qkv(head_in).split([self.key_dim, self.key_dim, self.value_dim], dim=1)
            if self.dws:
                q = self.dws[i](q)
            if token_major:  # permute, then reshape: views here, and an exported graph's permutes cancel
                q, k, v = (t.permute(0, 2, 3, 1).reshape(B, H * W, -1) for t in (q, k, v))  # (B, N, channels)
                k = k.transpose(1, 2)
            else:
                q, k, v = q.flatten(2).transpose(1, 2), k.flatten(2), v.flatten(2)  # q (B, N, Dk); k, v (B, C, N)
            if torch.compiler.is_compiling():
                attn = (torch.bmm(q, k) * self.scale + bias[i]).softmax(dim=-1)
            else:
                attn = torch.baddbmm(bias[i], q, k, alpha=self.scale).softmax(dim=-1)
            if token_major:
                out = torch.bmm(attn, v).reshape(B, H, W, -1).permute(0, 3, 1, 2)
            else:
                out = torch.bmm(v, attn.transpose(1, 2)).unflatten(2, (H, W))
            maps.append(attn)
            outputs.append(out)
        if listening:
            self.attn_tap(torch.stack(maps, dim=1))
            heads = torch.stack([o.flatten(2).transpose(1, 2) for o in outputs], dim=1)  # (B, heads, N, Dv)
            x = self.head_tap(heads).transpose(2, 3).reshape(B, -1, H, W)
        else:
            x = torch.cat(outputs, dim=1)
        return self.proj(x)


def check_value_channels(value_channels: list[list[int]], num_heads: int, value_dim: int) -> None:
    """Pruned V channels: one list per head, as many in each, distinct, among the designed value_dim."""
    counts = {len(set(kept)) for kept in value_channels} | {len(kept) for kept in value_channels}
    inside = all(0 <= c < value_dim for kept in value_channels for c in kept)
    if len(value_channels) != num_heads or len(counts) != 1 or not inside or 0 in counts:
        raise UserError(
            f"value_channels needs {num_heads} lists (one per head) of as many distinct channels among the "
            f"{value_dim} designed, got {value_channels}"
        )


class LocalWindowAttention(nn.Module):
    """Cascaded group attention applied to non-overlapping windows; the map is zero-padded to whole windows.

    The window is clipped to the feature map the model was built for (stage 3 of a 224 px model is 4x4, so its
    window is 4x4, as in the official code). Feature maps of other sizes are padded to whole windows.
    """

    profile_scope = "attention"

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
        nh, nw = (H + pad_b) // wh, (W + pad_r) // ww
        # Windows are gathered in (B, H, W, C) order in either memory format: channels stay innermost, so a
        # channels-last model never converts, and in an exported graph the permutes cancel against the NHWC
        # layout of onnxruntime's int8 convolutions (gathered channel-major, each window row moves 7 floats at a time).
        # The pad stays where it pads nothing: in an fp32 graph it keeps the permute a transpose of its own, which
        # onnxruntime otherwise merges with the window gather into one 6-D transpose, a slower one.
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad_r, 0, pad_b))
        x = x.view(B, nh, wh, nw, ww, C).transpose(2, 3).reshape(-1, wh, ww, C).permute(0, 3, 1, 2)
        x = self.attn(x.contiguous(memory_format=layout)).permute(0, 2, 3, 1)
        x = x.reshape(B, nh, nw, wh, ww, C).transpose(2, 3).reshape(B, nh * wh, nw * ww, C)
        return x[:, :H, :W].permute(0, 3, 1, 2).contiguous(memory_format=layout)


class TokenAttention(nn.Module):
    """Multi-head self-attention over tokens (..., N, C), as in DeiT and Swin, in any of the three kinds.

    `full` projects Q, K, V with one `qkv` Linear (timm's layout) or, with `fused_qkv=False`, with separate `q`,
    `k`, `v` Linears (the pruning analysis prunes them independently). `split` and `cascade` give every head
    its own Linear on its channel split (`qkvs`). With `window` set, a Swin relative position bias is added.
    Taps as in CascadedGroupAttention: maps (B', heads, N, N) and per-head outputs (B', heads, N, head_dim),
    with B' all leading dimensions (batch x windows) flattened. `explicit = True` computes softmax(QK^T)V as
    separate operators instead of the fused kernel, with no tap listening (the memory profile's view of it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        kind: str = "full",
        fused_qkv: bool = True,
        window: tuple[int, int] | None = None,
        qkv_bias: bool = True,
        qk_dim: int | None = None,
        v_dim: int | None = None,
    ):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise UserError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        if dim % num_heads:
            raise UserError(f"width {dim} is not divisible by num_heads {num_heads}")
        if kind != "full" and not fused_qkv:
            raise UserError("separate q/k/v projections (fused_qkv=False) exist for attention='full' only")
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        # Q/K and V widths per head may differ from head_dim after structured pruning; the softmax scale stays
        # that of the model as designed, so pruning a channel does not rescale the logits.
        self.qk_dim = qk_dim or self.head_dim
        self.v_dim = v_dim or self.head_dim
        self.split_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        qkv_dim = 2 * self.qk_dim + self.v_dim
        if kind != "full":
            self.qkvs = nn.ModuleList(nn.Linear(self.split_dim, qkv_dim, bias=qkv_bias) for _ in range(num_heads))
        elif fused_qkv:
            self.qkv = nn.Linear(dim, num_heads * qkv_dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, num_heads * self.qk_dim, bias=qkv_bias)
            self.k = nn.Linear(dim, num_heads * self.qk_dim, bias=qkv_bias)
            self.v = nn.Linear(dim, num_heads * self.v_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * self.v_dim, dim)
        self.window = window
        if window is not None:
            wh, ww = window
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        self.attn_tap = Tap()
        self.head_tap = Tap()
        self.explicit = False

    def position_bias(self) -> torch.Tensor | None:
        if self.window is None:
            return None
        n = self.relative_position_index.shape[0]
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def heads_qkv(self, x: torch.Tensor):
        """Q, K, V as (..., heads, N, width) for the full kind."""
        widths = [self.num_heads * self.qk_dim] * 2 + [self.num_heads * self.v_dim]
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(widths, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        return (t.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2) for t in (q, k, v))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (..., N, C); mask: added to the logits, broadcastable to (..., heads, N, N) (Swin's shift mask)."""
        bias = self.position_bias()
        if mask is not None:
            bias = mask if bias is None else bias + mask
        listening = self.attn_tap.listening or self.head_tap.listening
        explicit = listening or self.explicit
        if self.kind == "full":
            out, maps = attend(*self.heads_qkv(x), bias, self.scale, explicit)  # (..., heads, N, head_dim)
        else:
            outs, maps = [], []
            splits = x.chunk(self.num_heads, dim=-1)
            for i, qkv in enumerate(self.qkvs):
                head_in = head_input(self.kind, x, splits, i, outs[-1] if outs else None, dim=-1)
                q, k, v = qkv(head_in).split([self.qk_dim, self.qk_dim, self.v_dim], dim=-1)
                out_i, map_i = attend(q, k, v, None if bias is None else bias[..., i, :, :], self.scale, explicit)
                outs.append(out_i)
                maps.append(map_i)
            out = torch.stack(outs, dim=-3)
            maps = torch.stack(maps, dim=-3) if listening else None
        if listening:
            n = out.shape[-2]
            self.attn_tap(maps.reshape(-1, self.num_heads, n, n))
            out = self.head_tap(out.reshape(-1, *out.shape[-3:])).view(out.shape)
        return self.proj(out.transpose(-3, -2).flatten(-2))


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """Swin's (N, N) index into a ((2h-1)(2w-1), heads) table of signed offsets between window tokens."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + height - 1
    dx = xs[:, None] - xs[None, :] + width - 1
    return dy * (2 * width - 1) + dx


def split_qkv(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused `qkv` projections -> separate `q`, `k`, `v` (timm packs them in that order), each as wide as the model's
    own (`own`, its state dict): Q/K may be wider or narrower than V (qk_dim)."""
    out = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".qkv.")
        if _ and param in ("weight", "bias"):
            names = [f"{prefix}.{name}.{param}" for name in "qkv"]
            widths = [own[n].shape[0] for n in names] if all(n in own for n in names) else [value.shape[0] // 3] * 3
            if sum(widths) != value.shape[0]:  # not this model's projection: left for the shape check to name
                out[key] = value
                continue
            for name, part in zip(names, value.split(widths, dim=0)):
                out[name] = part.clone()
        else:
            out[key] = value
    return out


def join_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate `q`, `k`, `v` projections -> one fused `qkv`."""
    out = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".q.")
        if _ and param in ("weight", "bias"):
            parts = [state[f"{prefix}.{name}.{param}"] for name in "qkv"]
            out[f"{prefix}.qkv.{param}"] = torch.cat(parts, dim=0)
        elif not (key.rpartition(".k.")[1] or key.rpartition(".v.")[1]):
            out[key] = value
    return out


def match_qkv_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state`'s q/k/v projections fused or separate, as `model` has them (fused_qkv)."""
    own = model.state_dict()
    if any(k.endswith(".qkv.weight") and k not in own for k in state):
        return split_qkv(state, own)
    if any(k.endswith(".q.weight") and k not in own for k in state):
        return join_qkv(state)
    return state
