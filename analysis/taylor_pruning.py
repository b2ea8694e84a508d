"""Figure 5: which channels Taylor structured pruning keeps in each block of a DeiT or Swin model.

The paper prunes Swin-T with Taylor structured pruning (Molchanov et al., CVPR 2019) and plots, per block, the
kept Q/K, V and FFN widths relative to the block's input width: Q/K and FFN are cut hard, V is kept until the last
blocks. That is the evidence for EfficientViT's parameter reallocation (QK dim 16, V = input width, FFN ratio 2).

Channel groups, pruned independently, with the same head dim kept by every head of a block:
  qk   channel c of Q and of K in every head (Q and K must keep equal widths: the logits are their dot product)
  v    channel c of V in every head, and the matching input column of the output projection
  ffn  hidden unit u of an FFN: row u of fc1 and column u of fc2

Importance: Molchanov et al.'s first-order Taylor criterion for a group S of parameters (their Eq. 8), the
squared first-order change of the loss when the group is removed, averaged over --batches batches of the
training split:
  I(S) = mean over batches b of ( sum_{s in S} w_s * dL_b/dw_s )^2
for a filter S: every weight and bias entry one channel owns (an FFN unit: its fc1 row and fc2 column; a Q/K
channel of one head: its rows of Q and K; a V channel: its row of V and the projection's input column). A group
that ties a channel index across heads scores the mean of its filters. A test checks the scores against finite
differences of the loss in float64.

Global ranking under a resource budget, as Molchanov et al.: all groups of all blocks are ranked together by
importance, and the lowest are removed until the budget is met (--ratio of the prunable channels, --target-flops,
or --target-speedup as a FLOPs reduction); every group kind keeps at least one channel per layer. `--rank-by
importance-per-flop` divides each score by the multiply-adds the group costs (not in the paper: it shifts the
cuts towards expensive layers). --iterative N prunes in N rounds, rescoring in between. torch-pruning does the
surgery (its layer pruners); its importance classes compute a different score (an unsquared |w * g| sum).

Output: results/taylor_pruning/<run>.csv (one row per block) + .json (params, FLOPs, accuracy before/after), and
the pruned model as a checkpoint of ours that rebuilds itself (runs/pruned/<run>.pth by default).
Example: python analysis/taylor_pruning.py --model swin_tiny --checkpoint swin.pth --data data/synth --ratio 0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import efficientvit
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import check_bad_images, collate
from efficientvit.data.sources import open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.evaluation import evaluate
from efficientvit.flops import count_flops, count_params
from efficientvit.models import ModelSpec
from efficientvit.models.attention import TokenAttention
from efficientvit.models.layers import FFNLayer
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device
from efficientvit.train import train as train_model
from efficientvit.train_config import load_config

KINDS = ("qk", "v", "ffn")
RANKINGS = ("importance", "importance-per-flop")


@dataclass
class Layer:
    """One A or F layer of the model, with what its channels cost per image."""

    module: nn.Module
    kind: str  # "A" or "F"
    stage: int
    width: int  # the layer's input (residual) width
    tokens: int  # tokens per image
    keys: int  # keys each query attends to (window size for Swin)


def model_layers(model: nn.Module) -> list[Layer]:
    layers = []
    if hasattr(model, "stages") and all(hasattr(stage, "layers") for stage in model.stages):  # Swin
        for info, stage in zip(model.stage_info, model.stages):
            tokens = info["resolution"][0] * info["resolution"][1]
            keys = info["window"][0] * info["window"][1]
            for layer in stage.layers:
                kind = "F" if isinstance(layer, FFNLayer) else "A"
                layers.append(Layer(layer, kind, info["stage"], info["width"], tokens, keys))
    elif hasattr(model, "layers"):  # DeiT
        tokens = model.grid[0] * model.grid[1] + 1
        for layer in model.layers:
            kind = "F" if isinstance(layer, FFNLayer) else "A"
            layers.append(Layer(layer, kind, 1, model.num_features, tokens, tokens))
    else:
        raise UserError(
            "Taylor pruning here supports DeiT and Swin models (separate q/k/v projections); "
            f"{model.spec.name} is not one"
        )
    for layer in layers:
        if layer.kind == "A" and not hasattr(layer.module.attn, "q"):
            raise UserError(
                "prune a model with attention='full' (every head sees all channels); split and "
                "cascaded heads have no shared Q/K/V channels to rank"
            )
    if not any(layer.kind == "A" for layer in layers):
        raise UserError("the model has no attention layers to prune")
    return layers


def group_costs(layer: Layer) -> dict[str, float]:
    """Multiply-adds per image that one channel group of each kind costs in this layer."""
    T, C, N = layer.tokens, layer.width, layer.keys
    if layer.kind == "F":
        return {"ffn": 2 * T * C}
    heads = layer.module.attn.num_heads
    return {"qk": heads * (2 * T * C + T * N), "v": heads * (2 * T * C + T * N)}


def first_order_terms(layer: Layer) -> dict[str, torch.Tensor]:
    """sum over each filter's parameters of w * dL/dw, from the gradients now in the model: (units,) for FFN
    units, (heads, channels) for the Q/K and V channels of every head."""

    def rows(linear: nn.Linear) -> torch.Tensor:  # output channel r: row r of the weight and bias entry r
        terms = (linear.weight.detach() * linear.weight.grad).sum(dim=1)
        return terms if linear.bias is None else terms + linear.bias.detach() * linear.bias.grad

    def columns(linear: nn.Linear) -> torch.Tensor:  # input channel c: column c of the weight
        return (linear.weight.detach() * linear.weight.grad).sum(dim=0)

    if layer.kind == "F":
        mlp = layer.module.mlp
        return {"ffn": rows(mlp.fc1) + columns(mlp.fc2)}
    attn = layer.module.attn
    per_head = lambda terms: terms.view(attn.num_heads, -1)  # noqa: E731
    return {"qk": per_head(rows(attn.q) + rows(attn.k)), "v": per_head(rows(attn.v) + columns(attn.proj))}


def taylor_scores(
    model: nn.Module,
    layers: list[Layer],
    loader: DataLoader,
    batches: int,
    device: torch.device,
    skip_bad: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Molchanov's importance of every channel group: each filter's squared first-order term, averaged over the
    batches; a group that couples one channel index across heads scores the mean over its heads' filters (as
    torch-pruning's default group reduction), so a group is not worth more for holding more heads."""
    model.eval()
    sums = [{kind: 0.0 for kind in widths(layer)} for layer in layers]
    done = 0
    for x, y, bad in tqdm(loader, total=batches, desc="taylor scores", unit="batch", leave=False):
        check_bad_images(bad, skip_bad)
        if x is None:
            continue
        model.zero_grad()
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for layer, layer_sums in zip(layers, sums):
            for kind, terms in first_order_terms(layer).items():
                layer_sums[kind] = layer_sums[kind] + terms.double().square()
        done += 1
        if done >= batches:
            break
    model.zero_grad()
    if done == 0:
        raise UserError("no images were read from the training split")
    return [
        {kind: (total.mean(dim=0) if total.ndim == 2 else total) / done for kind, total in layer_sums.items()}
        for layer_sums in sums
    ]


