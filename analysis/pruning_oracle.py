"""Fig. 5's criterion checked against what it estimates: the change of the loss when a filter is removed (the oracle).

Molchanov et al. (CVPR 2019) validate their Taylor criterion against an oracle, the squared change of the loss when
each filter is removed, by rank correlation (above 0.93 on ImageNet CNNs). This does the same on a trained DeiT, Swin
or EfficientViT model, for every criterion of `analysis/taylor_pruning.py` (CRITERIA), and measures how reliable
the oracle itself is.

Units. Single filters (a Q/K channel of one head: its Q and K rows; a V channel: its V row and the projection's
column; an FFN unit: fc1's row and fc2's column), a seeded sample of `--filters` per kind and block (all of them
when there are fewer); and groups: each kind of each block cut into groups of `--group` of its filters, at random
(seeded), so that the groups cover every filter. Random, not in any criterion's order: groups sorted by one
criterion spread that criterion's sums and squeeze every other's, and the comparison would favour it. A group's
loss change is large enough to measure reliably where one filter's is not (the oracle's reliability, below, says
which unit to read), and pooled over the kinds it asks what a global ranking needs: whether the criterion puts a
block's Q/K, V and FFN filters on the scale of the harm their removal does.

The oracle. A unit's parameters are zeroed (`PrunableLayer.filter_slices`: what pruning it leaves the model
computing), and the mean cross-entropy on a fixed, seeded draw of `--images` held-out images (the validation split)
is compared with the unmasked model's: the signed change (the harm its removal does: positive when the loss rises)
and its square (Molchanov's oracle, which ranks by the size of the change whatever its sign). The images are split
in two halves (even and odd draws) and each half gives its own oracle: the split-half reliability of an oracle is
the Spearman correlation of its two halves over the units, and a criterion cannot track an oracle better than the
oracle tracks itself. DeiT and Swin are evaluated from the block that holds the unit onwards (the earlier blocks'
outputs are kept): the same numbers as a whole forward pass, in half the time.

The criteria are scored on `--batches` training batches, as pruning scores them; a group's score is the sum of its
filters'. Tables (results/pruning_oracle/<run>_units.csv, one row per unit; <run>.csv, the summary):
  rho per criterion, oracle (signed, squared), unit (filter, group) and kind (qk, v, ffn, and `pooled`: all kinds
  in one ranking, what a global ranking needs); the oracles' split-half reliability in the same rows;
and <run>_cuts.csv: what each oracle and each criterion would cut per kind at `--ratio` of the prunable channels,
ranking the groups by value per filter (least harmful first), as the global ranking does: kept fraction per kind;
and what that whole cut does when its groups are removed together (the loss change and top-1 drop measured, beside
the sum of its groups' single changes): a ranking of single removals is only as good as removals add up.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from tqdm import tqdm

from analysis import taylor_pruning as tp
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.sources import fixed_subset, open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.models import model_family
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device

ORACLES = ("signed", "squared")
POOLED = "pooled"
RELIABLE = 0.7  # an oracle whose two halves of the images rank the units alike at least this well is read


@dataclass
class OracleConfig:
    data: str = knob(help="fashion-mnist, or an ImageFolder root with train/ (scores) and val/ (the oracle's images)")
    checkpoint: str = knob(help="the trained model: a file or a pretrained name (as taylor_pruning.py takes)")
    model: str | None = knob(None, "deit_tiny, swin_tiny, ... (not needed for checkpoints of this project)")
    images: int = knob(2000, "held-out images the oracle's loss is measured on (two halves of these)")
    filters: int = knob(8, "single filters sampled per kind and block (0: groups only)")
    group: float = knob(0.1, "a group's share of its kind's filters in a block (0: single filters only)")
    batches: int = knob(10, "training batches the criteria are scored on")
    batch: int = knob(32, "images per scoring batch")
    ratio: float = knob(0.4, "the budget at which each ranking's cuts are compared (fraction of the channels)")
    seed: int = knob(0, "seed of the image draw and of the filter sample")
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(0, "data loading processes for the scoring batches")
    run: str | None = knob(None, "run name (default: the checkpoint's)")
    out_dir: Path = knob(Path("results/pruning_oracle"), "CSV folder")


@dataclass
class OracleResult:
    units: pd.DataFrame  # one row per unit: its criteria, its oracle on each half
    summary: pd.DataFrame  # rho per criterion, oracle, unit kind; the oracles' reliability
    cuts: pd.DataFrame  # kept fraction per kind under each ranking at the ratio
    paths: list[Path]


# -- evaluating the masked model ------------------------------------------------------------------------------


def chain(model: nn.Module) -> list[nn.Module] | None:
    """The model after its stem as a chain of modules, each fed the previous one's output, before `model.norm` and
    `model.forward_head`: DeiT's layers, Swin's stages' downsampling and layers. None for other families, which
    are evaluated whole."""
    family = model_family(model.spec.name)
    if family == "deit":
        return list(model.layers)
    if family == "swin":
        return [module for stage in model.stages for module in (stage.downsample, *stage.layers)]
    return None


class HeldOut:
    """The held-out images, the unmasked model's loss on each, and (DeiT, Swin) every chain module's input on them,
    so a unit's masked loss is computed from its own block onwards."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250):
        self.model, self.labels = model, labels
        self.batches = list(zip(images.split(batch), labels.split(batch)))
        self.chain = chain(model)
        self.inputs: list[list[torch.Tensor]] = []  # [batch][chain position]
        if self.chain is not None:
            hooks = [m.register_forward_pre_hook(self.keep_input) for m in self.chain]
            try:
                self.base = self.losses(None)
            finally:
                for hook in hooks:
                    hook.remove()
        else:
            self.base = self.losses(None)

    def keep_input(self, module, args):
        if len(self.inputs) == 0 or len(self.inputs[-1]) == len(self.chain):
            self.inputs.append([])
        self.inputs[-1].append(args[0].detach())

    @torch.no_grad()
    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image's cross-entropy and whether it is classified right, the model run whole."""
        losses, correct = [], []
        for x, y in self.batches:
            logits = self.model(x)
            losses.append(F.cross_entropy(logits.double(), y, reduction="none"))
            correct.append(logits.argmax(1) == y)
        return torch.cat(losses), torch.cat(correct)

    @torch.no_grad()
    def losses(self, start: nn.Module | None) -> torch.Tensor:
        """Every image's cross-entropy, the model run whole (start None, or without a chain) or from `start` on."""
        position = (
            None if start is None or self.chain is None else next(i for i, m in enumerate(self.chain) if m is start)
        )
        out = []
        for b, (x, y) in enumerate(self.batches):
            if position is None:
                logits = self.model(x)
            else:
                h = self.inputs[b][position]
                for module in self.chain[position:]:
                    h = module(h)
                logits = self.model.forward_head(self.model.norm(h))
            out.append(F.cross_entropy(logits.double(), y, reduction="none"))
        return torch.cat(out)


