"""ImageFolder data with the official EfficientViT/DeiT transforms, MixUp/CutMix and repeated augmentation.

Train: timm's `create_transform` with the official arguments (Cream's `build_transform`, after DeiT):
RandomResizedCrop (bicubic), horizontal flip, RandAugment `rand-m9-mstd0.5-inc1`, ImageNet normalisation,
RandomErasing (p 0.25, random pixels). Eval: resize to size x 256/224 (bicubic), centre crop. MixUp (alpha 0.8)
or CutMix (alpha 1.0), one or the other per batch, are applied to whole batches in the training loop.

An unreadable image does not stop a worker: the dataset hands back a `BadImage` in its place, `collate` moves it
out of the batch, and the training loop either stops with the file's name or counts it (`skip_bad`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler, default_collate
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 224 / 256


OFFICIAL_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm's RandAugment: 2 ops, magnitude 9 of 10, std 0.5, increasing


def train_transform(
    img_size: int,
    auto_augment: str | None = OFFICIAL_AUTO_AUGMENT,
    reprob: float = 0.25,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    color_jitter: float | None = 0.4,
    stats: tuple = (IMAGENET_MEAN, IMAGENET_STD),
    before: tuple = (),
) -> v2.Compose:
    """The official training augmentation, built by timm (the library the official code uses) from a PIL image.

    `auto_augment` is timm's policy string (None: none); `color_jitter` applies only without it, as in timm.
    `stats` (mean, std) normalise; `before` are steps a data set adds first (e.g. Fashion-MNIST's padding and
    conversion to an RGB image).
    """
    from timm.data import create_transform  # here: timm costs seconds at start-up, and evaluation needs none of it

    recipe = create_transform(
        img_size,
        is_training=True,
        scale=tuple(crop_scale),
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        mean=stats[0],
        std=stats[1],
    )
    return v2.Compose([*before, recipe])


def eval_transform(img_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize(int(img_size / EVAL_CROP_RATIO), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(img_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def published_eval_transform(pretrained_cfg: dict, img_size: int):
    """The evaluation transform published with pretrained weights, as timm builds it from their pretrained config
    (resize to img_size / crop_pct with their interpolation, centre crop, their mean and std; DeiT-T: 248, 224,
    bicubic), at the model's input size."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({"input_size": (3, img_size, img_size)}, pretrained_cfg=pretrained_cfg)
    return create_transform(**config)


def batch_mixing(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0) -> v2.Transform | None:
    """MixUp or CutMix, chosen with equal chance per batch (only the ones with alpha > 0); None if neither.

    Called on (images, labels) it returns mixed images and soft labels of shape (batch, num_classes).
    """
    mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    )
    return v2.RandomChoice(mixers) if mixers else None


class BadImage(NamedTuple):
    path: str
    reason: str


class ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder, except that an image that cannot be decoded comes back as a BadImage."""

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            return BadImage(path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return self.transform(image), target


def image_folder(root: str | Path, split: str, transform, classes: list[str] | None = None) -> ImageFolder:
    """The `split` folder of an ImageFolder root (root/split/<class>/<image>), checked with readable errors.

    `classes`, if given, are the training classes: the split must have the same ones.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data directory {root} does not exist; give fashion-mnist or an ImageFolder root "
            "(root/train/<class>/<image>)"
        )
    folder = root / split if (root / split).is_dir() or not is_split_folder(root) else root
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "no folders"
        raise UserError(
            f"data directory {root} has no {split!r} split (found {found}); expected {root}/{split}/<class>/<image>"
            f" or a split folder itself, {root}/<class>/<image>"
        )
    try:
        dataset = ImageFolder(folder, transform=transform)
    except FileNotFoundError as e:  # torchvision: no class folders, or class folders without images
        raise UserError(f"split {folder} has no classes with images ({e}); expected {folder}/<class>/<image>") from None
    if classes is not None and dataset.classes != classes:
        raise UserError(
            f"split {folder} has classes {short_list(dataset.classes)} but training has "
            f"{short_list(classes)}; both splits need the same class folders"
        )
    return dataset


def is_split_folder(root: Path) -> bool:
    """Whether `root` is itself a split (e.g. /data/imagenet/val): its first class folder holds images directly."""
    first = next((p for p in sorted(root.iterdir()) if p.is_dir()), None)
    return first is not None and any(f.suffix.lower() in IMG_EXTENSIONS for f in first.iterdir() if f.is_file())


def short_list(names: list[str], keep: int = 4) -> str:
    return "[" + ", ".join(names[:keep]) + (f", ... ({len(names)} in all)" if len(names) > keep else "") + "]"


def collate(samples: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadImage]]:
    """default_collate over the readable samples; the unreadable ones are returned beside the batch."""
    good = [s for s in samples if not isinstance(s, BadImage)]
    bad = [s for s in samples if isinstance(s, BadImage)]
    images, targets = default_collate(good) if good else (None, None)
    return images, targets, bad


def check_bad_images(bad: list[BadImage], skip_bad: bool) -> int:
    """Stop at the first unreadable image unless skipping them; returns how many were skipped."""
    if bad and not skip_bad:
        raise UserError(
            f"cannot read image {bad[0].path} ({bad[0].reason}); remove or replace it, "
            "or set skip_bad to skip unreadable images"
        )
    return len(bad)


class EpochChunkSampler(Sampler[int]):
    """Epochs of `chunk` images that walk through seeded shuffles of the whole data set in turn: epoch e covers
    positions [e * chunk, (e + 1) * chunk) of the endless sequence of permutations (pass p shuffled with the seed
    (seed, p)), so every image is seen once a pass whatever the epoch length, and the order depends only on (seed,
    epoch). Each process takes a strided share of the chunk."""

    def __init__(self, dataset_len: int, chunk: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.dataset_len, self.chunk = dataset_len, chunk
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, data_pass: int) -> torch.Tensor:
        seed = int(np.random.SeedSequence([self.seed, data_pass]).generate_state(1)[0])
        return torch.randperm(self.dataset_len, generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[int]:
        indices, position = [], self.epoch * self.chunk
        while len(indices) < self.chunk:
            data_pass, offset = divmod(position, self.dataset_len)
            take = min(self.chunk - len(indices), self.dataset_len - offset)
            indices += self.permutation(data_pass)[offset : offset + take].tolist()
            position += take
        return iter(indices[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(range(self.rank, self.chunk, self.num_replicas))


class RepeatedAugmentationSampler(Sampler[int]):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's RASampler): each epoch draws len/repeats images and
    shows each `repeats` times, its copies going to different processes (so they get different augmentations).

    Each process gets ceil(len(dataset) / num_replicas) indices per epoch, as with DistributedSampler; the order
    depends only on (seed, epoch), so set_epoch makes it reproducible.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, repeats: int = 3):
        self.dataset_len = len(dataset)
        self.num_replicas, self.rank, self.seed, self.repeats = num_replicas, rank, seed, repeats
        self.num_samples = math.ceil(self.dataset_len / num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.dataset_len, generator=generator)
        repeated = order.repeat_interleave(self.repeats).tolist()  # copies side by side: dealt to different ranks
        needed = self.num_samples * self.num_replicas
        repeated = (repeated * math.ceil(needed / len(repeated)))[:needed]
        return iter(repeated[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