def widths(layer: Layer) -> dict[str, int]:
    if layer.kind == "F":
        return {"ffn": layer.module.mlp.fc1.out_features}
    return {"qk": layer.module.attn.qk_dim, "v": layer.module.attn.v_dim}


def channels(layer: Layer, kind: str) -> int:
    """Channels (rows) one group of `kind` holds: every head's for qk (Q and K) and v."""
    if kind == "ffn":
        return 1
    return layer.module.attn.num_heads * (2 if kind == "qk" else 1)


def choose(
    layers: list[Layer], scores: list[dict[str, torch.Tensor]], budget: str, amount: float, rank_by: str = "importance"
) -> dict:
    """Global ranking: the groups to remove, {(layer index, kind): [channel indices]}, until the budget is met.

    budget "channels": remove `amount` prunable channels; "flops": remove `amount` multiply-adds per image.
    rank_by "importance" (Molchanov et al., the paper) or "importance-per-flop" (each score over its group's cost)."""
    candidates = []
    for i, (layer, layer_scores) in enumerate(zip(layers, scores)):
        costs = group_costs(layer)
        for kind, values in layer_scores.items():
            cost = costs[kind] if rank_by == "importance-per-flop" else 1.0
            for index, value in enumerate(values.tolist()):
                candidates.append((value / cost, i, kind, index))
    candidates.sort()
    remaining = {(i, kind): w for i, layer in enumerate(layers) for kind, w in widths(layer).items()}
    chosen, removed = {}, 0.0
    for _, i, kind, index in candidates:
        if removed >= amount:
            break
        if remaining[(i, kind)] <= 1:
            continue  # keep every layer runnable
        remaining[(i, kind)] -= 1
        chosen.setdefault((i, kind), []).append(index)
        removed += group_costs(layers[i])[kind] if budget == "flops" else channels(layers[i], kind)
    return chosen