def start_module(layer, model: nn.Module) -> nn.Module | None:
    """The chain module a layer's masked loss is computed from: the layer itself (DeiT, Swin)."""
    return layer.module if chain(model) is not None else None


# -- units and their values -----------------------------------------------------------------------------------


def filters_of(layer, kind: str) -> list[tuple[int | None, int]]:
    """Every filter of a kind in a layer, as (head, channel); head None for FFN units."""
    width = layer.widths()[kind]
    return (
        [(None, u) for u in range(width)]
        if kind == "ffn"
        else [(h, c) for h in range(layer.heads) for c in range(width)]
    )


def filter_value(scores: torch.Tensor, head: int | None, channel: int) -> float:
    return float(scores[channel] if head is None else scores[head, channel])


def make_units(layers: list, scores: dict[str, list], config: OracleConfig) -> list[dict]:
    """The single filters (a seeded sample per kind and block) and the groups (a seeded random partition of each
    kind in each block), each with the layer it is in, its members and its criteria (a group's: the sum of its
    members')."""
    rng = np.random.default_rng(config.seed)
    units = []
    for i, layer in enumerate(layers):
        for kind in layer.widths():
            members = filters_of(layer, kind)
            where = {"layer": i, "block": layer.block, "stage": layer.stage, "kind": kind}
            chosen = rng.permutation(len(members))[: config.filters] if config.filters else []
            units += [{**where, "unit": "filter", "members": [members[j]]} for j in sorted(chosen)]
            if config.group:
                shuffled = rng.permutation(len(members))
                count = min(len(members), max(1, round(1 / config.group)))
                units += [
                    {**where, "unit": "group", "members": [members[j] for j in sorted(part)]}
                    for part in np.array_split(shuffled, count)
                ]
    for unit in units:
        for name, values in scores.items():
            unit[name] = sum(filter_value(values[unit["layer"]][unit["kind"]], *m) for m in unit["members"])
    return units


