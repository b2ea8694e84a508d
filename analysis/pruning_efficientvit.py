"""Taylor structured pruning of EfficientViT itself: the layers `analysis/taylor_pruning.py` ranks and cuts.

torch-pruning's dependency graph does not finish on cascaded group attention (as its open upstream reports say),
so the channels are scored directly and cut with its layer functions. Filters, each with the BatchNorm entries of
its channel (a channel's BN weight and bias are part of its filter: they scale and shift nothing else):

  qk   channel c of head h: row c of Q in the head's qkv Conv-BN, channel c of Q's depthwise Conv-BN and row c
       of K (the logits pair Q and K channel by channel, and Q's depthwise conv keeps channels apart)
  v    channel c of head h: row c of V in the head's qkv Conv-BN and input column h * v + c of the output
       projection
  ffn  hidden unit u of an FFN (both FFNs of a sandwich block): row u of the expanding Conv-BN and input column u
       of the projecting conv

The cascade: head h reads its split plus head h-1's output. The pruned model keeps, per head, the indices of its
kept V channels among the designed ones (`CascadedGroupAttention(value_channels=...)`) and adds them to the next
split at those positions, zeros for the pruned ones: what the unpruned model computes when those channels are
zeroed (a zeroed V row gives a zero output channel). Q/K keep the designed softmax scale. So the pruned model
computes the masked model's function, which a test checks in float64. The subsample blocks between stages are not
pruned (they belong to no block of the paper's Fig. 5).

The designer's view (`stage_settings`): per stage, the Q/K width kept per head, the V width and the FFN hidden width
per FFN layer over the stage's width, beside the released M0-M5 settings (key dim 16, V = the input width, i.e. C/H
per head, FFN ratio 2: Table 1 and `CONFIGS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn

from efficientvit.errors import UserError
from efficientvit.files import atomic_path
from efficientvit.models.attention import CascadedGroupAttention, LocalWindowAttention, cascade_gather
from efficientvit.models.efficientvit import EfficientViT
from efficientvit.models.layers import FFN, ConvNorm

RELEASED = {"key_dim": 16, "v_ratio": 1.0, "mlp_ratio": 2.0}  # every M0-M5 stage (Table 1, CONFIGS)


def row_terms(unit: ConvNorm) -> torch.Tensor:
    """Per output channel, sum of w * dL/dw over its conv weights and its BatchNorm weight and bias."""
    conv, bn = unit.conv, unit.bn
    return (conv.weight.detach() * conv.weight.grad).flatten(1).sum(1) + (
        bn.weight.detach() * bn.weight.grad + bn.bias.detach() * bn.bias.grad
    )


def column_terms(conv: nn.Conv2d) -> torch.Tensor:
    """Per input channel of a 1x1 conv, sum of w * dL/dw over its column."""
    return (conv.weight.detach() * conv.weight.grad).sum(dim=(0, 2, 3))


def row_slices(unit: ConvNorm, row: int) -> list[tuple[torch.Tensor, tuple]]:
    """The entries of one output channel of a Conv-BN: its conv weights and its BatchNorm weight and bias."""
    return [(unit.conv.weight, (row,)), (unit.bn.weight, (row,)), (unit.bn.bias, (row,))]


def prune_rows(unit: ConvNorm, rows: list[int]) -> None:
    if unit.conv.groups > 1:  # depthwise: a row is a channel in and out
        tp.prune_depthwise_conv_out_channels(unit.conv, rows)
    else:
        tp.prune_conv_out_channels(unit.conv, rows)
    tp.prune_batchnorm_out_channels(unit.bn, rows)


def padded(size: int, window: int) -> int:
    return -(-size // window) * window


@dataclass
class WindowAttentionLayer:
    """The cascaded group attention of one EfficientViT block, as the global ranking sees it."""

    module: CascadedGroupAttention
    stage: int
    block: int
    width: int  # the block's input (residual) width
    tokens: int  # tokens per image, over whole (padded) windows
    keys: int  # keys each query attends to (the window)
    kind = "A"

    @property
    def heads(self) -> int:
        return self.module.num_heads

    def widths(self) -> dict[str, int]:
        return {"qk": self.module.key_dim, "v": self.module.value_dim}

    def channels(self, kind: str) -> int:
        """Rows one candidate holds: Q and K in every head for Q/K, V in every head."""
        return self.heads * (2 if kind == "qk" else 1)

    def costs(self) -> dict[str, float]:
        """Multiply-adds per image of one candidate (a channel of every head)."""
        m, T, N = self.module, self.tokens, self.keys
        reads = self.width if m.kind == "full" else m.split_dim
        dw = sum(conv.conv.kernel_size[0] * conv.conv.kernel_size[1] for conv in m.dws)
        return {"qk": T * (self.heads * (2 * reads + N) + dw), "v": self.heads * T * (reads + N + self.width)}

    def term_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Q/K: (Q's rows with its depthwise conv's, K's rows); V: (V's rows, the projection's columns)."""
        m, kd = self.module, self.module.key_dim
        q, k, v, projected = [], [], [], column_terms(m.proj[1].conv).view(self.heads, -1)
        for head, qkv in enumerate(m.qkvs):
            rows = row_terms(qkv)
            q.append(rows[:kd] + (row_terms(m.dws[head]) if m.dws else 0))
            k.append(rows[kd : 2 * kd])
            v.append(rows[2 * kd :])
        return {"qk": (torch.stack(q), torch.stack(k)), "v": (torch.stack(v), projected)}

    def filter_slices(self, kind: str, head: int | None, channel: int) -> list[tuple[torch.Tensor, tuple]]:
        m, kd = self.module, self.module.key_dim
        if kind == "qk":
            dw = row_slices(m.dws[head], channel) if m.dws else []
            return row_slices(m.qkvs[head], channel) + row_slices(m.qkvs[head], kd + channel) + dw
        column = (m.proj[1].conv.weight, (slice(None), head * m.value_dim + channel))
        return [*row_slices(m.qkvs[head], 2 * kd + channel), column]

    def remove(self, kind: str, indices: list[list[int]]) -> None:
        """Cut channel indices[h] of every head h (equal counts), and keep the cascade's V positions."""
        m = self.module
        removed = len(indices[0])
        if len(indices) != self.heads or {len(set(head)) for head in indices} != {removed}:
            raise ValueError(f"give {self.heads} per-head lists of as many distinct channels, got {indices}")
        if kind == "qk":
            for head, channels in enumerate(indices):
                prune_rows(m.qkvs[head], channels + [m.key_dim + c for c in channels])
                if m.dws:
                    prune_rows(m.dws[head], channels)
            m.key_dim -= removed
            return
        for head, channels in enumerate(indices):
            prune_rows(m.qkvs[head], [2 * m.key_dim + c for c in channels])
        tp.prune_conv_in_channels(m.proj[1].conv, [h * m.value_dim + c for h, head in enumerate(indices) for c in head])
        kept = m.value_channels or [list(range(m.value_dim))] * self.heads
        m.value_channels = [[p for i, p in enumerate(old) if i not in set(cut)] for old, cut in zip(kept, indices)]
        m.value_dim -= removed
        m.cascade_gather = cascade_gather(m.value_channels, m.split_dim).to(m.attention_biases.device)


