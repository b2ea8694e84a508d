"""Fig. 5's controls: the same scores ranked under other choices, each a hypothesis for why a Fig. 5 reads
differently from the paper's, measured on the masked model.

  depth       the ranking may never reach the depth at which Q/K compete with FFN units: the kept fraction of
              each kind at global ratios from 0.2 to 0.8, at the ratio whose cut costs the paper's 2.6 points of
              top-1 before any fine-tuning (interpolated between the measured ratios, then measured), and the
              ratio at which Q/K first lose a channel
  per-flop    the paper prunes "under a resource constraint": each candidate's score over its multiply-adds
  per-head    a Q/K or V candidate valued at the mean over heads of the k-th smallest scores hides a low tail: here
              every head's channels are ranked on their own, competing with FFN units one by one (heads then keep
              different widths: measured on the masked model, no rebuild)
  criterion   each control under the pipeline's criterion and under Molchanov's (the paper's)

All at the same budget (`--ratio` of the prunable channels, but the depth control's), from one scoring pass, one
shot (no fine-tuning between rounds): rows comparable with each other and with the `one-shot` row, not with an
iterative pruning. A removed filter is zeroed (`taylor_pruning.removed`), which is what the pruned model computes.

Writes results/pruning_controls/<run>.csv: one row per control, criterion, ratio and block, with the Q/K, V and FFN
channels before and kept (the per-block columns of taylor_pruning.py's table, `paired_effects` reads them), the
masked model's top-1 on `--eval-images` validation images, the unpruned model's, and `qk_first_cut` (the share of
the channels cut when Q/K first lose one, under that ranking).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis import taylor_pruning as tp
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.sources import fixed_subset, open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device

PAPER_COST = 2.6  # points of top-1 the paper's Swin-T pruning cost before fine-tuning (79.1 -> 76.5)
CONTROLS = ("one-shot", "depth", "depth at the paper's cost", "per-flop", "per-head")


@dataclass
class ControlsConfig:
    data: str = knob(help="fashion-mnist, or an ImageFolder root with train/ (scores) and val/ (top-1)")
    checkpoint: str = knob(help="the trained model: a file or a pretrained name (as taylor_pruning.py takes)")
    model: str | None = knob(None, "deit_tiny, swin_tiny, ... (not needed for checkpoints of this project)")
    ratio: float = knob(0.4, "the budget of every control but depth: fraction of the prunable channels")
    ratios: list[float] = knob([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "the depth control's global ratios")
    cost: float = knob(PAPER_COST, "points of top-1 the depth control's last ratio costs before fine-tuning")
    criteria: list[str] = knob(
        ["molchanov", "output", "output-signed"],
        "criteria each control runs under (taylor_pruning.CRITERIA): the paper's, its output term alone (no double "
        "count of a filter's two sides), the signed first-order estimate",
    )
    batches: int = knob(10, "training batches the filters are scored on")
    batch: int = knob(32, "images per scoring batch")
    eval_images: int = knob(2000, "validation images of the top-1")
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(0, "data loading processes for the scoring batches")
    run: str | None = knob(None, "run name (default: the checkpoint's)")
    out_dir: Path = knob(Path("results/pruning_controls"), "CSV folder")


def as_filters(chosen: dict) -> list[tuple[int, str, int | None, int]]:
    """`taylor_pruning.choose`'s answer as the filters it removes: (layer index, kind, head, channel)."""
    filters = []
    for (i, kind), indices in chosen.items():
        if kind == "ffn":
            filters += [(i, kind, None, unit) for unit in indices]
        else:
            filters += [(i, kind, head, c) for head, channels in enumerate(indices) for c in channels]
    return filters


