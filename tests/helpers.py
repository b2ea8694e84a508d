"""Independent re-computations the tests compare the project's reported numbers with."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
import safetensors.torch
import torch
from PIL import Image

import efficientvit
from efficientvit.data.sources import open_split

from .models.test_against_timm import realistic_timm_model


@torch.no_grad()
def top1_of_checkpoint(checkpoint, data: str, img_size: int) -> float:
    """Top-1 (%) of a checkpoint of ours on the whole validation split, by a plain loop over the images."""
    model = efficientvit.model_from_checkpoint(checkpoint).eval()
    split = open_split(str(data), "val", img_size)
    hits = sum(int(model(image[None]).argmax(1).item() == label) for image, label in split)
    return 100 * hits / len(split)


def put_in_hub_cache(repo: str, files: dict[str, Callable[[Path], object]]) -> Path:
    """Lay files of the Hugging Face repository `repo` into huggingface_hub's cache (the tests' temporary one) as
    huggingface_hub lays them out: snapshots/<commit>/<file>, and refs/main naming that commit. `files` maps each
    file name to a function writing it at the path given. Returns the snapshot folder."""
    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def pretrained_in_hub_cache(name: str) -> tuple[torch.nn.Module, Path]:
    """timm's model of a pretrained name (timm/<arch>.<tag>) with realistic random weights (every tensor off its
    initialisation), and those weights laid into the hub cache as the name's model.safetensors."""
    model = realistic_timm_model(name.removeprefix("timm/").split(".")[0]).eval()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    snapshot = put_in_hub_cache(name, {"model.safetensors": lambda path: safetensors.torch.save_file(weights, path)})
    return model, snapshot / "model.safetensors"


def class_folders(root: Path, classes: int, size: tuple[int, int] = (300, 260)) -> Path:
    """A split folder as ImageNet's val/ is laid out, root/<class>/<image>: one image per class, each its own
    colour. Returns root."""
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        Image.new("RGB", size, (c % 256, (7 * c) % 256, (13 * c) % 256)).save(root / f"n{c:08d}" / "a.png")
    return root