@dataclass
class ConvFFNLayer:
    """One FFN of an EfficientViT block (1x1 Conv-BN, activation, 1x1 Conv-BN)."""

    module: FFN
    stage: int
    block: int
    width: int
    tokens: int
    keys: int = 0
    kind = "F"

    def widths(self) -> dict[str, int]:
        return {"ffn": self.module.pw1.conv.out_channels}

    def channels(self, kind: str) -> int:
        return 1

    def costs(self) -> dict[str, float]:
        return {"ffn": 2 * self.tokens * self.width}

    def term_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"ffn": (row_terms(self.module.pw1), column_terms(self.module.pw2.conv))}

    def filter_slices(self, kind: str, head: int | None, channel: int) -> list[tuple[torch.Tensor, tuple]]:
        return [*row_slices(self.module.pw1, channel), (self.module.pw2.conv.weight, (slice(None), channel))]

    def remove(self, kind: str, indices: list[int]) -> None:
        prune_rows(self.module.pw1, indices)
        tp.prune_conv_in_channels(self.module.pw2.conv, indices)


def check_prunable(model: EfficientViT) -> None:
    """Only BatchNorm belongs to one channel: a LayerNorm mixes a pixel's channels, so cutting one changes the rest."""
    if model.spec.kwargs.get("norm", "bn") != "bn":
        raise UserError("Taylor pruning of EfficientViT needs norm='bn' (a LayerNorm mixes the channels it would cut)")


