"""A generated image-classification dataset whose classes are spatial relations between shapes.

Every image holds two different shapes (from circle, square, triangle, cross). The class is which one lies above
the other, e.g. "triangle above circle"; horizontal positions, heights, sizes, rotations, colours, the textured
background, small clutter and pixel noise are random. Classes come in pairs with the same two shapes in the
opposite order, so a model has to relate two regions that can lie far apart, which is what attention is for.
The relation is vertical because the recipe flips images horizontally, which must not change the class.

Style `textured` (the default) is the above; style `clean` draws the same shapes and relation on a black
background with no clutter and no noise, to tell how much of the task's difficulty for a small model trained from
scratch is the nuisance and how much the relation.

The tree is an ImageFolder (train/<class>/*.png, val/<class>/*.png) plus manifest.json. Every image has its own
seed (dataset seed, split, index), so the same arguments give the same bytes whatever the number of workers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError

SHAPES = ("circle", "square", "triangle", "cross")
SHAPES_PER_IMAGE = 2
ORDERINGS = list(itertools.permutations(SHAPES, SHAPES_PER_IMAGE))  # 12 possible classes
# Class k is ordering 5k mod 12 (5 is coprime to 12): the first few classes then mix every shape in every place,
# instead of all starting with "circle".
CLASS_STRIDE = 5
SPLITS = ("train", "val")
STYLES = ("textured", "clean")
SUPERSAMPLE = 2  # shapes are drawn at twice the size and box-filtered down, for anti-aliased edges
CHUNK = 500  # images per task handed to a worker
VERSION = 1


def class_orderings(classes: int) -> list[tuple[str, ...]]:
    if not 2 <= classes <= len(ORDERINGS):
        raise UserError(
            f"--classes must be between 2 and {len(ORDERINGS)} (orderings of {SHAPES_PER_IMAGE} of "
            f"{len(SHAPES)} shapes), got {classes}"
        )
    return [ORDERINGS[(k * CLASS_STRIDE) % len(ORDERINGS)] for k in range(classes)]


def class_folder(index: int, ordering: tuple[str, ...]) -> str:
    return f"{index:02d}_" + "_".join(ordering)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def textured_background(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Two colours blended by smooth blotches plus stripes of random frequency; returns (image, base colour)."""
    base = rng.uniform(0, 255, 3)
    other = np.clip(base + rng.normal(0, 45, 3), 0, 255)
    cells = int(rng.integers(3, 7))
    blotches = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    mix = np.asarray(blotches.resize((side, side), Image.BICUBIC))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    freq = rng.uniform(2, 9, 2) * rng.choice([-1, 1], 2)
    stripes = rng.uniform(0, 0.35) * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + rng.uniform(0, 2 * np.pi))
    mix = np.clip(mix + stripes, 0, 1)[..., None]
    return base * (1 - mix) + other * mix, base


def contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour, redrawn a few times while it is too close to the background to see."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) > 110:
            break
    return tuple(int(c) for c in colour)


def polygon(cx: float, cy: float, radius: float, angle: float, corners: int) -> list[tuple[float, float]]:
    turns = angle + np.arange(corners) * 2 * np.pi / corners
    return list(zip(cx + radius * np.cos(turns), cy + radius * np.sin(turns)))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, colour) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.polygon(polygon(cx, cy, r, angle, 4), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(cx, cy, 1.15 * r, angle, 3), fill=colour)  # larger: same visual weight as the square
    else:  # a plus sign: two bars, each a thin rectangle through the centre
        for bar in (angle, angle + np.pi / 2):
            along, across = np.array([np.cos(bar), np.sin(bar)]), np.array([-np.sin(bar), np.cos(bar)])
            half_len, half_wid = r, 0.33 * r
            corners = [
                np.array([cx, cy]) + a * half_len * along + b * half_wid * across
                for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))
            ]
            draw.polygon([tuple(c) for c in corners], fill=colour)


