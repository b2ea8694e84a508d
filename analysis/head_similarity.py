"""Figure 4: how similar the attention heads of a block are, with the controls that tell redundant heads from heads
that do not attend yet.

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

Controls (a finding must survive them). The cosine of two flattened softmax maps tends to 1 as
the maps flatten (two uniform maps give exactly 1), and the cosine of head outputs compares vectors written in
each head's own arbitrary V basis. So every run also reports:
  entropy (every run)     each head's attention entropy, H / log N per query row (N: the keys the query may
                          attend to; keys a mask removes, such as Swin's shift mask, do not count, and 0 log 0 = 0),
                          averaged over queries, windows and images. 1 is a uniform map; 1 - H / log N is the
                          row's KL divergence from uniform in units of log N. Per block `entropy_mean` (over
                          heads), `entropy_min`, and `near_uniform` when entropy_mean >= NEAR_UNIFORM (0.95: the
                          rows are within 0.05 log N nats of uniform: Gaussian logits with a standard deviation
                          of 0.55 across 16 keys, 0.65 across 49, 0.7 across 197), where map similarity says
                          little. Rows of one key (no choice) are left out; a block with no other rows (1 x 1
                          windows) has NaN entropy and is flagged too: its maps are identical by construction.
  centred (attention)     the same cosine and the same reduction as mean_max_similarity, on each map minus the
                          uniform map over its reachable keys. Two uniform maps then give 0 instead of 1: a map no
                          further than UNIFORM_TOLERANCE (relative) from uniform, float32 rounding included, is
                          the zero vector and resembles nothing. Subtracting the uniform map, rather than each
                          head's mean map over images, keeps the tool one streaming pass with the per-image
                          maximum exact: the mean map is known only after the last image.
  cka (output)            linear CKA (Kornblith et al. 2019) between heads' outputs, tokens of every window and
                          image as samples: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc, Yc the
                          column-centred (tokens x head_dim) outputs. Invariant to rotations and isotropic scaling
                          of a head's V basis. Streamed exactly from the float64 cross-products of all heads'
                          features and their column sums. Per block `cka_mean_max` (mean over heads of the largest
                          CKA to another head) and `cka_max_max`. A head whose output is constant has no CKA (NaN)
                          and is left out.
The pairwise table has the same controls per pair: `entropy_i`, `entropy_j` (each head's normalised entropy),
`centred_cosine_mean`, `centred_cosine_std` (over images, windows averaged, as cosine_mean) and `cka`.
Columns of the control a run does not compute are NaN. `--random-init` measures the checkpoint's architecture
freshly initialised (`--seed`), on the same images: the control row; its checkpoint column says random_init.
Statistics are accumulated in streaming fashion (memory grows only by a few numbers per image), so the result does
not depend on the batch size.

Output: results/head_similarity/<run>_pairwise.csv and <run>_summary.csv, with JSON sidecars.
Images: a fixed, seeded draw of --images of the split (the same images for every run and its control).
Example: python analysis/head_similarity.py --checkpoint timm/deit_tiny_patch16_224.fb_in1k --data /data/imagenet/val
(a pretrained name builds its model and evaluates with the transform published with its weights), or
python analysis/head_similarity.py --model deit_tiny --checkpoint runs/deit/checkpoint.pth --data data/synth
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import efficientvit
from efficientvit.checkpoint import checkpoint_label
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.data.pipeline import check_bad_images, collate
from efficientvit.data.sources import fixed_subset, open_split
from efficientvit.errors import UserError, exit_status
from efficientvit.models import ModelSpec
from efficientvit.models.attention import CascadedGroupAttention, TokenAttention
from efficientvit.results import write_results
from efficientvit.runtime import resolve_device

FEATURES = {"attention": "attn_tap", "output": "head_tap"}
NEAR_UNIFORM = 0.95  # a block whose mean normalised attention entropy reaches this has near-uniform maps
UNIFORM_TOLERANCE = 1e-5  # a centred map smaller than this times the uniform map's norm is uniform (rounding)
MASKED = -50.0  # an additive logits mask at or below this removes a key (Swin's shift mask adds -100)
NAN = float("nan")


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


def normalised_entropy(maps: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(..., N) entropy of every row of the attention maps (..., N, N), divided by the log of the number of keys
    the row may attend to (`keep`, a boolean map of them; all N when None); NaN for rows of one key. 0 log 0 = 0."""
    entropy = -torch.xlogy(maps, maps).sum(dim=-1).double()
    keys = keep.sum(dim=-1).double() if keep is not None else torch.full_like(entropy, maps.shape[-1])
    return torch.where(keys > 1, entropy / keys.clamp(min=2).log(), NAN)


