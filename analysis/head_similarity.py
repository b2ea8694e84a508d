"""Figure 4: how similar the attention heads of a block are.

The paper (Sec. 3.2, Fig. 4) measures, per block, for each head i the maximum over the other heads j of the
cosine similarity between the heads' features, and plots the average of that maximum over the heads: high values
mean redundant heads. Feeding each head its own channel split (`attention="split"`) lowers it.

Here the features of a head are its attention map (`--feature attention`, N x N per window) or its output
(`--feature output`, N x head_dim per window), read through the models' head taps. The cosine similarity of every
pair of heads is computed per window of every image. Two orders of "average maximum" are kept, per block:
  mean_max_similarity     the paper's caption read plainly, and the plotted value: per image and window, each
                          head's maximum over the other heads, averaged over windows, heads and images; with its
                          standard deviation over images and a 95% confidence half-width (1.96 sd / sqrt(images))
  max_of_mean_similarity  the cosine of each pair averaged over images first, then each head's maximum over the
                          other heads, averaged over heads (lower: a maximum of averages), and `max_max_similarity`
                          the largest such maximum over heads.
Statistics are accumulated in streaming fashion (memory grows only by one number per image), so the result does
not depend on the batch size.

Output: results/head_similarity/<run>_pairwise.csv and <run>_summary.csv, with JSON sidecars.
Example: python analysis/head_similarity.py --model deit_tiny --checkpoint runs/deit/checkpoint.pth --data data/synth
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import efficientvit
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import check_bad_images, collate
from efficientvit.data.sources import open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.models import ModelSpec
from efficientvit.models.attention import CascadedGroupAttention, TokenAttention
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device

FEATURES = {"attention": "attn_tap", "output": "head_tap"}


class PairwiseCosine:
    """Streaming statistics over images of a block's heads x heads cosine similarities: the mean and standard
    deviation of the window-averaged matrix, and each image's mean over heads of the per-window maximum."""

    def __init__(self):
        self.total = self.total_sq = None
        self.images = 0
        self.image_max: list[torch.Tensor] = []

    def update(self, features: torch.Tensor) -> None:
        """features: (images, windows, heads, dim)."""
        unit = F.normalize(features.double(), dim=-1)
        cosine = unit @ unit.transpose(-1, -2)  # (images, windows, heads, heads)
        per_image = cosine.mean(dim=1)
        if self.total is None:
            self.total = torch.zeros(per_image.shape[1:], dtype=torch.float64)
            self.total_sq = torch.zeros_like(self.total)
        self.total += per_image.sum(0).cpu()
        self.total_sq += (per_image**2).sum(0).cpu()
        self.images += per_image.shape[0]
        heads = cosine.shape[-1]
        if heads > 1:
            others = cosine.masked_fill(torch.eye(heads, dtype=torch.bool, device=cosine.device), -torch.inf)
            self.image_max.append(others.amax(dim=-1).mean(dim=(1, 2)).cpu())  # (images,)

    def mean(self) -> torch.Tensor:
        return self.total / self.images

    def std(self) -> torch.Tensor:
        return (self.total_sq / self.images - self.mean() ** 2).clamp(min=0).sqrt()

    def max_per_image(self) -> torch.Tensor:
        """(images,): per image, the mean over heads and windows of each head's maximum similarity to another."""
        return torch.cat(self.image_max) if self.image_max else torch.empty(0, dtype=torch.float64)


def attention_blocks(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    """(name, stage, module) of every attention module, in forward order."""
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, (CascadedGroupAttention, TokenAttention)):
            match = re.search(r"stages\.(\d+)\.", name)
            blocks.append((name, int(match[1]) + 1 if match else 1, module))
    return blocks


