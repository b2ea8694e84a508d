"""Figure 5: which channels Taylor structured pruning keeps in each block of a DeiT, Swin or EfficientViT model.

The paper prunes Swin-T with Taylor structured pruning (Molchanov et al., CVPR 2019) and plots, per block, the
kept Q/K, V and FFN widths relative to the block's input width: Q/K and FFN are cut hard, V is kept until the last
blocks. That is the evidence for EfficientViT's parameter reallocation (QK dim 16, V = input width, FFN ratio 2).

Filters, Molchanov's unit of pruning, each scored on its own:
  qk   channel c of head h in Q and in K together (the logits pair them: they go together)
  v    channel c of head h in V, with the matching input column of the output projection
  ffn  hidden unit u of an FFN: row u of fc1 and column u of fc2
EfficientViT (the next step after the paper's: prune the model it designed) has the same three kinds in its
cascaded group attention and in both FFNs of its sandwich blocks, with BatchNorm entries and Q's depthwise conv
in the filters and the cascade kept exact: analysis/pruning_efficientvit.py. Every layer answers the same calls
(widths, channels, costs, first_order_terms, remove), so the ranking below is one for the three families.

Importance: Molchanov et al.'s first-order Taylor criterion (their Eq. 8), the squared first-order change of the
loss when the filter S is removed, averaged over --batches batches of the training split:
  I(S) = mean over batches b of ( sum_{s in S} w_s * dL_b/dw_s )^2
summed over every weight and bias entry the filter owns. A test checks the scores against finite differences.

Grouping within heads: channel index c means nothing across heads (each head has its own Q/K/V basis), while the
model classes need every head of a layer to keep one width. So Q/K and V channels are ranked within each head, and
a layer's k-th candidate of a kind is "the next least important channel of every head": the channel with head h's
k-th smallest score, for every h, each head its own index. The candidate scores the mean over heads of those k-th
smallest scores. The mean, not the sum, keeps a candidate on the scale of one filter, like an FFN unit it competes
with (holding H filters does not make it worth H units; the budget already counts all its channels); the mean, not
the largest or smallest head, lets no single head decide for the others. Each head's sorted scores rise with k,
so the mean does too: a layer's candidates leave in order.

Global ranking under a resource budget, as Molchanov et al.: the candidates of all layers (attention candidates and
FFN units) are ranked together and the lowest removed until the round's budget is met (--ratio of the prunable
channels, --target-flops, or --target-speedup as a FLOPs reduction); every kind keeps at least one channel per
head. `--rank-by importance-per-flop` divides each score by the multiply-adds the candidate costs (not in the
paper: it shifts the cuts towards expensive layers).

Iterative schedule (Molchanov et al.; the default): --iterative STEPS rounds (default 4), each removing 1/STEPS of
the budget (counted on what earlier rounds really removed, so the rounds together meet the budget one shot would),
rescoring before each round, with --step-finetune N batches (default 50) of AdamW at --step-lr (default 1e-4, a
twentieth of the proxies' peak rate; no weight decay), cross-entropy on the training split, between rounds.
`--iterative 1` is one-shot pruning. A longer fine-tune of the final model is --finetune-config. torch-pruning's
layer functions do the surgery (rows h * width + c_h, each head its own channels); its importance classes compute
a different score (an unsquared |w * g| sum).

Output: results/taylor_pruning/<run>.csv, one row per block (an attention layer and the FFN layers after it; for
EfficientViT, a sandwich block: its attention and the FFNs on both sides):
  block, stage, in_width, heads        the block, its stage, its input (residual) width and its heads
  qk_before, qk_kept, v_before, v_kept Q/K and V channels summed over heads; ffn_before, ffn_kept: FFN hidden units
                                       summed over the block's ffn_layers FFN layers
  qk_ratio, v_ratio, ffn_ratio         kept / in_width, the paper's Fig. 5 axis, FFN per FFN layer (unpruned: Q/K 1,
                                       EfficientViT's key_dim x heads / C; V 1, its v_ratio; FFN the FFN ratio)
  ffn_layers                           the block's FFN layers (1 for DeiT and Swin, 2 for EfficientViT's sandwich)
  qk_kept_fraction, v_kept_fraction,   kept / before: how much of its own width each kind kept, the scale on which
  ffn_kept_fraction                    "Q/K are cut more than FFN" is read (paired_effects: one run's effects)
+ .json (arguments, params, FLOPs, top-1 before/after pruning and after fine-tuning), and the pruned model as a
checkpoint of ours that rebuilds itself (runs/pruned/<run>.pth by default); for EfficientViT also <run>_stages.png,
the settings kept per stage beside the released M0-M5 settings (pruning_efficientvit.stage_settings).
Example: python analysis/taylor_pruning.py --model swin_tiny --checkpoint swin.pth --data data/synth --ratio 0.4
         python analysis/taylor_pruning.py --checkpoint runs/cpu/efficientvit_m0/checkpoint.pth --data fashion-mnist
             --ratio 0.3
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import efficientvit
from analysis import pruning_efficientvit as pe
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import check_bad_images, collate
from efficientvit.data.sources import open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.evaluation import evaluate
from efficientvit.flops import count_flops, count_params
from efficientvit.models import ModelSpec, model_family
from efficientvit.models.attention import TokenAttention
from efficientvit.models.efficientvit import EfficientViT
from efficientvit.models.layers import FFNLayer
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device
from efficientvit.train import train as train_model
from efficientvit.train_config import recipe

KINDS = ("qk", "v", "ffn")
RANKINGS = ("importance", "importance-per-flop")
# A filter's two first-order terms (sum of w * dL/dw over each side's parameters), `PrunableLayer.term_pairs`: for
# Q/K its Q row and its K row, for V its V row and the projection's column, for an FFN unit fc1's row and fc2's
# column. Q/K's two are equal (the logits are bilinear in q and k) and so are V's, each the first-order change of
# the loss when the filter's contribution is removed once; an FFN unit's differ (GELU between them) and may cancel.
CRITERIA = {
    "molchanov": "Molchanov et al.'s (the paper's): the squared sum of both terms, averaged over batches",
    "output": "the squared second term alone (activation times gradient at the filter's output), averaged",
    "input": "the squared first term alone, averaged",
    "output-signed": "minus the mean second term: the first-order estimate of the signed loss change on removal",
    "molchanov-per-param": "Molchanov's divided by the filter's parameter count",
}
MOMENTS = ("a", "b", "a2", "b2", "ab2")
# The default is the criterion whose cut harms the model least, Molchanov's (the paper's). The one that best
# predicts the harm of removing one filter or group alone is the signed first-order estimate (output-signed: it
# tracks the signed oracle where Molchanov's squared sum tracks the squared one), but removals do not add up: a cut
# made of many removals that each barely harm, or help, costs tens of points of top-1 where Molchanov's costs a
# fraction of one (analysis/pruning_oracle.py measures both, each whole cut too; results/REPORT.md, Fig. 5).
DEFAULT_CRITERION = "molchanov"
BUDGETS = ("ratio", "target_flops", "target_speedup")


class PrunableLayer(Protocol):
    """What the global ranking asks of every layer it prunes, whatever the family: DeiT's and Swin's `Layer`
    (below), EfficientViT's `WindowAttentionLayer` and `ConvFFNLayer` (analysis/pruning_efficientvit.py)."""

    kind: str  # "A" (attention: Q/K and V channels) or "F" (an FFN: hidden units)
    stage: int
    block: int  # the Fig. 5 block it belongs to, numbered from 1
    width: int  # the block's input (residual) width

    def widths(self) -> dict[str, int]:
        """Channels per head (Q/K, V) or FFN hidden units, as the layer is now."""

    def channels(self, kind: str) -> int:
        """Rows one candidate of `kind` holds (a channel of every head for Q/K and V)."""

    def costs(self) -> dict[str, float]:
        """Multiply-adds per image one candidate of each kind costs."""

    def term_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The two first-order terms of every filter, sum of w * dL/dw over each side's parameters (`TERMS`):
        (units,) for FFN, (heads, channels) for Q/K and V."""

    def filter_slices(self, kind: str, head: int | None, channel: int) -> list[tuple[torch.Tensor, tuple]]:
        """Every parameter entry one filter owns, as (tensor, index): zeroed, they remove the filter (the oracle)."""

    def remove(self, kind: str, indices: list) -> None:
        """Cut FFN units, or for Q/K and V one list of channels per head (equal counts)."""


@dataclass(frozen=True)
class Budget:
    """How much a pruning removes: a fraction of the prunable channels (`ratio`), multiply-adds per image to reach
    (`target_flops`) or a FLOPs reduction factor (`target_speedup`). Checked when made; `label` names it in file
    names (ratio_0.4, flops_30M, speedup_1.5x)."""

    kind: str
    amount: float

    def __post_init__(self):
        if self.kind not in BUDGETS:
            raise UserError(f"a pruning budget is one of {', '.join(BUDGETS)}, got {self.kind!r}")
        if self.kind == "ratio" and not 0 < self.amount < 1:
            raise UserError(f"--ratio must be within (0, 1), got {self.amount}")
        if self.kind == "target_speedup" and self.amount <= 1:
            raise UserError(f"--target-speedup must be above 1, got {self.amount}")
        if self.kind == "target_flops" and self.amount <= 0:
            raise UserError(f"--target-flops must be above 0, got {self.amount}")

    @classmethod
    def of(cls, settings) -> Budget:
        """The one budget a PruneConfig (or a preset's pruning settings) gives."""
        chosen = [kind for kind in BUDGETS if getattr(settings, kind) is not None]
        if len(chosen) != 1:
            raise UserError("give exactly one budget: --ratio, --target-flops or --target-speedup")
        return cls(chosen[0], getattr(settings, chosen[0]))

    @property
    def label(self) -> str:
        if self.kind == "ratio":
            return f"ratio_{self.amount:g}"
        return f"flops_{self.amount / 1e6:g}M" if self.kind == "target_flops" else f"speedup_{self.amount:g}x"


def linear_terms(linear: nn.Linear, axis: str) -> torch.Tensor:
    """Per output channel ("rows": a row of the weight and its bias entry) or input channel ("columns": a column of
    the weight), the sum of w * dL/dw over its entries."""
    terms = linear.weight.detach() * linear.weight.grad
    if axis == "columns":
        return terms.sum(dim=0)
    terms = terms.sum(dim=1)
    return terms if linear.bias is None else terms + linear.bias.detach() * linear.bias.grad


def linear_slices(linear: nn.Linear, axis: str, index: int) -> list[tuple[torch.Tensor, tuple]]:
    """The entries of output channel (row) or input channel (column) `index` of a linear layer."""
    if axis == "columns":
        return [(linear.weight, (slice(None), index))]
    return [(linear.weight, (index,))] + ([(linear.bias, (index,))] if linear.bias is not None else [])


@dataclass
class Layer:
    """One A or F layer of a DeiT or Swin model, with what its channels cost per image (a `PrunableLayer`)."""

    module: nn.Module
    kind: str  # "A" or "F"
    stage: int
    width: int  # the layer's input (residual) width
    tokens: int  # tokens per image
    keys: int  # keys each query attends to (window size for Swin)
    block: int  # the block it belongs to: an attention layer and the FFN layers after it, numbered from 1

    @property
    def heads(self) -> int:
        return self.module.attn.num_heads

    def widths(self) -> dict[str, int]:
        """Channels per head (Q/K, V) or FFN hidden units, as the layer is now."""
        if self.kind == "F":
            return {"ffn": self.module.mlp.fc1.out_features}
        return {"qk": self.module.attn.qk_dim, "v": self.module.attn.v_dim}

    def channels(self, kind: str) -> int:
        """Channels (rows) one candidate of `kind` holds: one per head for V, two per head for Q/K (Q and K)."""
        return 1 if kind == "ffn" else self.heads * (2 if kind == "qk" else 1)

    def costs(self) -> dict[str, float]:
        """Multiply-adds per image that one candidate of each kind costs in this layer (a channel of every head)."""
        T, C, N = self.tokens, self.width, self.keys
        if self.kind == "F":
            return {"ffn": 2 * T * C}
        return {"qk": self.heads * (2 * T * C + T * N), "v": self.heads * (2 * T * C + T * N)}

    def sides(self, kind: str) -> tuple[list[tuple[nn.Linear, str]], list[tuple[nn.Linear, str]]]:
        """A filter's parameters, side by side: ([(linear, "rows" or "columns")], ...) for its first and second
        term (`TERMS`)."""
        if kind == "ffn":
            return [(self.module.mlp.fc1, "rows")], [(self.module.mlp.fc2, "columns")]
        attn = self.module.attn
        return (
            ([(attn.q, "rows")], [(attn.k, "rows")]) if kind == "qk" else ([(attn.v, "rows")], [(attn.proj, "columns")])
        )

    def term_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The two first-order terms of every filter (`TERMS`), from the gradients now in the model: (units,) for
        FFN units, (heads, channels) for the Q/K and V channels of every head."""
        pairs = {}
        for kind in self.widths():
            first, second = (sum(linear_terms(linear, axis) for linear, axis in side) for side in self.sides(kind))
            pairs[kind] = (
                (first, second) if kind == "ffn" else (first.view(self.heads, -1), second.view(self.heads, -1))
            )
        return pairs

    def filter_slices(self, kind: str, head: int | None, channel: int) -> list[tuple[torch.Tensor, tuple]]:
        index = channel if kind == "ffn" else head * self.widths()[kind] + channel
        return [
            entry for side in self.sides(kind) for linear, axis in side for entry in linear_slices(linear, axis, index)
        ]

    def remove(self, kind: str, indices: list) -> None:
        """Remove channels with torch-pruning's layer functions, and record the new widths on the modules.
        indices: FFN units, or for "qk"/"v" one list of channels per head (each head its own, equal counts)."""
        if kind == "ffn":
            mlp = self.module.mlp
            tp.prune_linear_out_channels(mlp.fc1, indices)
            tp.prune_linear_in_channels(mlp.fc2, indices)
            return
        attn: TokenAttention = self.module.attn
        counts = {len(set(head)) for head in indices}
        if len(indices) != attn.num_heads or len(counts) != 1:
            raise ValueError(f"give {attn.num_heads} per-head lists of as many distinct channels, got {indices}")
        removed = counts.pop()
        width = attn.qk_dim if kind == "qk" else attn.v_dim
        rows = [h * width + c for h, head in enumerate(indices) for c in head]
        if kind == "qk":
            tp.prune_linear_out_channels(attn.q, rows)
            tp.prune_linear_out_channels(attn.k, rows)
            attn.qk_dim -= removed
        else:
            tp.prune_linear_out_channels(attn.v, rows)
            tp.prune_linear_in_channels(attn.proj, rows)
            attn.v_dim -= removed


def swin_layers(model: nn.Module) -> list[tuple]:
    """A Swin's A and F layers with their stage, width, tokens per image and keys per query (the window)."""
    found = []
    for info, stage in zip(model.stage_info, model.stages):
        tokens = info["resolution"][0] * info["resolution"][1]
        keys = info["window"][0] * info["window"][1]
        found += [(layer, info["stage"], info["width"], tokens, keys) for layer in stage.layers]
    return found


def deit_layers(model: nn.Module) -> list[tuple]:
    """A DeiT's A and F layers: one stage, every token (the class token too) attending to every other."""
    tokens = model.grid[0] * model.grid[1] + 1
    return [(layer, 1, model.num_features, tokens, tokens) for layer in model.layers]


def transformer_layers(model: nn.Module, found: list[tuple]) -> list[Layer]:
    """A DeiT's or Swin's `Layer`s; a block starts at each attention layer (or at a leading FFN layer)."""
    layers, block = [], 0
    for layer, stage, width, tokens, keys in found:
        kind = "F" if isinstance(layer, FFNLayer) else "A"
        block += kind == "A" or block == 0
        layers.append(Layer(layer, kind, stage, width, tokens, keys, block))
        if kind == "A" and not hasattr(layer.attn, "q"):
            raise UserError(
                "prune a model with attention='full' (every head sees all channels); split and "
                "cascaded heads have no shared Q/K/V channels to rank"
            )
    return layers


FAMILY_LAYERS = {  # how each family's layers are found, by the model's family
    "efficientvit": pe.model_layers,
    "deit": lambda model: transformer_layers(model, deit_layers(model)),
    "swin": lambda model: transformer_layers(model, swin_layers(model)),
}


def model_layers(model: nn.Module) -> list[PrunableLayer]:
    """The layers the global ranking sees, in forward order: DeiT's and Swin's `Layer`s, or EfficientViT's FFNs and
    cascaded group attentions (analysis/pruning_efficientvit.py)."""
    family = model_family(model.spec.name)
    if family not in FAMILY_LAYERS:
        raise UserError(f"Taylor pruning supports EfficientViT, DeiT and Swin models; {model.spec.name} is not one")
    layers = FAMILY_LAYERS[family](model)
    if not any(layer.kind == "A" for layer in layers):
        raise UserError("the model has no attention layers to prune")
    return layers


def term_moments(
    model: nn.Module, layers: list, loader: DataLoader, batches: int, device: torch.device, *, skip_bad: bool = False
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Every filter's two first-order terms (`PrunableLayer.term_pairs`: a, b) over `batches` batches of the
    loader, as the means every criterion is made of (float64): per layer and kind, {"a", "b", "a2", "b2", "ab2"}, the
    means of a, b, a^2, b^2 and (a + b)^2 over the batches, shaped (units,) or (heads, channels)."""
    model.eval()
    sums = [{kind: dict.fromkeys(MOMENTS, 0.0) for kind in layer.widths()} for layer in layers]
    done = 0
    for x, y, bad in tqdm(loader, total=batches, desc="taylor scores", unit="batch", leave=False):
        check_bad_images(bad, skip_bad)
        if x is None:
            continue
        model.zero_grad()
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for layer, layer_sums in zip(layers, sums):
            for kind, (a, b) in layer.term_pairs().items():
                a, b, moments = a.double(), b.double(), layer_sums[kind]
                for name, value in (("a", a), ("b", b), ("a2", a * a), ("b2", b * b), ("ab2", (a + b).square())):
                    moments[name] = moments[name] + value
        done += 1
        if done >= batches:
            break
    model.zero_grad()
    if done == 0:
        raise UserError("no images were read from the training split")
    return [{kind: {k: v / done for k, v in m.items()} for kind, m in layer_sums.items()} for layer_sums in sums]


@contextmanager
def removed(layers: list, filters: list[tuple[int, str, int | None, int]]):
    """The filters (layer index, kind, head, channel) removed by zeroing every parameter entry they own (what the
    model computes once they are pruned; heads may lose different numbers), restored on leaving."""
    saved = []
    with torch.no_grad():
        for i, kind, head, channel in filters:
            for tensor, index in layers[i].filter_slices(kind, head, channel):
                saved.append((tensor, index, tensor[index].clone()))
                tensor[index] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, index, value in reversed(saved):
                tensor[index] = value


def filter_params(layer, kind: str) -> int:
    """How many parameter entries one filter of `kind` owns in `layer`."""
    return sum(tensor[index].numel() for tensor, index in layer.filter_slices(kind, 0, 0))


def criterion_scores(layers: list, moments: list[dict], criterion: str) -> list[dict[str, torch.Tensor]]:
    """Each filter's score under `criterion` (CRITERIA), from its term moments: lower is less important."""
    scores = []
    for layer, layer_moments in zip(layers, moments):
        scores.append({})
        for kind, m in layer_moments.items():
            value = {"molchanov": m["ab2"], "output": m["b2"], "input": m["a2"], "output-signed": -m["b"]}.get(
                criterion
            )
            if criterion == "molchanov-per-param":
                value = m["ab2"] / filter_params(layer, kind)
            scores[-1][kind] = value
    return scores


def taylor_scores(
    model: nn.Module,
    layers: list,
    loader: DataLoader,
    batches: int,
    device: torch.device,
    *,
    criterion: str = DEFAULT_CRITERION,
    skip_bad: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Every filter's importance under `criterion` (Molchanov's by default: its squared first-order term averaged
    over the batches, float64): per layer, {"ffn": (units,)} or {"qk": (heads, qk_dim), "v": (heads, v_dim)}, one
    score per channel of each head (nothing is tied across heads here; choose() groups)."""
    moments = term_moments(model, layers, loader, batches, device, skip_bad=skip_bad)
    return criterion_scores(layers, moments, criterion)


def candidates(layers: list, scores: list[dict[str, torch.Tensor]], rank_by: str = "importance") -> list:
    """Every candidate of the global ranking, least important first, as (value, layer index, kind, k, channel).

    An FFN candidate is one unit (channel: its index). An attention candidate k is the channel with the k-th
    smallest score in every head (channel: a tuple of per-head indices), valued at the mean over heads of those
    k-th smallest scores (why the mean: the module docstring). With importance-per-flop, value / cost."""
    found = []
    for i, (layer, layer_scores) in enumerate(zip(layers, scores)):
        costs = layer.costs()
        for kind, values in layer_scores.items():
            cost = costs[kind] if rank_by == "importance-per-flop" else 1.0
            if values.ndim == 1:
                found += [(value / cost, i, kind, unit, unit) for unit, value in enumerate(values.tolist())]
                continue
            ranked, order = values.sort(dim=1, stable=True)  # within each head
            per_head = order.t().tolist()  # [k][head]
            found += [(value / cost, i, kind, k, tuple(per_head[k])) for k, value in enumerate(ranked.mean(0).tolist())]
    return sorted(found, key=lambda candidate: candidate[:4])


def candidate_cost(layer, kind: str, unit: str) -> float:
    """What removing one candidate counts towards the budget, in its `unit`: multiply-adds ("flops") or channels."""
    return layer.costs()[kind] if unit == "flops" else layer.channels(kind)


def removal_order(layers: list, scores: list[dict[str, torch.Tensor]], rank_by: str = "importance"):
    """The global ranking's removals in the order it takes them, (layer index, kind, channel) (`candidates`),
    skipping those that would leave a head without a channel of its kind."""
    remaining = {(i, kind): w for i, layer in enumerate(layers) for kind, w in layer.widths().items()}
    for _, i, kind, _, channel in candidates(layers, scores, rank_by):
        if remaining[(i, kind)] <= 1:
            continue  # keep every head runnable
        remaining[(i, kind)] -= 1
        yield i, kind, channel


def choose(
    layers: list, scores: list[dict[str, torch.Tensor]], unit: str, amount: float, rank_by: str = "importance"
) -> dict:
    """Global ranking: what to remove until `amount` is met, {(layer index, "ffn"): [units]} and
    {(layer index, "qk" or "v"): [[channels of head 0], [channels of head 1], ...]} (equal counts per head).

    unit "channels": remove `amount` prunable channels; "flops": remove `amount` multiply-adds per image.
    rank_by "importance" (Molchanov et al., the paper) or "importance-per-flop" (each value over its cost)."""
    chosen, removed = {}, 0.0
    for i, kind, channel in removal_order(layers, scores, rank_by):
        if removed >= amount:
            break
        if kind == "ffn":
            chosen.setdefault((i, kind), []).append(channel)
        else:
            for head, index in zip(chosen.setdefault((i, kind), [[] for _ in channel]), channel):
                head.append(index)
        removed += candidate_cost(layers[i], kind, unit)
    return chosen


def layer_dims(layers: list[Layer]) -> list:
    """DeiT's and Swin's `layer_dims` argument: [qk_dim, v_dim] per head for an A layer, the hidden width of an F."""
    return [layer.widths()["ffn"] if layer.kind == "F" else list(layer.widths().values()) for layer in layers]


def pruned_kwargs(model: nn.Module, layers: list) -> dict:
    """The constructor arguments that rebuild the pruned model's widths."""
    if isinstance(model, EfficientViT):
        return {"block_dims": pe.block_dims(layers)}
    return {"layer_dims": layer_dims(layers)}


def block_table(layers: list, before: list[dict], after: list[dict]) -> pd.DataFrame:
    """One row per block (its attention layer and FFN layers), from each layer's widths() before and after."""
    rows = {}
    for layer, b, a in zip(layers, before, after):
        block = rows.setdefault(
            layer.block,
            dict(block=layer.block, stage=layer.stage, in_width=layer.width, ffn_layers=0, ffn_before=0, ffn_kept=0),
        )
        if layer.kind == "A":
            heads = layer.heads
            block.update(
                heads=heads,
                qk_before=b["qk"] * heads,
                qk_kept=a["qk"] * heads,
                v_before=b["v"] * heads,
                v_kept=a["v"] * heads,
            )
        else:
            block["ffn_layers"] += 1
            block["ffn_before"] += b["ffn"]
            block["ffn_kept"] += a["ffn"]
    frame = pd.DataFrame(list(rows.values()))
    # FFN per FFN layer, so that it reads as the model's mlp_ratio: EfficientViT's sandwich has two per block
    per_layer = {"qk": 1, "v": 1, "ffn": frame["ffn_layers"].where(frame["ffn_layers"] > 0)}
    for kind in KINDS:
        frame[f"{kind}_ratio"] = frame[f"{kind}_kept"] / per_layer[kind] / frame["in_width"]
    for kind in KINDS:  # a block without FFN (or attention) has no fraction: NaN, not 0/0 = a number
        before_width = frame[f"{kind}_before"].where(frame[f"{kind}_before"] > 0)
        frame[f"{kind}_kept_fraction"] = frame[f"{kind}_kept"] / before_width
    return frame


def paired_effects(table: pd.DataFrame) -> dict[str, float]:
    """One run's paired Fig. 5 effects from its per-block table (or any frame with *_kept_fraction columns):

      qk_minus_ffn  mean over blocks of (Q/K kept fraction - FFN kept fraction), points: "Q/K are cut more than
                    FFN relative to their width" holds when negative (paper's Swin-T: 0.31 - 2.70/4 = -36 points)
      v_minus_qk    mean over blocks of (V kept fraction - Q/K kept fraction), points: "V keeps more than Q/K"
                    holds when positive (paper's Swin-T: 0.91 - 0.31 = +60 points)
    beside the mean kept fractions and the blocks that entered each difference (those that have both kinds).
    Blocks count equally, as in the paper's means over its plotted blocks. The paper's table gives its effects
    with qk_kept_fraction = qk_ratio, v_kept_fraction = v_ratio, ffn_kept_fraction = ffn_ratio / 4."""
    fraction = {kind: table[f"{kind}_kept_fraction"].astype(float) for kind in KINDS}
    effects = {f"{kind}_kept_fraction": float(fraction[kind].mean()) for kind in KINDS}
    for name, (a, b) in {"qk_minus_ffn": ("qk", "ffn"), "v_minus_qk": ("v", "qk")}.items():
        difference = (fraction[a] - fraction[b]).dropna()
        effects[name] = float(100 * difference.mean()) if len(difference) else float("nan")
        effects[f"{name}_blocks"] = len(difference)
    return effects


def model_to_prune(name: str | None, checkpoint: str | None, num_classes: int, img_size: int | None):
    """The model to prune: an EfficientViT as it is, a DeiT or Swin rebuilt with separate q/k/v projections
    (weights converted). A checkpoint of another family than --model names is refused."""
    spec = ModelSpec(name, {"num_classes": num_classes}) if name else None
    overrides = {"img_size": img_size} if img_size else {}
    if checkpoint:
        model = efficientvit.model_from_checkpoint(checkpoint, spec, **overrides)
        family, held = (efficientvit.models.model_family(n) for n in (name or model.spec.name, model.spec.name))
        if family != held:
            raise UserError(f"--model {name} is {family}, but the checkpoint {checkpoint} holds {model.spec.name}")
        spec = model.spec
    elif spec is None:
        raise UserError("give --model, or a --checkpoint of this project (it names its model)")
    family = efficientvit.models.model_family(spec.name)
    if family == "efficientvit":
        return model if checkpoint else spec.build(**overrides)
    if family not in ("deit", "swin"):
        raise UserError(f"Taylor pruning here supports EfficientViT, DeiT and Swin models; {spec.name} is not one")
    if spec.kwargs.get("attention", "full") != "full":
        raise UserError("prune a model with attention='full'; split and cascaded heads share no Q/K/V channels")
    separate = spec.build(fused_qkv=False, **overrides)
    if checkpoint:
        efficientvit.load_checkpoint(separate, model.state_dict())  # fused qkv -> separate q, k, v
        separate.pretrained_cfg = model.pretrained_cfg  # a pretrained name's evaluation transform
    return separate


def parse_flops(text: str) -> float:
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"FLOPs must be a number with an optional K/M/G suffix, got {text!r}"
        ) from None


def budget_goal(model: nn.Module, layers: list, budget: Budget) -> tuple[str, float]:
    """("channels", channels to remove) for a ratio, ("flops", multiply-adds to remove) for a FLOPs target."""
    if budget.kind == "ratio":
        total = sum(layer.channels(kind) * w for layer in layers for kind, w in layer.widths().items())
        return "channels", budget.amount * total
    base = count_flops(model)
    target = budget.amount if budget.kind == "target_flops" else base / budget.amount
    if target >= base:
        raise UserError(f"the model already has {base / 1e6:.1f} M FLOPs, within the target {target / 1e6:.1f} M")
    prunable = sum(layer.costs()[k] * w for layer in layers for k, w in layer.widths().items())
    if base - target > prunable - sum(layer.costs()[k] for layer in layers for k in layer.widths()):
        raise UserError(
            f"the target {target / 1e6:.1f} M FLOPs cannot be reached by pruning Q/K, V and FFN "
            f"channels (at least {(base - prunable) / 1e6:.1f} M remain)"
        )
    return "flops", base - target


def removed_so_far(layers: list, start: list[dict[str, int]], unit: str) -> float:
    """Channels or multiply-adds removed since `start` (each layer's widths() then)."""
    return sum(
        (start_widths[kind] - width) * candidate_cost(layer, kind, unit)
        for layer, start_widths in zip(layers, start)
        for kind, width in layer.widths().items()
    )


def finetune_steps(
    model: nn.Module, loader: DataLoader, batches: int, lr: float, device: torch.device, *, skip_bad: bool = False
) -> float:
    """The short fine-tune between pruning rounds: `batches` steps of AdamW (lr, no weight decay) on the
    cross-entropy of the training split, in train mode, going round the loader as often as needed; returns the
    mean loss (nan for 0 batches). A fresh optimizer each time: the surgery replaced the parameters."""
    if batches <= 0:
        return float("nan")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    progress = tqdm(total=batches, desc="fine-tune between rounds", unit="step", leave=False)
    while len(losses) < batches:
        seen = len(losses)
        for x, y, bad in loader:
            check_bad_images(bad, skip_bad)
            if x is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.update()
            if len(losses) >= batches:
                break
        if len(losses) == seen:
            raise UserError("no images were read from the training split")
    progress.close()
    model.zero_grad(set_to_none=True)
    model.eval()
    return sum(losses) / len(losses)


def prune(
    model: nn.Module,
    train_loader: DataLoader,
    budget: Budget,
    device: torch.device,
    *,
    steps: int = 1,
    batches: int = 10,
    criterion: str = DEFAULT_CRITERION,
    rank_by: str = "importance",
    step_finetune: int = 0,
    step_lr: float = 1e-4,
    skip_bad: bool = False,
) -> tuple[list, list[dict], list[dict]]:
    """Prune `model` in place in `steps` rounds (rescoring before each, `step_finetune` batches of fine-tuning
    between rounds); returns its layers and their widths() before and after."""
    layers = model_layers(model)
    before = [layer.widths() for layer in layers]
    kind, goal = budget_goal(model, layers, budget)
    for step in range(steps):
        if step:
            finetune_steps(model, train_loader, step_finetune, step_lr, device, skip_bad=skip_bad)
        scores = taylor_scores(model, layers, train_loader, batches, device, criterion=criterion, skip_bad=skip_bad)
        wanted = goal * (step + 1) / steps - removed_so_far(layers, before, kind)
        for (i, group_kind), indices in choose(layers, scores, kind, wanted, rank_by).items():
            layers[i].remove(group_kind, indices)
    model.spec = model.spec.with_kwargs(**pruned_kwargs(model, layers))
    return layers, before, [layer.widths() for layer in layers]


DESCRIPTION = (
    "Taylor structured pruning of an EfficientViT, DeiT or Swin model with a global ranking (the paper's Fig. 5): "
    "Q/K and V channels ranked within each head, pruned iteratively with short fine-tunes between rounds; per "
    "block, the Q/K, V and FFN widths kept. Writes results/taylor_pruning/<run>.csv and .json (and, for "
    "EfficientViT, <run>_stages.png: the kept settings per stage beside the released M0-M5's) and the pruned "
    "checkpoint. Give exactly one budget: --ratio, --target-flops or --target-speedup."
)


@dataclass
class PruneConfig:
    data: str = knob(help="fashion-mnist, or an ImageFolder root with train/ (scores) and val/ (accuracy)")
    model: str | None = knob(
        None, "deit_tiny, swin_tiny, ... (not needed for checkpoints of this project nor for pretrained names)"
    )
    checkpoint: str | None = knob(
        None,
        "weights to prune: a file (this project's or timm's) or a pretrained name (timm/swin_tiny_patch4_window7_224"
        ".ms_in1k: `efficientvit list --pretrained`), which builds its model and sets the evaluation transform",
    )
    ratio: float | None = knob(None, "budget: fraction of the prunable channels to remove, in (0, 1)")
    target_flops: float | None = knob(None, "budget: multiply-adds per image to reach, e.g. 30M", type=parse_flops)
    target_speedup: float | None = knob(None, "budget: FLOPs reduction factor to reach, e.g. 1.5")
    batches: int = knob(10, "batches whose gradients score the channels, before each round")
    criterion: str = knob(
        DEFAULT_CRITERION,
        "how a filter is scored: " + "; ".join(f"{name}: {text}" for name, text in CRITERIA.items()),
        choices=tuple(CRITERIA),
    )
    rank_by: str = knob(
        "importance",
        "importance: Molchanov's global ranking (the paper's); importance-per-flop: each candidate's score divided "
        "by its multiply-adds",
        choices=RANKINGS,
    )
    batch: int = knob(32, "images per batch")
    iterative: int = knob(
        4, "prune in STEPS rounds of 1/STEPS of the budget, rescoring before each (1: one-shot)", metavar="STEPS"
    )
    step_finetune: int = knob(50, "batches of fine-tuning (AdamW, cross-entropy) between rounds", metavar="N")
    step_lr: float = knob(1e-4, "learning rate of the fine-tune between rounds (no weight decay)")
    eval_images: int = knob(2000, "validation images for accuracy")
    finetune_config: str | None = knob(None, "training YAML to fine-tune the pruned model with afterwards")
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(2, "data loading processes")
    skip_bad: bool = knob(False, "skip unreadable images instead of stopping")
    run: str | None = knob(None, "run name (default <model>_<budget>)")
    out_dir: Path = knob(Path("results/taylor_pruning"), "CSV folder")
    save: Path | None = knob(None, "pruned checkpoint (default runs/pruned/<run>.pth)")


@dataclass
class PruneResult:
    """What run() computed: the per-block table (as written), the run's numbers (params_*, flops_*, top1_before;
    top1_after, right after the last round's cuts, so after the fine-tunes between rounds; rounds and
    step_finetune_batches, their total; top1_finetuned when --finetune-config asked), the pruned checkpoint and the
    files written (CSV, JSON, and for EfficientViT the per-stage figure)."""

    table: pd.DataFrame
    stats: dict
    checkpoint: Path
    paths: list[Path]


def data_loaders(
    config: PruneConfig, size: int, classes: list[str], pretrained_cfg: dict | None = None
) -> tuple[DataLoader, DataLoader]:
    """The shuffled training loader (scores and the fine-tunes between rounds; seeded) and the validation one;
    `pretrained_cfg`: the model's (weights by name), whose evaluation transform both then use."""
    train = open_split(config.data, "train", size, pretrained_cfg=pretrained_cfg)
    val = open_split(config.data, "val", size, classes=classes, pretrained_cfg=pretrained_cfg)
    val = Subset(val, range(min(config.eval_images, len(val))))
    train_loader = DataLoader(
        train,
        batch_size=config.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=config.workers,
        persistent_workers=config.workers > 0,  # read again every round
        collate_fn=collate,
    )
    return train_loader, DataLoader(val, batch_size=64, num_workers=config.workers, collate_fn=collate)


def measure(model: nn.Module, val_loader: DataLoader, device: torch.device, skip_bad: bool, when: str) -> dict:
    return {
        f"params_{when}": count_params(model),
        f"flops_{when}": count_flops(model),
        f"top1_{when}": evaluate(model, val_loader, device, skip_bad, distributed=False)["top1"],
    }


def run(config: PruneConfig) -> PruneResult:
    """Prune, save the pruned checkpoint (and fine-tune it if asked), write the per-block table and its sidecar
    (params, FLOPs and top-1 before and after), and return them. Seeded: the same config gives the same cuts."""
    budget = Budget.of(config)
    if config.iterative < 1:
        raise UserError(f"--iterative must be at least 1 (1: one-shot), got {config.iterative}")
    device = resolve_device(config.device)
    finetune = recipe(config.finetune_config) if config.finetune_config else None  # a bad one refused before work
    classes = open_split(config.data, "train", config.img_size or 224).classes
    model = model_to_prune(config.model, config.checkpoint, len(classes), config.img_size).to(device)
    train_loader, val_loader = data_loaders(config, model.img_size[0], classes, model.pretrained_cfg)
    name = model.spec.name
    stats = measure(model, val_loader, device, config.skip_bad, "before")
    torch.manual_seed(0)  # drop path and dropout in the fine-tunes between rounds
    layers, before, after = prune(
        model,
        train_loader,
        budget,
        device,
        steps=config.iterative,
        batches=config.batches,
        criterion=config.criterion,
        rank_by=config.rank_by,
        step_finetune=config.step_finetune,
        step_lr=config.step_lr,
        skip_bad=config.skip_bad,
    )
    stats.update(measure(model, val_loader, device, config.skip_bad, "after"))
    stats.update(rounds=config.iterative, step_finetune_batches=(config.iterative - 1) * config.step_finetune)
    run_name = config.run or f"{name}_{budget.label}"
    save = Path(config.save or Path("runs/pruned") / f"{run_name}.pth")
    efficientvit.save_checkpoint(save, model, pruning=stats)
    if finetune is not None:
        fixed = {"init": str(save), "model": name, "out": f"{save.with_suffix('')}_finetuned"}
        stats["top1_finetuned"] = train_model(recipe(dataclasses.asdict(finetune), fixed))[-1]["val_top1"]
    table = block_table(layers, before, after)
    table.insert(0, "model", name)
    extra = {"pruning": stats, "checkpoint": str(save)}
    out = write_results(table, config.out_dir / f"{run_name}.csv", config_arguments(config), extra)
    print(
        f"params {stats['params_before']:,} -> {stats['params_after']:,}; FLOPs {stats['flops_before'] / 1e6:.1f} M"
        f" -> {stats['flops_after'] / 1e6:.1f} M; top-1 {stats['top1_before']:.1f} -> {stats['top1_after']:.1f}"
    )
    paths = [out, out.with_suffix(".json")]
    if isinstance(model, EfficientViT):  # the designer's per-stage view, beside the released M0-M5 settings
        title = f"{name}, {budget.label}: kept per stage (median over blocks)"
        paths.append(pe.plot_stage_settings(pe.stage_settings(table), out.with_name(f"{run_name}_stages.png"), title))
    print(f"written to {', '.join(map(str, paths))}; pruned model: {save}")
    return PruneResult(table, stats, save, paths)


def show(config: PruneConfig) -> None:
    result = run(config)
    columns = ["block", "stage", "in_width", "heads", "qk_ratio", "v_ratio", "ffn_ratio"]
    columns += [f"{kind}_kept_fraction" for kind in KINDS]
    print(result.table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if result.table["model"].iloc[0].startswith("efficientvit"):
        stages = pe.stage_settings(result.table)
        print(
            f"per stage (released M0-M5: {pe.RELEASED}):\n{stages.to_string(index=False, float_format='{:.2f}'.format)}"
        )
    effects = paired_effects(result.table)
    print(
        f"kept fraction, Q/K minus FFN: {effects['qk_minus_ffn']:+.1f} points (paper's Swin-T -36); "
        f"V minus Q/K: {effects['v_minus_qk']:+.1f} points (paper's Swin-T +60)"
    )


def parse_args(argv: list[str] | None = None) -> PruneConfig:
    return parse_config(PruneConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("taylor_pruning", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