def model_layers(model: EfficientViT) -> list:
    """Every block's FFNs and attention, in forward order; `block` numbers the blocks of the model from 1."""
    check_prunable(model)
    layers, block = [], 0
    for info, stage in zip(model.stage_info, model.stages):
        (h, w), (wh, ww) = info["resolution"], info["window"]
        for sandwich in stage.blocks:
            block += 1
            for child in sandwich.children():
                where = dict(stage=info["stage"], block=block, width=info["width"])
                if isinstance(child.m, FFN):
                    layers.append(ConvFFNLayer(child.m, tokens=h * w, **where))
                elif isinstance(child.m, LocalWindowAttention):
                    attention = child.m.attn
                    tokens = padded(h, wh) * padded(w, ww)
                    layers.append(WindowAttentionLayer(attention, tokens=tokens, keys=wh * ww, **where))
    return layers


def block_dims(layers: list) -> list[dict]:
    """The pruned widths as the model's `block_dims` argument: per block, Q/K per head, each head's kept V channels
    (designed indices) and each FFN's hidden width."""
    dims: dict[int, dict] = {}
    for layer in layers:
        entry = dims.setdefault(layer.block, {"ffn": []})
        if layer.kind == "F":
            entry["ffn"].append(layer.widths()["ffn"])
        else:
            attention = layer.module
            kept = attention.value_channels or [list(range(attention.value_dim))] * layer.heads
            entry.update(qk_dim=attention.key_dim, v_channels=[list(head) for head in kept])
    return [dims[block] for block in sorted(dims)]


def stage_settings(table: pd.DataFrame, min_kept: float = 0.25) -> pd.DataFrame:
    """Per stage of an EfficientViT pruning table: its blocks, heads and width; the median over its blocks of the
    Q/K width kept per head (key_dim), of the V width over the stage's width (v_ratio) and of the FFN hidden width
    per FFN layer over it (mlp_ratio); and `depth`, the blocks that kept at least `min_kept` of their prunable
    channels (Q and K rows, V rows, FFN units; at least one block per stage)."""
    before = 2 * table["qk_before"] + table["v_before"] + table["ffn_before"]
    frame = table.assign(
        key_dim=table["qk_kept"] / table["heads"],
        kept=(2 * table["qk_kept"] + table["v_kept"] + table["ffn_kept"]) / before >= min_kept,
    )
    stages = frame.groupby("stage").agg(
        blocks=("block", "size"),
        in_width=("in_width", "first"),
        heads=("heads", "first"),
        key_dim=("key_dim", "median"),
        v_ratio=("v_ratio", "median"),
        mlp_ratio=("ffn_ratio", "median"),
        depth=("kept", "sum"),
    )
    return stages.assign(depth=stages["depth"].clip(lower=1).astype(int)).reset_index()


def plot_stage_settings(stages: pd.DataFrame, path: Path, title: str) -> Path:
    """Per stage, kept key dim, V ratio and FFN ratio (bars) beside the released M0-M5 settings (dashed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines this runs on
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    labels = [f"stage {s}\n(C={c})" for s, c in zip(stages["stage"], stages["in_width"])]
    names = {"key_dim": "Q/K dim per head", "v_ratio": "V width / C", "mlp_ratio": "FFN hidden / C"}
    for ax, (column, name) in zip(axes, names.items()):
        ax.bar(labels, stages[column], color="tab:blue", label="kept (median over blocks)")
        ax.axhline(RELEASED[column], color="tab:red", linestyle="--", label="released M0-M5")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