def render(ordering: tuple[str, ...], size: int, rng: np.random.Generator, style: str = "textured") -> Image.Image:
    """One image: the shapes of `ordering` from top to bottom at random places, over texture and clutter (style
    `textured`) or a plain background (style `clean`)."""
    side = size * SUPERSAMPLE
    if style == "clean":
        base = np.zeros(3)  # black, so every shape colour below stands out
        image = Image.new("RGB", (side, side))
    else:
        background, base = textured_background(rng, size)  # smooth anyway: made at the final size, then upsampled
        image = Image.fromarray(background.astype(np.uint8)).resize((side, side), Image.BILINEAR)
    draw = ImageDraw.Draw(image)

    for _ in range(int(rng.integers(2, 6)) if style == "textured" else 0):  # clutter: dots and short strokes
        x, y = rng.uniform(0, side, 2)
        length = rng.uniform(1, 0.05 * side)
        heading = rng.uniform(0, 2 * np.pi)
        draw.line(
            (x, y, x + length * np.cos(heading), y + length * np.sin(heading)),
            fill=contrasting_colour(rng, base),
            width=int(rng.integers(1, 3)) * SUPERSAMPLE,
        )

    radii = rng.uniform(0.11, 0.17, SHAPES_PER_IMAGE) * size
    # Centres from top to bottom with at least a small gap between neighbours; the spare height is spread at
    # random (sorted uniform offsets), so absolute height says little about the class.
    gaps = radii[:-1] + radii[1:] + 0.02 * size
    spare = size - radii[0] - gaps.sum() - radii[-1]
    offsets = np.sort(rng.uniform(0, spare, SHAPES_PER_IMAGE))
    ys = radii[0] + np.concatenate([[0], np.cumsum(gaps)]) + offsets
    xs = rng.uniform(radii, size - radii)
    for shape, x, y, r in zip(ordering, xs, ys, radii):
        draw_shape(
            draw,
            shape,
            x * SUPERSAMPLE,
            y * SUPERSAMPLE,
            r * SUPERSAMPLE,
            rng.uniform(0, 2 * np.pi),
            contrasting_colour(rng, base),
        )

    pixels = np.asarray(image.resize((size, size), Image.BOX), dtype=np.float32)
    if style == "textured":
        pixels += rng.normal(0, rng.uniform(2, 12), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def write_images(root: str, split: str, start: int, stop: int, classes: int, size: int, seed: int, style: str) -> int:
    """Render and save images start..stop-1 of a split (image i belongs to class i mod classes)."""
    orderings = class_orderings(classes)
    for index in range(start, stop):
        label = index % classes
        image = render(orderings[label], size, image_rng(seed, split, index), style)
        image.save(Path(root, split, class_folder(label, orderings[label]), f"{index:06d}.png"), format="PNG")
    return stop - start


def manifest(classes: int, train: int, val: int, size: int, seed: int, style: str = "textured") -> dict:
    return {
        "generator": "efficientvit.data.synthetic",
        "version": VERSION,
        "params": {"classes": classes, "train": train, "val": val, "size": size, "seed": seed, "style": style},
        "task": "the class is the top-to-bottom order of the shapes in the image",
        "classes": [
            {"index": k, "folder": class_folder(k, o), "top_to_bottom": list(o)}
            for k, o in enumerate(class_orderings(classes))
        ],
        "counts": {"train": train, "val": val},
    }


def make_synthetic(
    out: str | os.PathLike,
    classes: int = 10,
    train: int = 10000,
    val: int = 2000,
    size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    style: str = "textured",
) -> Path:
    """Write the dataset to `out` atomically (built in a hidden sibling folder, then renamed); returns `out`.

    If `out` already holds this very dataset (same manifest), nothing is done.
    """
    out = Path(out)
    class_orderings(classes)  # checks the number of classes
    if style not in STYLES:
        raise UserError(f"--style must be one of {', '.join(STYLES)}, got {style!r}")
    for name, value, low in (("--train", train, classes), ("--val", val, classes), ("--size", size, 32)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    expected = manifest(classes, train, val, size, seed, style)
    if out.exists():
        try:
            existing = json.loads((out / "manifest.json").read_text())
            existing["params"].setdefault("style", "textured")  # written before styles existed
        except (OSError, ValueError, KeyError, TypeError):
            existing = None
        if existing == expected:
            return out
        raise UserError(f"{out} already exists and does not hold this dataset; remove it or choose another --out")

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        for split in SPLITS:
            for entry in expected["classes"]:
                (partial / split / entry["folder"]).mkdir(parents=True)
        tasks = [
            (str(partial), split, start, min(start + CHUNK, count), classes, size, seed, style)
            for split, count in (("train", train), ("val", val))
            for start in range(0, count, CHUNK)
        ]
        workers = workers or len(os.sched_getaffinity(0))
        if workers == 1:
            for task in tasks:
                write_images(*task)
        else:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(write_images, *zip(*tasks)))
        (partial / "manifest.json").write_text(json.dumps(expected, indent=2) + "\n")
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
