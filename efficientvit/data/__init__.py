"""Data: every command opens it through `open_split` (sources), which reads Fashion-MNIST (fashion_mnist) or an
ImageFolder root with the official transforms (pipeline); the generated shapes dataset is in synthetic."""

from .pipeline import (
    BadImage,
    ImageFolder,
    RepeatedAugmentationSampler,
    batch_mixing,
    check_bad_images,
    collate,
    eval_transform,
    image_folder,
    train_transform,
)
from .sources import Augment, open_split
from .synthetic import make_synthetic

__all__ = [
    "Augment",
    "BadImage",
    "ImageFolder",
    "RepeatedAugmentationSampler",
    "batch_mixing",
    "check_bad_images",
    "collate",
    "eval_transform",
    "image_folder",
    "make_synthetic",
    "open_split",
    "train_transform",
]
