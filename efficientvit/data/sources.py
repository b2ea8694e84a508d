"""What a `data` value refers to, and its splits ready for a model: the one way every command opens data.

`data` is `fashion-mnist` (or a folder `make-data fashion-mnist` wrote), or an ImageFolder root
(root/<split>/<class>/<image>: ImageNet, the generated shapes, your own images), or one split folder itself
(root/<class>/<image>, e.g. /data/imagenet/val), which then serves whichever split is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from . import fashion_mnist
from .pipeline import OFFICIAL_AUTO_AUGMENT, eval_transform, image_folder, published_eval_transform, train_transform


@dataclass(frozen=True)
class Augment:
    """The recipe's augmentation knobs (TrainConfig's names)."""

    auto_augment: str | None = OFFICIAL_AUTO_AUGMENT
    reprob: float = 0.25
    crop_scale: tuple[float, float] = (0.08, 1.0)
    color_jitter: float | None = 0.4


def open_split(
    data: str,
    split: str,
    img_size: int,
    augment: Augment | None = None,
    classes: list[str] | None = None,
    pretrained_cfg: dict | None = None,
) -> Dataset:
    """The `split` of `data`, transformed for training (`augment` given) or for evaluation.

    `classes`, if given, are the training split's: the split must have the same ones. The dataset has `.classes`.
    `pretrained_cfg` (a model's, when its weights came by name: `model.pretrained_cfg`) makes the evaluation
    transform of ImageFolder data the one published with the weights; Fashion-MNIST keeps its own (28 px gray
    images padded and made RGB, which no published transform describes).
    """
    if fashion_mnist.refers_to_fashion_mnist(data):
        root = fashion_mnist.prepare(
            fashion_mnist.DEFAULT_ROOT if data == fashion_mnist.NAME else data, download=data == fashion_mnist.NAME
        )
        transform = (
            fashion_mnist.eval_transform(img_size)
            if augment is None
            else fashion_mnist.augmenting_transform(
                img_size, augment.auto_augment, augment.reprob, augment.crop_scale, augment.color_jitter
            )
        )
        return fashion_mnist.FashionMNIST(root, split, transform)
    if augment is None:
        transform = published_eval_transform(pretrained_cfg, img_size) if pretrained_cfg else eval_transform(img_size)
        return image_folder(data, split, transform, classes=classes)
    return image_folder(
        data,
        split,
        train_transform(img_size, augment.auto_augment, augment.reprob, augment.crop_scale, augment.color_jitter),
        classes=classes,
    )


def fixed_subset(dataset: Dataset, images: int | None, seed: int = 0) -> Dataset:
    """A fixed draw of `images` of the dataset, the same for the same seed on every machine (all of it when
    `images` is None or not fewer): an ImageFolder lists its images class by class, so its first N are a few
    classes only."""
    if images is None or images >= len(dataset):
        return dataset
    draw = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, draw[:images].tolist())