def prune_layer(layer: Layer, kind: str, indices: list[int]) -> None:
    """Remove channel groups with torch-pruning's layer functions, and record the new widths on the modules."""
    if kind == "ffn":
        mlp = layer.module.mlp
        tp.prune_linear_out_channels(mlp.fc1, indices)
        tp.prune_linear_in_channels(mlp.fc2, indices)
        return
    attn: TokenAttention = layer.module.attn
    width = attn.qk_dim if kind == "qk" else attn.v_dim
    rows = [h * width + c for h in range(attn.num_heads) for c in indices]
    if kind == "qk":
        tp.prune_linear_out_channels(attn.q, rows)
        tp.prune_linear_out_channels(attn.k, rows)
        attn.qk_dim -= len(indices)
    else:
        tp.prune_linear_out_channels(attn.v, rows)
        tp.prune_linear_in_channels(attn.proj, rows)
        attn.v_dim -= len(indices)


def layer_dims(layers: list[Layer]) -> list:
    return [
        widths(layer)["ffn"] if layer.kind == "F" else [widths(layer)["qk"], widths(layer)["v"]] for layer in layers
    ]


def block_table(layers: list[Layer], before: list, after: list) -> pd.DataFrame:
    """One row per block: an attention layer and the FFN layers after it (standard layouts: A then F)."""
    rows, block = [], None
    for layer, b, a in zip(layers, before, after):
        if layer.kind == "A" or block is None:
            block = dict(block=len(rows) + 1, stage=layer.stage, in_width=layer.width, ffn_before=0, ffn_kept=0)
            rows.append(block)
        if layer.kind == "A":
            heads = layer.module.attn.num_heads
            block.update(
                heads=heads, qk_before=b[0] * heads, qk_kept=a[0] * heads, v_before=b[1] * heads, v_kept=a[1] * heads
            )
        else:
            block["ffn_before"] += b
            block["ffn_kept"] += a
    frame = pd.DataFrame(rows)
    for kind in KINDS:
        frame[f"{kind}_ratio"] = frame[f"{kind}_kept"] / frame["in_width"]
    return frame


def separate_qkv_model(name: str | None, checkpoint: str | None, num_classes: int, img_size: int | None):
    """The model to prune, rebuilt with separate q/k/v projections (weights converted)."""
    spec = ModelSpec(name, {"num_classes": num_classes}) if name else None
    overrides = {"img_size": img_size} if img_size else {}
    if checkpoint:
        model = efficientvit.model_from_checkpoint(checkpoint, spec, **overrides)
        spec = model.spec
    elif spec is None:
        raise UserError("give --model, or a --checkpoint of this project (it names its model)")
    if efficientvit.models.model_family(spec.name) not in ("deit", "swin"):
        raise UserError(f"Taylor pruning here supports DeiT and Swin models; {spec.name} is not one")
    if spec.kwargs.get("attention", "full") != "full":
        raise UserError("prune a model with attention='full'; split and cascaded heads share no Q/K/V channels")
    separate = spec.build(fused_qkv=False, **overrides)
    if checkpoint:
        efficientvit.load_checkpoint(separate, model.state_dict())  # fused qkv -> separate q, k, v
    return separate