def centred_maps(maps: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(..., N * N): each map minus the uniform map over the keys each row may attend to (`keep`; all when None),
    flattened; maps within UNIFORM_TOLERANCE of uniform (relative to its norm) become the zero vector."""
    if keep is None:
        centred = maps.double() - 1 / maps.shape[-1]
        size = math.sqrt(maps.shape[-2] / maps.shape[-1])  # the uniform map's norm: sqrt(sum over rows of 1/keys)
    else:
        keys = keep.sum(dim=-1, keepdim=True).double().clamp(min=1)
        centred = maps.double() - keep / keys
        size = keys.reciprocal().sum(dim=(-2, -1)).sqrt()[..., None]
    centred = centred.flatten(-2)
    return centred * (centred.norm(dim=-1, keepdim=True) > UNIFORM_TOLERANCE * size)


class HeadEntropy:
    """Streaming mean over queries, windows and images of each head's normalised attention entropy."""

    def __init__(self):
        self.total = self.rows = None

    def update(self, entropy: torch.Tensor) -> None:
        """entropy: (images, windows, heads, queries), NaN for rows left out."""
        valid = ~entropy.isnan()
        total, rows = entropy.nan_to_num().sum(dim=(0, 1, 3)).cpu(), valid.sum(dim=(0, 1, 3)).cpu()
        self.total = total if self.total is None else self.total + total
        self.rows = rows if self.rows is None else self.rows + rows

    def per_head(self) -> torch.Tensor:
        """(heads,) mean normalised entropy; NaN for a head with no row of two keys or more."""
        return torch.where(self.rows > 0, self.total / self.rows.clamp(min=1), NAN)


class PairwiseCKA:
    """Streaming linear CKA between the heads' outputs: the float64 cross-products of all heads' features and
    their column sums, taken about the first batch's mean (exact, and no cancellation when means are large)."""

    def __init__(self):
        self.gram = self.sums = self.shift = None
        self.rows = 0
        self.heads = 0

    def update(self, features: torch.Tensor) -> None:
        """features: (..., heads, tokens, dim); every token of every window and image is a sample."""
        self.heads = features.shape[-3]
        z = features.movedim(-3, -2).reshape(-1, self.heads * features.shape[-1]).double()
        if self.shift is None:
            self.shift = z.mean(dim=0)
            self.gram = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
            self.sums = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
        z = z - self.shift
        self.gram += z.T @ z
        self.sums += z.sum(dim=0)
        self.rows += z.shape[0]

    def matrix(self) -> torch.Tensor:
        """(heads, heads) linear CKA; NaN where a head's output does not vary."""
        mean = self.sums / self.rows
        covariance = (self.gram - self.rows * torch.outer(mean, mean)).cpu()  # Zc^T Zc
        dim = covariance.shape[0] // self.heads
        cross = covariance.view(self.heads, dim, self.heads, dim).pow(2).sum(dim=(1, 3))  # ||Xc_i^T Xc_j||_F^2
        norms = cross.diagonal().sqrt()
        return torch.where(norms[:, None] * norms[None, :] > 0, cross / torch.outer(norms, norms), NAN)


def max_over_others(matrix: torch.Tensor) -> torch.Tensor:
    """(heads,) each head's largest value to another head, NaN entries left out (NaN if none is left)."""
    others = matrix.masked_fill(torch.eye(matrix.shape[0], dtype=torch.bool), NAN)
    best = others.nan_to_num(nan=-torch.inf).amax(dim=1)
    return torch.where(best.isinf(), NAN, best)


class BlockStats:
    """Everything measured on one block: the paper's cosine of `feature`, the heads' attention entropy, and the
    control of the feature (centred cosine of the maps, or linear CKA of the outputs)."""

    def __init__(self, feature: str):
        self.feature = feature
        self.cosine = PairwiseCosine()
        self.entropy = HeadEntropy()
        self.centred = PairwiseCosine() if feature == "attention" else None
        self.cka = PairwiseCKA() if feature == "output" else None
        self.mask = self.lead = None  # the logits mask of the current forward pass and the leading dims it fits

    def keep(self, maps: torch.Tensor) -> torch.Tensor | None:
        """Which keys each query may attend to, shaped like maps (images, windows, heads, N, N); None: all."""
        if self.mask is None:
            return None
        return (self.mask > MASKED).expand(*self.lead, *maps.shape[-3:]).reshape(maps.shape)

    def on_maps(self, maps: torch.Tensor) -> None:
        """maps: (images, windows, heads, N, N)."""
        keep = self.keep(maps)
        self.entropy.update(normalised_entropy(maps, keep))
        if self.feature == "attention":
            self.cosine.update(maps.flatten(-2))
            self.centred.update(centred_maps(maps, keep))

    def on_outputs(self, outputs: torch.Tensor) -> None:
        """outputs: (images, windows, heads, N, dim)."""
        self.cosine.update(outputs.flatten(-2))
        self.cka.update(outputs)


def attention_blocks(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    """(name, stage, module) of every attention module, in forward order."""
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, (CascadedGroupAttention, TokenAttention)):
            match = re.search(r"stages\.(\d+)\.", name)
            blocks.append((name, int(match[1]) + 1 if match else 1, module))
    return blocks


def attach(blocks: list, stats: list[BlockStats], batch_size: list[int]) -> list:
    """Hooks feeding each block's statistics: its logits mask (a forward pre-hook on the attention module), its
    maps (`attn_tap`, always: the entropy) and its outputs (`head_tap`, for `--feature output`)."""

    def per_image(tensor: torch.Tensor) -> torch.Tensor:
        # the taps see (batch x windows, heads, ...): regroup the windows of each image
        return tensor.view(batch_size[0], -1, *tensor.shape[1:])

    def remember_mask(stat: BlockStats):
        def hook(module, args, kwargs):
            stat.mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
            stat.lead = args[0].shape[:-2]

        return hook

    handles = []
    for (_, _, module), stat in zip(blocks, stats):
        handles.append(module.register_forward_pre_hook(remember_mask(stat), with_kwargs=True))
        handles.append(module.attn_tap.register_forward_hook(lambda m, i, out, s=stat: s.on_maps(per_image(out))))
        if stat.feature == "output":
            handles.append(
                module.head_tap.register_forward_hook(lambda m, i, out, s=stat: s.on_outputs(per_image(out)))
            )
    return handles


def stream(
    model: nn.Module, loader: DataLoader, images: int | None, device, *, skip_bad: bool, batch_size: list
) -> int:
    """Run the model over the loader's images (at most `images`); returns how many it saw."""
    seen = 0
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
    return seen


def head_similarity(
    model: nn.Module,
    loader: DataLoader,
    feature: str = "attention",
    images: int | None = None,
    *,
    device: torch.device | str = "cpu",
    skip_bad: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Head similarity of every attention block of `model` over the images of `loader`, with its controls: the
    pairwise table (one row per block and pair of heads) and the summary (one row per block)."""
    if feature not in FEATURES:
        raise UserError(f"feature must be one of {sorted(FEATURES)}, got {feature!r}")
    blocks = attention_blocks(model)
    if not blocks:
        raise UserError("the model has no attention layers, so there are no heads to compare")
    model = model.to(device).eval()
    stats = [BlockStats(feature) for _ in blocks]
    batch_size = [0]
    handles = attach(blocks, stats, batch_size)
    try:
        seen = stream(model, loader, images, device, skip_bad=skip_bad, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise UserError("no images were read from the data split")
    pairs, blocks_summary = [], []
    for block, ((name, stage, module), stat) in enumerate(zip(blocks, stats), start=1):
        where = dict(attention_kind=module.kind, feature=feature, stage=stage, block=block)
        pairs += pair_rows(where, name, stat)
        if stat.cosine.mean().shape[0] > 1:  # a single head has no other head to resemble
            blocks_summary.append(dict(**where, **block_summary(stat.cosine), **control_summary(stat)))
    return pd.DataFrame(pairs), pd.DataFrame(blocks_summary)


def pair_rows(where: dict, module: str, stat: BlockStats) -> list[dict]:
    """One row per pair of heads (i, j), the diagonal included: the paper's cosine, then the controls."""
    mean, std = stat.cosine.mean(), stat.cosine.std()
    entropy = stat.entropy.per_head()
    nans = torch.full_like(mean, NAN)
    centred_mean, centred_std = (stat.centred.mean(), stat.centred.std()) if stat.centred else (nans, nans)
    cka = stat.cka.matrix() if stat.cka else nans
    return [
        dict(
            **where,
            module=module,
            head_i=i,
            head_j=j,
            cosine_mean=mean[i, j].item(),
            cosine_std=std[i, j].item(),
            n_images=stat.cosine.images,
            entropy_i=entropy[i].item(),
            entropy_j=entropy[j].item(),
            centred_cosine_mean=centred_mean[i, j].item(),
            centred_cosine_std=centred_std[i, j].item(),
            cka=cka[i, j].item(),
        )
        for i, j in itertools.product(range(mean.shape[0]), repeat=2)
    ]


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


def control_summary(stat: BlockStats) -> dict:
    """A block's controls (module docstring): entropy and the near-uniform flag, the centred similarity with the
    paper's reduction, and the CKA's mean and largest maximum over other heads; NaN for the control not run."""
    entropy = pd.Series(stat.entropy.per_head().numpy())  # pandas' mean and min leave NaN out
    centred = {f"centred_{key}": NAN for key in ("mean_max_similarity", "mean_max_similarity_std")}
    centred["centred_mean_max_similarity_ci95"] = NAN
    if stat.centred:
        plain = block_summary(stat.centred)
        centred = {key: plain[key.removeprefix("centred_")] for key in centred}
    best_cka = pd.Series(max_over_others(stat.cka.matrix()).numpy() if stat.cka else [NAN])
    return dict(
        entropy_mean=entropy.mean(),
        entropy_min=entropy.min(),
        # maps of one key per query (NaN entropy) are identical by construction, as uninformative as uniform ones
        near_uniform=not (entropy.mean() < NEAR_UNIFORM),
        **centred,
        cka_mean_max=best_cka.mean(),
        cka_max_max=best_cka.max(),
    )


def build_model(
    name: str | None,
    checkpoint: str | None,
    model_config: str | None,
    img_size: int | None,
    *,
    random_init: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Our own checkpoints and pretrained names rebuild their model; other checkpoints (official, timm) load into
    `--model`. With `random_init`, or without a checkpoint, the same architecture freshly initialised from `seed`
    (keeping the weights' pretrained config: the control sees the same images, transformed the same way)."""
    spec = ModelSpec.from_yaml(model_config) if model_config else ModelSpec(name) if name else None
    overrides = {"img_size": img_size} if img_size else {}
    pretrained_cfg = None
    if checkpoint:
        model = efficientvit.model_from_checkpoint(checkpoint, spec, **overrides)  # checks that the weights fit
        if not random_init:
            return model
        spec, overrides, pretrained_cfg = model.spec, {}, model.pretrained_cfg
    if spec is None:
        raise UserError("give --model (or --model-config) to say which model to measure")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = spec.build(**overrides)
    fresh.pretrained_cfg = pretrained_cfg
    return fresh


DESCRIPTION = (
    "Per-head similarity of every attention block (the paper's Fig. 4) with its controls: attention entropy and "
    "a near-uniform flag, the similarity of maps centred on the uniform map, linear CKA of head outputs, and "
    "--random-init for an untrained control. Writes results/head_similarity/<run>_pairwise.csv and "
    "<run>_summary.csv with JSON sidecars; the module docstring explains every column."
)


@dataclass
class SimilarityConfig:
    data: str = knob(
        help="fashion-mnist, an ImageFolder root (DATA/<split>/<class>/<image>) or a split folder itself "
        "(DATA/<class>/<image>, e.g. /data/imagenet/val)"
    )
    model: str | None = knob(
        None, "registered model name (not needed for checkpoints of this project nor for pretrained names)"
    )
    model_config: str | None = knob(None, "model YAML (e.g. from `efficientvit subnet`) instead of --model")
    checkpoint: str | None = knob(
        None,
        "weights: a file (this project's, timm's or the official release's) or a pretrained name "
        "(timm/deit_tiny_patch16_224.fb_in1k, cream/efficientvit_m4: `efficientvit list --pretrained`), which "
        "builds its model and evaluates with the transform published with its weights",
    )
    split: str = knob("val", "split to read")
    images: int = knob(1000, "images to average over: a fixed, seeded draw of the split")
    batch: int = knob(64, "images per forward pass; results do not depend on it")
    feature: str = knob(
        "attention",
        "compare the heads' attention maps (control: centred maps) or their outputs (control: linear CKA)",
        choices=sorted(FEATURES),
    )
    img_size: int | None = knob(None, "input size (default: the model's)")
    device: str = knob("cpu", "cpu, cuda or auto")
    workers: int = knob(2, "data loading processes")
    skip_bad: bool = knob(False, "skip unreadable images instead of stopping")
    random_init: bool = knob(
        False, "the control: measure the checkpoint's architecture freshly initialised (from --seed), not its weights"
    )
    seed: int = knob(0, "initialisation seed of --random-init (and of a model given without --checkpoint)")
    run: str | None = knob(None, "run name (default <model>_<checkpoint>[_random_init]_<feature>)")
    out_dir: Path = knob(Path("results/head_similarity"), "where to write")


@dataclass
class SimilarityResult:
    """What `run` measured: the per-block summary, the pairwise table, and the CSV files written (sidecars
    beside them, same name with .json)."""

    summary: pd.DataFrame
    pairwise: pd.DataFrame
    paths: list[Path] = field(default_factory=list)


def run(config: SimilarityConfig) -> SimilarityResult:
    """Measure, write <run>_pairwise.csv and <run>_summary.csv, and return both tables and their paths."""
    device = resolve_device(config.device)
    if config.images < 1 or config.batch < 1:
        raise UserError("--images and --batch must be at least 1")
    model = build_model(
        config.model,
        config.checkpoint,
        config.model_config,
        config.img_size,
        random_init=config.random_init,
        seed=config.seed,
    )
    name = model.spec.name
    dataset = open_split(config.data, config.split, model.img_size[0], pretrained_cfg=model.pretrained_cfg)
    if config.images > len(dataset):
        print(f"the {config.split} split has {len(dataset)} images, fewer than --images {config.images}: using all")
    dataset = fixed_subset(dataset, config.images)
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=collate)
    pairwise, summary = head_similarity(model, loader, config.feature, device=device, skip_bad=config.skip_bad)
    stem = checkpoint_label(config.checkpoint) if config.checkpoint else None
    random = config.random_init or not config.checkpoint
    checkpoint = "random_init" if random else stem
    for table in (pairwise, summary):
        table.insert(0, "model", name)
        table.insert(1, "checkpoint", checkpoint)
    label = "_".join(part for part in (stem, "random_init" if random else None) if part)
    name = config.run or f"{name}_{label}_{config.feature}"
    paths = [
        write_results(table, config.out_dir / f"{name}_{kind}.csv", config_arguments(config))
        for kind, table in (("pairwise", pairwise), ("summary", summary))
    ]
    print(f"written to {config.out_dir / name}_pairwise.csv and _summary.csv")
    return SimilarityResult(summary=summary, pairwise=pairwise, paths=paths)


def show(config: SimilarityConfig) -> None:
    summary = run(config).summary
    control = ["centred_mean_max_similarity"] if config.feature == "attention" else ["cka_mean_max"]
    columns = ["stage", "block", "heads", "mean_max_similarity", "mean_max_similarity_ci95", "max_of_mean_similarity"]
    columns += [*control, "entropy_mean", "entropy_min", "near_uniform"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def parse_args(argv: list[str] | None = None) -> SimilarityConfig:
    return parse_config(SimilarityConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("head_similarity", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