def per_head_order(layers: list, scores: list[dict]):
    """The per-head control's global ranking: every head's Q/K and V channels and every FFN unit as a candidate of
    its own, lowest score first, as the filters it removes (layer index, kind, head, channel), every head keeping at
    least one channel of each kind."""
    ranked = []
    for i, layer_scores in enumerate(scores):
        for kind, values in layer_scores.items():
            if values.ndim == 1:
                ranked += [(float(v), i, kind, None, u) for u, v in enumerate(values.tolist())]
            else:
                ranked += [
                    (float(v), i, kind, h, c) for h, row in enumerate(values.tolist()) for c, v in enumerate(row)
                ]
    remaining = {
        (i, kind, head): width
        for i, layer in enumerate(layers)
        for kind, width in layer.widths().items()
        for head in ([None] if kind == "ffn" else range(layer.heads))
    }
    for _, i, kind, head, channel in sorted(
        ranked, key=lambda r: (r[0], r[1], r[2], -1 if r[3] is None else r[3], r[4])
    ):
        if remaining[(i, kind, head)] > 1:
            remaining[(i, kind, head)] -= 1
            yield i, kind, head, channel


def filter_channels(layers: list, i: int, kind: str) -> float:
    """Channels one head's filter holds (2 for Q/K: its Q and K rows), or one FFN unit's (1)."""
    return 1 if kind == "ffn" else layers[i].channels(kind) / layers[i].heads


def choose_per_head(layers: list, scores: list[dict], amount: float) -> list[tuple]:
    """The per-head ranking's filters until `amount` channels are cut."""
    filters, removed = [], 0.0
    for i, kind, head, channel in per_head_order(layers, scores):
        if removed >= amount:
            break
        filters.append((i, kind, head, channel))
        removed += filter_channels(layers, i, kind)
    return filters


def first_qk_cut(layers: list, removals) -> float:
    """The share of the prunable channels a ranking has cut when it first cuts a Q/K channel; `removals` are its
    removals in order, each (kind, the channels it holds)."""
    total, removed = total_channels(layers), 0.0
    for kind, channels in removals:
        if kind == "qk":
            return removed / total
        removed += channels
    return 1.0


def equal_cut_removals(layers: list, scores: list[dict], rank_by: str):
    """The pipeline's ranking (a channel of every head at once) as (kind, channels) in order."""
    return ((kind, layers[i].channels(kind)) for i, kind, _ in tp.removal_order(layers, scores, rank_by))


def per_head_removals(layers: list, scores: list[dict]):
    """The per-head ranking as (kind, channels) in order."""
    return ((kind, filter_channels(layers, i, kind)) for i, kind, _, _ in per_head_order(layers, scores))


def total_channels(layers: list) -> float:
    return sum(layer.channels(kind) * width for layer in layers for kind, width in layer.widths().items())


def kept_per_block(layers: list, filters: list[tuple]) -> pd.DataFrame:
    """Per block, each kind's channels before and kept (summed over heads and FFN layers), as block_table's."""
    cut: dict[tuple[int, str], int] = {}
    for i, kind, _, _ in filters:
        cut[(i, kind)] = cut.get((i, kind), 0) + 1
    before = [layer.widths() for layer in layers]
    after = []
    for i, layer in enumerate(layers):
        heads = 1 if layer.kind == "F" else layer.heads
        # a head's filters cut unequally: the block's kept channels are what the heads keep between them
        after.append({kind: width - cut.get((i, kind), 0) / heads for kind, width in layer.widths().items()})
    return tp.block_table(layers, before, after)


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch)))
    return 100 * correct / len(labels)


def interpolate_ratio(curve: pd.DataFrame, cost: float) -> float | None:
    """The ratio at which top-1 has dropped by `cost` points, linearly between the measured ratios (None when no
    measured ratio costs that much)."""
    drop = (curve["top1_before"] - curve["top1"]).to_numpy()
    ratios = curve["ratio"].to_numpy()
    above = np.nonzero(drop >= cost)[0]
    if not len(above):
        return None
    j = above[0]
    if j == 0:
        return float(ratios[0])
    return float(np.interp(cost, [drop[j - 1], drop[j]], [ratios[j - 1], ratios[j]]))


