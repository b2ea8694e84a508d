"""`efficientvit make-data`: prepare Fashion-MNIST, or generate the shapes data set."""

from __future__ import annotations

import argparse
import time

from ..data import fashion_mnist
from ..data.synthetic import make_synthetic

HELP = "prepare Fashion-MNIST, or generate the shapes dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "fashion-mnist: the real data set of the CPU presets (70,000 28x28 product "
        "photos, 10 classes), found in --source, else in the Debian package "
        "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), else downloaded by "
        "torchvision when online; every file is checked, and DIR becomes a torchvision "
        "root that any --data or data: accepts. (`data: fashion-mnist` does the same "
        "into data/fashion-mnist on first use.) synthetic: an ImageFolder tree "
        "(train/<class>/*.png, val/<class>/*.png) and manifest.json; each image holds "
        "two shapes (circle, square, triangle, cross), the class is which lies above "
        "the other, over random positions, textures, colours, sizes and noise. Same "
        "arguments, same bytes."
    )
    parser.add_argument("kind", choices=["fashion-mnist", "synthetic"], help="which dataset")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to create (written to a hidden sibling, then renamed: never half-written)",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="fashion-mnist: folder holding the four .gz files (default: the Debian package's folder)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=10,
        help="synthetic: number of classes, 2 to 12 (ordered pairs of 4 shapes; default 10)",
    )
    parser.add_argument(
        "--train", type=int, default=10000, help="synthetic: training images, spread evenly over classes (10000)"
    )
    parser.add_argument("--val", type=int, default=2000, help="synthetic: validation images (2000)")
    parser.add_argument("--size", type=int, default=64, help="synthetic: image side in pixels (64)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed (0)")
    parser.add_argument("--workers", type=int, help="synthetic: processes drawing images (default: one per CPU core)")
    parser.add_argument(
        "--style",
        choices=["textured", "clean"],
        default="textured",
        help="textured (default): textured background, clutter and noise; clean: the same shapes and "
        "classes on a black background, without clutter or noise",
    )


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.kind == fashion_mnist.NAME:
        out = fashion_mnist.prepare(args.out, args.source)
        print(
            f"{out}: Fashion-MNIST, 60,000 train + 10,000 val images ({time.perf_counter() - started:.1f} s); "
            f"train on it with data: {out}"
        )
        return
    out = make_synthetic(
        args.out,
        classes=args.classes,
        train=args.train,
        val=args.val,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        style=args.style,
    )
    print(
        f"{out}: {args.train} train + {args.val} val {args.style} images of {args.classes} classes at {args.size} px "
        f"({time.perf_counter() - started:.1f} s)"
    )