def parse_budget(args) -> tuple[str, float]:
    chosen = [b for b in ("ratio", "target_flops", "target_speedup") if getattr(args, b) is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one budget: --ratio, --target-flops or --target-speedup")
    if args.ratio is not None and not 0 < args.ratio < 1:
        raise UserError(f"--ratio must be within (0, 1), got {args.ratio}")
    if args.target_speedup is not None and args.target_speedup <= 1:
        raise UserError(f"--target-speedup must be above 1, got {args.target_speedup}")
    return chosen[0], getattr(args, chosen[0])


def parse_flops(text: str) -> float:
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"FLOPs must be a number with an optional K/M/G suffix, got {text!r}"
        ) from None


def prune(
    model: nn.Module,
    train_loader: DataLoader,
    budget: str,
    amount: float,
    steps: int,
    device: torch.device,
    skip_bad: bool = False,
    batches: int = 10,
    rank_by: str = "importance",
) -> tuple[list[Layer], list, list]:
    """Prune `model` in place; returns its layers and their widths before and after."""
    layers = model_layers(model)
    before = layer_dims(layers)
    if budget == "ratio":
        total = sum(channels(layer, kind) * w for layer in layers for kind, w in widths(layer).items())
        kind, goal = "channels", amount * total
    else:
        base = count_flops(model)
        target = amount if budget == "target_flops" else base / amount
        if target >= base:
            raise UserError(f"the model already has {base / 1e6:.1f} M FLOPs, within the target {target / 1e6:.1f} M")
        prunable = sum(group_costs(layer)[k] * w for layer in layers for k, w in widths(layer).items())
        if base - target > prunable - sum(group_costs(layer)[k] for layer in layers for k in widths(layer)):
            raise UserError(
                f"the target {target / 1e6:.1f} M FLOPs cannot be reached by pruning Q/K, V and FFN "
                f"channels (at least {(base - prunable) / 1e6:.1f} M remain)"
            )
        kind, goal = "flops", base - target
    for step in range(steps):
        scores = taylor_scores(model, layers, train_loader, batches, device, skip_bad)
        done = goal * step / steps
        chosen = choose(layers, scores, kind, goal * (step + 1) / steps - done, rank_by)
        for (i, group_kind), indices in chosen.items():
            prune_layer(layers[i], group_kind, indices)
    model.spec = model.spec.with_kwargs(layer_dims=layer_dims(layers))
    return layers, before, layer_dims(layers)


DESCRIPTION = (
    "Taylor structured pruning of a DeiT/Swin model with a global ranking (the paper's Fig. 5): per block, the "
    "Q/K, V and FFN widths kept. Writes results/taylor_pruning/<run>.csv and .json and the pruned checkpoint. "
    "Give exactly one budget: --ratio, --target-flops or --target-speedup."
)


