"""What a `data` value refers to, and its splits ready for a model: the one way every command opens data.

`data` is `fashion-mnist` (or a folder `make-data fashion-mnist` wrote), or an ImageFolder root
(root/<split>/<class>/<image>: ImageNet, the generated shapes, your own images).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from . import fashion_mnist
from .pipeline import OFFICIAL_AUTO_AUGMENT, eval_transform, image_folder, train_transform


@dataclass(frozen=True)
class Augment:
    """The recipe's augmentation knobs (TrainConfig's names)."""

    auto_augment: str | None = OFFICIAL_AUTO_AUGMENT
    reprob: float = 0.25
    crop_scale: tuple[float, float] = (0.08, 1.0)
    color_jitter: float | None = 0.4


def open_split(
    data: str, split: str, img_size: int, augment: Augment | None = None, classes: list[str] | None = None
) -> Dataset:
    """The `split` of `data`, transformed for training (`augment` given) or for evaluation.

    `classes`, if given, are the training split's: the split must have the same ones. The dataset has `.classes`.
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
        return image_folder(data, split, eval_transform(img_size), classes=classes)
    return image_folder(
        data,
        split,
        train_transform(img_size, augment.auto_augment, augment.reprob, augment.crop_scale, augment.color_jitter),
        classes=classes,
    )
