"""Independent re-computations the tests compare the project's reported numbers with."""

import torch

import efficientvit
from efficientvit.data.sources import open_split


@torch.no_grad()
def top1_of_checkpoint(checkpoint, data: str, img_size: int) -> float:
    """Top-1 (%) of a checkpoint of ours on the whole validation split, by a plain loop over the images."""
    model = efficientvit.model_from_checkpoint(checkpoint).eval()
    split = open_split(str(data), "val", img_size)
    hits = sum(int(model(image[None]).argmax(1).item() == label) for image, label in split)
    return 100 * hits / len(split)
