"""Fashion-MNIST (Xiao et al. 2017, MIT licence): 70,000 real 28x28 grayscale product photos in 10 classes, the
real data set of the CPU presets.

`prepare` makes a torchvision root (<root>/FashionMNIST/raw/, the four IDX files decompressed) from the first
place that has the gzipped files: a folder the user names, the Debian package `dataset-fashion-mnist`, or
torchvision's download when online. Every file is checked (gzip's CRC and the exact IDX size), so a truncated
or corrupt download is named instead of failing somewhere inside torchvision. torchvision's `FashionMNIST`
then parses it; the whole set stays in memory as one uint8 tensor (55 MB), so loading is a slice, not a decode.

In a training config or on any command line, `fashion-mnist` means the prepared root `data/fashion-mnist`
(prepared on first use); a folder written by `efficientvit make-data fashion-mnist --out DIR` works as well.
Splits: "train" (60,000) and "val" (the 10,000 test images; "test" is accepted too).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import UserError
from .pipeline import train_transform

NAME = "fashion-mnist"
DEFAULT_ROOT = Path("data") / NAME
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILES = [name for pair in SPLITS.values() for name in pair]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: unsigned bytes, 3 (images) or 1 (labels) dimensions
HOW_TO_GET = (
    "install the Debian package (apt-get install dataset-fashion-mnist), or pass the folder holding the "
    "four .gz files (make-data fashion-mnist --source DIR)"
)
MEAN, STD = (0.2860,), (0.3530,)  # over the 60,000 training images
NATIVE_SIZE, PADDED_SIZE = 28, 32


def raw_folder(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def idx_problem(path: Path) -> str | None:
    """Why `path` is not a whole Fashion-MNIST IDX file (header, 28x28 images, size), or None if it is one."""
    images = "images" in path.name
    header = 16 if images else 8
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        return "it is shorter than an IDX header"
    magic, count, *dims = struct.unpack(f">{header // 4}I", head)
    if magic != (IMAGES_MAGIC if images else LABELS_MAGIC) or (images and dims != [28, 28]):
        return f"its header is not that of {'28x28 images' if images else 'labels'}"
    expected = header + count * (28 * 28 if images else 1)
    if path.stat().st_size != expected:
        return f"it holds {path.stat().st_size:,} bytes where its header announces {expected:,}"
    return None


def count(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack(">2I", f.read(8))[1]


def check_raw(raw: Path) -> str | None:
    """Why the decompressed files in `raw` are not a whole Fashion-MNIST, or None if they are."""
    for name in FILES:
        if not (raw / name).is_file():
            return f"{name} is missing"
        problem = idx_problem(raw / name)
        if problem:
            return f"{name}: {problem}"
    for images, labels in SPLITS.values():
        if count(raw / images) != count(raw / labels):
            return f"{images} and {labels} hold different numbers of items"
    return None


def is_prepared(root: str | os.PathLike) -> bool:
    return check_raw(raw_folder(Path(root))) is None


def refers_to_fashion_mnist(data: str | os.PathLike) -> bool:
    """True for the name `fashion-mnist` and for a folder that `prepare` wrote."""
    return str(data) == NAME or raw_folder(Path(data)).is_dir()


def source_folder(source: str | os.PathLike | None) -> Path | None:
    """The first of (source, the Debian package's folder) that holds the four gzipped files, else None."""
    if source is not None:
        folder = Path(source)
        missing = [f"{name}.gz" for name in FILES if not (folder / f"{name}.gz").is_file()]
        if missing:
            raise UserError(
                f"{folder} does not hold the Fashion-MNIST file{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}; {HOW_TO_GET}"
            )
        return folder
    if all((DEBIAN_FOLDER / f"{name}.gz").is_file() for name in FILES):
        return DEBIAN_FOLDER
    return None


def decompress(gz: Path, out: Path) -> None:
    try:
        with gzip.open(gz, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except EOFError:
        raise UserError(f"{gz} is truncated (the gzip stream ends early); {HOW_TO_GET}") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise UserError(f"{gz} is corrupt ({e}); {HOW_TO_GET}") from None
    problem = idx_problem(out)
    if problem:
        raise UserError(f"{gz} is not Fashion-MNIST's {out.name} ({problem}); {HOW_TO_GET}")


def prepare(
    root: str | os.PathLike = DEFAULT_ROOT, source: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Make `root` a verified torchvision FashionMNIST root, built in a hidden sibling folder and then renamed."""
    root = Path(root)
    if is_prepared(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists but does not hold a complete Fashion-MNIST; remove it or choose another folder")
    folder = source_folder(source)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))  # one per job preparing
    try:
        raw = raw_folder(partial)
        raw.mkdir(parents=True)
        if folder is not None:
            for name in FILES:
                decompress(folder / f"{name}.gz", raw / name)
        elif download:
            try:
                datasets.FashionMNIST(partial, train=True, download=True)
            except (OSError, RuntimeError):  # URLError is an OSError; torchvision raises RuntimeError on bad MD5
                raise UserError(
                    f"Fashion-MNIST not found (looked in {DEBIAN_FOLDER} and tried torchvision's "
                    f"download, which failed: offline?); {HOW_TO_GET}"
                ) from None
        else:
            raise UserError(f"Fashion-MNIST not found in {DEBIAN_FOLDER}; {HOW_TO_GET}")
        for name in FILES:  # torchvision leaves its archives beside what it extracted
            gz = raw / f"{name}.gz"
            if gz.exists():
                gz.unlink()
        problem = check_raw(raw)
        if problem:
            raise UserError(f"the Fashion-MNIST download is incomplete ({problem}); {HOW_TO_GET}")
        try:
            if root.exists() and not any(root.iterdir()):
                root.rmdir()
            os.rename(partial, root)
        except OSError:
            if is_prepared(root):  # another process (a parallel job on the same folder) prepared it meanwhile
                return root
            raise
        print(f"Fashion-MNIST prepared in {root} from {folder or 'torchvision download'}", flush=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


class FashionMNIST(Dataset):
    """One split in memory: a uint8 tensor (N, 1, 28, 28) and its labels; each item goes through `transform`."""

    def __init__(self, root: str | os.PathLike, split: str, transform=None):
        if split not in ("train", "val", "test"):
            raise UserError(
                f"Fashion-MNIST has the splits train and val (its test set; 'test' works too), not {split!r}"
            )
        parsed = datasets.FashionMNIST(root, train=split == "train", download=False)
        self.images = parsed.data.unsqueeze(1)
        self.targets = parsed.targets
        self.classes = list(parsed.classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class ToRGB(v2.Transform):
    """Repeat the gray channel three times: every model here takes RGB input, as the paper's do."""

    def transform(self, inpt, params):
        return inpt.expand(3, -1, -1) if inpt.shape[-3] == 1 else inpt


def pad() -> v2.Transform:
    """28 -> 32 px with the black background: a size that patch sizes 2 to 32 divide."""
    return v2.Pad((PADDED_SIZE - NATIVE_SIZE) // 2)


def eval_transform(img_size: int) -> v2.Compose:
    resize = [v2.Resize(img_size, antialias=True)] if img_size != PADDED_SIZE else []
    return v2.Compose([pad(), *resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD), ToRGB()])


class ToPILRGB(v2.Transform):
    """A (1, H, W) uint8 tensor as an RGB PIL image: what timm's augmentations (RandAugment's PIL ops) take."""

    def transform(self, inpt, params):
        return v2.functional.to_pil_image(inpt).convert("RGB")


def augmenting_transform(
    img_size: int, auto_augment: str | None, reprob: float, crop_scale: tuple[float, float], color_jitter: float | None
) -> v2.Compose:
    """The recipe's augmentation (its crop also resizes), after padding and making the gray image RGB."""
    return train_transform(
        img_size, auto_augment, reprob, crop_scale, color_jitter, stats=(MEAN * 3, STD * 3), before=(pad(), ToPILRGB())
    )