def head_similarity(
    model: nn.Module,
    loader: DataLoader,
    feature: str = "attention",
    images: int | None = None,
    device: torch.device | str = "cpu",
    skip_bad: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Head similarity of every attention block of `model` over the images of `loader`: the pairwise table (one row
    per block and pair of heads) and the summary (one row per block, both orders of the average maximum)."""
    blocks = attention_blocks(model)
    if not blocks:
        raise UserError("the model has no attention layers, so there are no heads to compare")
    model = model.to(device).eval()
    stats = [PairwiseCosine() for _ in blocks]
    batch_size = [0]

    def record(index: int):
        def hook(module, inputs, output):
            # the tap sees (batch x windows, heads, ...): regroup the windows of each image
            per_window = output.flatten(2)
            stats[index].update(per_window.view(batch_size[0], -1, *per_window.shape[1:]))

        return hook

    handles = [
        getattr(module, FEATURES[feature]).register_forward_hook(record(i)) for i, (_, _, module) in enumerate(blocks)
    ]
    seen = 0
    try:
        with torch.no_grad():
            for x, _, bad in tqdm(loader, desc="head similarity", unit="batch", leave=False):
                check_bad_images(bad, skip_bad)
                if x is None:
                    continue
                if images is not None:
                    x = x[: images - seen]
                batch_size[0] = x.shape[0]
                model(x.to(device))
                seen += x.shape[0]
                if images is not None and seen >= images:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise UserError("no images were read from the data split")
    pairs, blocks_summary = [], []
    for block, ((name, stage, module), stat) in enumerate(zip(blocks, stats), start=1):
        where = dict(attention_kind=module.kind, feature=feature, stage=stage, block=block)
        mean, std = stat.mean(), stat.std()
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                pairs.append(
                    dict(
                        **where,
                        module=name,
                        head_i=i,
                        head_j=j,
                        cosine_mean=mean[i, j].item(),
                        cosine_std=std[i, j].item(),
                        n_images=stat.images,
                    )
                )
        if mean.shape[0] > 1:  # a single head has no other head to resemble
            blocks_summary.append(dict(**where, **block_summary(stat)))
    return pd.DataFrame(pairs), pd.DataFrame(blocks_summary)


def block_summary(stat: PairwiseCosine) -> dict:
    """Both orders of a block's average maximum head similarity (module docstring), with the spread over images."""
    mean = stat.mean()
    others = mean.masked_fill(torch.eye(mean.shape[0], dtype=torch.bool), -torch.inf).amax(dim=1)
    per_image = stat.max_per_image()
    sd = per_image.std(unbiased=False).item()
    return dict(
        heads=mean.shape[0],
        mean_max_similarity=per_image.mean().item(),
        mean_max_similarity_std=sd,
        mean_max_similarity_ci95=1.96 * sd / len(per_image) ** 0.5,
        max_of_mean_similarity=others.mean().item(),
        max_max_similarity=others.max().item(),
        n_images=stat.images,
    )


def build_model(name: str | None, checkpoint: str | None, model_config: str | None, img_size: int | None) -> nn.Module:
    """Our own checkpoints rebuild their model; other checkpoints (official, timm) load into `--model`."""
    spec = ModelSpec.from_yaml(model_config) if model_config else ModelSpec(name) if name else None
    overrides = {"img_size": img_size} if img_size else {}
    if checkpoint:
        return efficientvit.model_from_checkpoint(checkpoint, spec, **overrides)
    if spec is None:
        raise UserError("give --model (or --model-config) to say which model to measure")
    return spec.build(**overrides)


DESCRIPTION = (
    "Per-head cosine similarity of every attention block (the paper's Fig. 4); writes "
    "results/head_similarity/<run>_pairwise.csv and <run>_summary.csv with JSON sidecars."
)


@dataclass
class SimilarityConfig:
    data: str = knob(help="fashion-mnist, or an ImageFolder root (DATA/<split>/<class>/<image>)")
    model: str | None = knob(None, "registered model name (not needed for checkpoints of this project)")
    model_config: str | None = knob(None, "model YAML (e.g. from `efficientvit subnet`) instead of --model")
    checkpoint: str | None = knob(None, "weights: this project's, timm's or the official release's")
    split: str = knob("val", "split to read")
    images: int = knob(1000, "images to average over")
    batch: int = knob(64, "images per forward pass; results do not depend on it")
    feature: str = knob("attention", "compare the heads' attention maps or their outputs", choices=sorted(FEATURES))
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(2, "data loading processes")
    skip_bad: bool = knob(False, "skip unreadable images instead of stopping")
    run: str | None = knob(None, "run name (default <model>_<checkpoint>_<feature>)")
    out_dir: Path = knob(Path("results/head_similarity"), "where to write")


def run(config: SimilarityConfig) -> pd.DataFrame:
    """Measure, write <run>_pairwise.csv and <run>_summary.csv, and return the summary (one row per block)."""
    device = resolve_device(config.device)
    if config.images < 1 or config.batch < 1:
        raise UserError("--images and --batch must be at least 1")
    model = build_model(config.model, config.checkpoint, config.model_config, config.img_size)
    name = model.spec.name
    dataset = open_split(config.data, config.split, model.img_size[0])
    if config.images > len(dataset):
        print(f"the {config.split} split has {len(dataset)} images, fewer than --images {config.images}: using all")
    dataset = Subset(dataset, range(min(config.images, len(dataset))))
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=collate)
    pairwise, summary = head_similarity(model, loader, config.feature, device=device, skip_bad=config.skip_bad)
    checkpoint = Path(config.checkpoint).stem if config.checkpoint else "random_init"
    for table in (pairwise, summary):
        table.insert(0, "model", name)
        table.insert(1, "checkpoint", checkpoint)
    name = config.run or f"{name}_{checkpoint}_{config.feature}"
    write_results(pairwise, config.out_dir / f"{name}_pairwise.csv", config_arguments(config))
    write_results(summary, config.out_dir / f"{name}_summary.csv", config_arguments(config))
    print(f"written to {config.out_dir / name}_pairwise.csv and _summary.csv")
    return summary


def show(config: SimilarityConfig) -> None:
    summary = run(config)
    columns = ["stage", "block", "heads", "mean_max_similarity", "mean_max_similarity_ci95", "max_of_mean_similarity"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def parse_args(argv: list[str] | None = None) -> SimilarityConfig:
    return parse_config(SimilarityConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("head_similarity", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