def run_controls(
    model: nn.Module, layers: list, moments: list[dict], held: tuple, config: ControlsConfig
) -> pd.DataFrame:
    """Every control under every criterion: the per-block kept channels and the masked model's top-1."""
    images, labels = held
    base = top1(model, images, labels)
    total = total_channels(layers)
    rows = []

    def measure(control: str, criterion: str, ratio: float, filters: list, first_cut: float) -> pd.DataFrame:
        with tp.removed(layers, filters):
            accuracy = top1(model, images, labels)
        table = kept_per_block(layers, filters)
        extra = dict(control=control, criterion=criterion, ratio=ratio, top1=accuracy, top1_before=base)
        rows.append(table.assign(**extra, qk_first_cut=first_cut))
        return rows[-1]

    for criterion in config.criteria:
        scores = tp.criterion_scores(layers, moments, criterion)
        first = first_qk_cut(layers, equal_cut_removals(layers, scores, "importance"))

        def equal_cut(ratio: float, scores: list[dict] = scores) -> list[tuple]:  # the pipeline's rule
            return as_filters(tp.choose(layers, scores, "channels", ratio * total, "importance"))

        measure("one-shot", criterion, config.ratio, equal_cut(config.ratio), first)
        per_flop = tp.choose(layers, scores, "channels", config.ratio * total, "importance-per-flop")
        measure(
            "per-flop",
            criterion,
            config.ratio,
            as_filters(per_flop),
            first_qk_cut(layers, equal_cut_removals(layers, scores, "importance-per-flop")),
        )
        per_head = choose_per_head(layers, scores, config.ratio * total)
        measure("per-head", criterion, config.ratio, per_head, first_qk_cut(layers, per_head_removals(layers, scores)))
        curve = pd.concat(
            [measure("depth", criterion, ratio, equal_cut(ratio), first).iloc[:1] for ratio in config.ratios]
        )
        at_cost = interpolate_ratio(curve, config.cost)
        if at_cost is not None:
            measure("depth at the paper's cost", criterion, at_cost, equal_cut(at_cost), first)
    return pd.concat(rows, ignore_index=True)


def held_images(config: ControlsConfig, model: nn.Module, classes: list[str], device: torch.device) -> tuple:
    val = open_split(config.data, "val", model.img_size[0], classes=classes, pretrained_cfg=model.pretrained_cfg)
    subset = fixed_subset(val, config.eval_images)
    pairs = [subset[i] for i in range(len(subset))]
    return torch.stack([x for x, _ in pairs]).to(device), torch.tensor([y for _, y in pairs]).to(device)


def check(config: ControlsConfig) -> None:
    if not 0 < config.ratio < 1 or not config.ratios or not all(0 < r < 1 for r in config.ratios):
        raise UserError("--ratio and every --ratios must lie within (0, 1)")
    unknown = [c for c in config.criteria if c not in tp.CRITERIA]
    if unknown:
        raise UserError(f"unknown criterion {unknown[0]!r}: choose from {', '.join(tp.CRITERIA)}")


def run(config: ControlsConfig) -> pd.DataFrame:
    """Score the model once, run every control, write the table."""
    check(config)
    device = resolve_device(config.device)
    classes = open_split(config.data, "train", config.img_size or 224).classes
    model = tp.model_to_prune(config.model, config.checkpoint, len(classes), config.img_size).to(device).eval()
    scoring = tp.PruneConfig(data=config.data, batches=config.batches, batch=config.batch, workers=config.workers)
    train_loader, _ = tp.data_loaders(scoring, model.img_size[0], classes, model.pretrained_cfg)
    layers = tp.model_layers(model)
    moments = tp.term_moments(model, layers, train_loader, config.batches, device)
    table = run_controls(model, layers, moments, held_images(config, model, classes, device), config)
    table.insert(0, "model", model.spec.name)
    name = config.run or Path(config.checkpoint).parent.name or model.spec.name
    write_results(table, config.out_dir / f"{name}.csv", config_arguments(config))
    return table


def show(config: ControlsConfig) -> None:
    table = run(config)
    rows = []
    for (control, criterion, ratio), group in table.groupby(["control", "criterion", "ratio"], sort=False):
        effects = tp.paired_effects(group)
        rows.append(
            {"control": control, "criterion": criterion, "ratio": round(ratio, 3), "top1": group["top1"].iloc[0]}
            | {k: round(effects[k], 3) for k in ("qk_kept_fraction", "v_kept_fraction", "ffn_kept_fraction")}
            | {k: round(effects[k], 1) for k in ("qk_minus_ffn", "v_minus_qk")}
        )
    print(pd.DataFrame(rows).to_string(index=False))


def parse_args(argv: list[str] | None = None) -> ControlsConfig:
    return parse_config(ControlsConfig, argv, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("pruning_controls", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