@dataclass
class PruneConfig:
    data: str = knob(help="fashion-mnist, or an ImageFolder root with train/ (scores) and val/ (accuracy)")
    model: str | None = knob(None, "deit_tiny, swin_tiny, ... (not needed for checkpoints of this project)")
    checkpoint: str | None = knob(None, "weights to prune: this project's or timm's")
    ratio: float | None = knob(None, "budget: fraction of the prunable channels to remove, in (0, 1)")
    target_flops: float | None = knob(None, "budget: multiply-adds per image to reach, e.g. 30M", type=parse_flops)
    target_speedup: float | None = knob(None, "budget: FLOPs reduction factor to reach, e.g. 1.5")
    batches: int = knob(10, "batches whose gradients score the channels")
    rank_by: str = knob(
        "importance",
        "importance: Molchanov's global ranking (the paper's); importance-per-flop: each group's score divided "
        "by its multiply-adds",
        choices=RANKINGS,
    )
    batch: int = knob(32, "images per batch")
    iterative: int = knob(1, "prune in STEPS rounds, rescoring after each", metavar="STEPS")
    eval_images: int = knob(2000, "validation images for accuracy")
    finetune_config: str | None = knob(None, "training YAML to fine-tune the pruned model with afterwards")
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(2, "data loading processes")
    skip_bad: bool = knob(False, "skip unreadable images instead of stopping")
    run: str | None = knob(None, "run name (default <model>_<budget>)")
    out_dir: Path = knob(Path("results/taylor_pruning"), "CSV folder")
    save: Path | None = knob(None, "pruned checkpoint (default runs/pruned/<run>.pth)")


def run(config: PruneConfig) -> pd.DataFrame:
    """Prune, save the pruned checkpoint (and fine-tune it if asked), write the per-block table and return it;
    the sidecar holds params, FLOPs and top-1 before and after."""
    budget, amount = parse_budget(config)
    device = resolve_device(config.device)
    classes = open_split(config.data, "train", config.img_size or 224).classes
    model = separate_qkv_model(config.model, config.checkpoint, len(classes), config.img_size).to(device)
    size = model.img_size[0]
    train = open_split(config.data, "train", size)
    val = open_split(config.data, "val", size, classes=classes)
    val = Subset(val, range(min(config.eval_images, len(val))))
    generator = torch.Generator().manual_seed(0)
    train_loader = DataLoader(
        train,
        batch_size=config.batch,
        shuffle=True,
        generator=generator,
        num_workers=config.workers,
        collate_fn=collate,
    )
    val_loader = DataLoader(val, batch_size=64, num_workers=config.workers, collate_fn=collate)
    name = model.spec.name
    stats = {
        "params_before": count_params(model),
        "flops_before": count_flops(model),
        "top1_before": evaluate(model, val_loader, device, config.skip_bad, distributed=False)["top1"],
    }
    layers, before, after = prune(
        model, train_loader, budget, amount, config.iterative, device, config.skip_bad, config.batches, config.rank_by
    )
    stats.update(
        params_after=count_params(model),
        flops_after=count_flops(model),
        top1_after=evaluate(model, val_loader, device, config.skip_bad, distributed=False)["top1"],
    )
    run_name = config.run or f"{name}_{budget}_{amount:g}"
    save = config.save or Path("runs/pruned") / f"{run_name}.pth"
    efficientvit.save_checkpoint(save, model, pruning=stats)
    if config.finetune_config:
        finetune = dataclasses.replace(
            load_config(config.finetune_config), init=str(save), model=name, out=f"{save.with_suffix('')}_finetuned"
        )
        stats["top1_finetuned"] = train_model(finetune)[-1]["val_top1"]
    table = block_table(layers, before, after)
    table.insert(0, "model", name)
    extra = {"pruning": stats, "checkpoint": str(save)}
    out = write_results(table, config.out_dir / f"{run_name}.csv", config_arguments(config), extra)
    print(
        f"params {stats['params_before']:,} -> {stats['params_after']:,}; FLOPs {stats['flops_before'] / 1e6:.1f} M"
        f" -> {stats['flops_after'] / 1e6:.1f} M; top-1 {stats['top1_before']:.1f} -> {stats['top1_after']:.1f}"
    )
    print(f"written to {out}; pruned model: {save}")
    return table


def show(config: PruneConfig) -> None:
    table = run(config)
    columns = ["block", "stage", "in_width", "qk_ratio", "v_ratio", "ffn_ratio"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def parse_args(argv: list[str] | None = None) -> PruneConfig:
    return parse_config(PruneConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("taylor_pruning", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