def measure_units(units: list[dict], layers: list, model: nn.Module, held: HeldOut) -> None:
    """Each unit's oracle: its filters zeroed, the change of the mean loss on each half of the images and on all."""
    halves = torch.arange(len(held.base)) % 2
    for unit in tqdm(units, desc="oracle", unit="unit", leave=False):
        layer = layers[unit["layer"]]
        filters = [(unit["layer"], unit["kind"], head, channel) for head, channel in unit["members"]]
        with tp.removed(layers, filters):
            change = held.losses(start_module(layer, model)) - held.base
        unit["delta_a"] = float(change[halves == 0].mean())
        unit["delta_b"] = float(change[halves == 1].mean())
        unit["delta"] = float(change.mean())


# -- the tables -----------------------------------------------------------------------------------------------


def spearman(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def oracle_values(frame: pd.DataFrame, oracle: str, half: str = "") -> pd.Series:
    """The signed change, or its square (Molchanov's oracle), on one half (a, b) or on all images."""
    delta = frame[f"delta{half and '_' + half}"]
    return delta if oracle == "signed" else delta**2


def summarize(units: pd.DataFrame) -> pd.DataFrame:
    """Per unit kind (filter, group) and kind (and pooled): for every criterion and both oracles, Spearman's rho;
    for both oracles, their split-half reliability."""
    rows = []
    for unit, of_unit in units.groupby("unit"):
        for kind, frame in [*of_unit.groupby("kind"), (POOLED, of_unit)]:
            for oracle in ORACLES:
                base = {"unit": unit, "kind": kind, "oracle": oracle, "n": len(frame)}
                reliability = spearman(oracle_values(frame, oracle, "a"), oracle_values(frame, oracle, "b"))
                rows.append({**base, "criterion": "split-half reliability", "rho": reliability})
                for criterion in tp.CRITERIA:
                    rows.append(
                        {
                            **base,
                            "criterion": criterion,
                            "rho": spearman(frame[criterion], oracle_values(frame, oracle)),
                        }
                    )
    return pd.DataFrame(rows)


def reliable_unit(summary: pd.DataFrame, oracle: str = "signed") -> str | None:
    """The unit (filter or group) a criterion is judged on against `oracle`: single filters where their pooled
    split-half reliability reaches RELIABLE, else groups where theirs does, else None (neither is reliable)."""
    pooled = summary[
        (summary["kind"] == POOLED) & (summary["oracle"] == oracle) & (summary["criterion"] == "split-half reliability")
    ].set_index("unit")["rho"]
    return next((unit for unit in ("filter", "group") if pooled.get(unit, float("nan")) >= RELIABLE), None)


def best_criterion(summary: pd.DataFrame, unit: str, oracle: str = "signed") -> tuple[str, float] | None:
    """The criterion whose scores rank `unit`s most like `oracle` pooled over the kinds (the highest rho), and that
    rho; None when no criterion has one (a NaN rho never wins)."""
    rows = summary[
        (summary["kind"] == POOLED)
        & (summary["oracle"] == oracle)
        & (summary["unit"] == unit)
        & summary["criterion"].isin(list(tp.CRITERIA))
    ].dropna(subset=["rho"])
    if rows.empty:
        return None
    best = rows.loc[rows["rho"].idxmax()]
    return str(best["criterion"]), float(best["rho"])


def ranked_groups(units: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """The groups, with their filters and channels, and every ranking's value per group: each oracle's and each
    criterion's."""
    groups = units[units["unit"] == "group"].copy()
    per_filter = {kind: (2 if kind == "qk" else 1) for kind in tp.KINDS}  # channels of one head's filter
    groups["filters"] = groups["members"].map(len)
    groups["channels"] = groups["filters"] * groups["kind"].map(per_filter)
    rankings = {f"oracle, {oracle}": oracle_values(groups, oracle) for oracle in ORACLES}
    rankings |= {f"criterion: {name}": groups[name] for name in tp.CRITERIA}
    return groups, rankings


def cut_by(groups: pd.DataFrame, values: pd.Series, ratio: float) -> list:
    """The groups a ranking cuts at `ratio` of the channels: by value per filter (least important, or least
    harmful, first), until the budget, every kind of every block keeping one group (as pruning keeps every head
    runnable); their index labels."""
    order = groups.assign(value=values / groups["filters"]).sort_values("value", kind="stable")
    left = order.groupby(["layer", "kind"]).size().to_dict()
    chosen, removed, budget = [], 0, ratio * groups["channels"].sum()
    for label, group in zip(order.index, order.itertuples()):
        if removed >= budget:
            break
        if left[(group.layer, group.kind)] > 1:
            left[(group.layer, group.kind)] -= 1
            chosen.append(label)
            removed += group.channels
    return chosen


def cuts(units: pd.DataFrame, ratio: float, joint: dict[str, dict] | None = None) -> pd.DataFrame:
    """What each ranking would cut at `ratio` of the prunable channels (`cut_by`): the kept fraction of each kind,
    the loss change its groups predict when their single changes are added up, and (`joint`, per ranking) what the
    whole cut does to the model when measured: its loss change and top-1 drop."""
    groups, rankings = ranked_groups(units)
    if groups.empty:
        return pd.DataFrame(columns=["ranking", "kind", "kept_fraction"])
    totals = groups.groupby("kind")["channels"].sum()
    rows = []
    for ranking, values in rankings.items():
        cut = groups.loc[cut_by(groups, values, ratio)]
        measured = (joint or {}).get(ranking, {})
        for kind, total in totals.items():
            kept = 1 - cut.loc[cut["kind"] == kind, "channels"].sum() / total
            rows.append(
                {"ranking": ranking, "kind": kind, "kept_fraction": kept, "added_loss_change": cut["delta"].sum()}
                | measured
            )
    return pd.DataFrame(rows)


def joint_changes(units: pd.DataFrame, ratio: float, layers: list, held: HeldOut) -> dict[str, dict]:
    """Each ranking's whole cut removed at once: the change of the mean loss and the top-1 drop, in points, on the
    held-out images. Beside the sum of its groups' single changes it says whether removals add up."""
    groups, rankings = ranked_groups(units)
    base_loss, base_correct = held.whole()
    found = {}
    for ranking, values in rankings.items():
        filters = [
            (group.layer, group.kind, head, channel)
            for group in groups.loc[cut_by(groups, values, ratio)].itertuples()
            for head, channel in group.members
        ]
        with tp.removed(layers, filters):
            loss, correct = held.whole()
        found[ranking] = {
            "joint_loss_change": float((loss - base_loss).mean()),
            "top1_drop": float(100 * (base_correct.double().mean() - correct.double().mean())),
        }
    return found


# -- the whole check ------------------------------------------------------------------------------------------


def held_out(config: OracleConfig, model: nn.Module, classes: list[str], device: torch.device):
    """The fixed draw of held-out images, as tensors on the device."""
    val = open_split(config.data, "val", model.img_size[0], classes=classes, pretrained_cfg=model.pretrained_cfg)
    if len(val) < 2:
        raise UserError(f"the validation split of {config.data} has {len(val)} images: the oracle needs two halves")
    subset = fixed_subset(val, config.images, seed=config.seed)
    pairs = [subset[i] for i in range(len(subset))]
    return torch.stack([x for x, _ in pairs]).to(device), torch.tensor([y for _, y in pairs]).to(device)


def check(config: OracleConfig) -> None:
    if config.images < 2 or config.batches < 1 or config.filters < 0 or not 0 <= config.group < 1:
        raise UserError("--images must be at least 2, --batches 1, --filters 0 or more and --group within [0, 1)")
    if not config.filters and not config.group:
        raise UserError("measure single filters (--filters N) or groups (--group FRACTION), or both")
    if not 0 < config.ratio < 1:
        raise UserError(f"--ratio must be within (0, 1), got {config.ratio}")


def run(config: OracleConfig) -> OracleResult:
    """Score every filter under every criterion, measure the units' oracle, and write the three tables."""
    check(config)
    device = resolve_device(config.device)
    classes = open_split(config.data, "train", config.img_size or 224).classes
    model = tp.model_to_prune(config.model, config.checkpoint, len(classes), config.img_size).to(device).eval()
    prune_config = tp.PruneConfig(
        data=config.data, batches=config.batches, batch=config.batch, workers=config.workers, ratio=config.ratio
    )
    train_loader, _ = tp.data_loaders(prune_config, model.img_size[0], classes, model.pretrained_cfg)
    layers = tp.model_layers(model)
    moments = tp.term_moments(model, layers, train_loader, config.batches, device)
    scores = {name: tp.criterion_scores(layers, moments, name) for name in tp.CRITERIA}
    units = make_units(layers, scores, config)
    images, labels = held_out(config, model, classes, device)
    held = HeldOut(model, images, labels)
    measure_units(units, layers, model, held)
    frame = pd.DataFrame(units).assign(model=model.spec.name)
    joint = joint_changes(frame, config.ratio, layers, held) if config.group else None
    table, cut = summarize(frame), cuts(frame, config.ratio, joint)
    name = config.run or f"{Path(config.checkpoint).parent.name or model.spec.name}"
    arguments = config_arguments(config)
    written = frame.assign(members=frame["members"].map(lambda m: " ".join(f"{h}:{c}" for h, c in m)))
    paths = [
        write_results(table, config.out_dir / f"{name}.csv", arguments),
        write_results(written, config.out_dir / f"{name}_units.csv", arguments),
        write_results(cut, config.out_dir / f"{name}_cuts.csv", arguments),
    ]
    return OracleResult(frame, table, cut, paths)


def show(config: OracleConfig) -> None:
    result = run(config)
    wide = result.summary.pivot_table(index=["unit", "criterion"], columns=["oracle", "kind"], values="rho")
    print(wide.round(2).to_string())
    print(result.cuts.pivot_table(index="ranking", columns="kind", values="kept_fraction").round(2).to_string())
    measured = [c for c in ("added_loss_change", "joint_loss_change", "top1_drop") if c in result.cuts]
    print(result.cuts.groupby("ranking", sort=False)[measured].first().round(4).to_string())
    unit = reliable_unit(result.summary)
    best = best_criterion(result.summary, unit) if unit else None
    if best is None:
        print(f"no unit's signed oracle reaches a split-half reliability of {RELIABLE}: measure more --images")
    else:
        print(f"the best predictor of the harm of a removal ({unit}s, pooled): {best[0]} (rho {best[1]:.2f})")
    print(f"written to {', '.join(map(str, result.paths))}")


def parse_args(argv: list[str] | None = None) -> OracleConfig:
    return parse_config(OracleConfig, argv, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    return exit_status("pruning_oracle", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
