"""Data: ImageFolder with the official transforms (pipeline), and the generated shapes dataset (synthetic)."""

from .pipeline import (BadImage, ImageFolder, RepeatedAugmentationSampler, batch_mixing, check_bad_images, collate,
                       eval_transform, image_folder, train_transform)
from .synthetic import make_synthetic

__all__ = ["BadImage", "ImageFolder", "RepeatedAugmentationSampler", "batch_mixing", "check_bad_images", "collate",
           "eval_transform", "image_folder", "make_synthetic", "train_transform"]
