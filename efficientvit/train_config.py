"""The training recipe's configuration: `TrainConfig`, whose defaults are the official ImageNet recipe, read from a
YAML file and `--set key=value` overrides through the one coercion of typed configs (`efficientvit.config`), so a
YAML file, a flag and a pipeline preset are checked the same way and fail with the same sentences.

    config = load_config("experiments/cpu/efficientvit_m0.yaml", ["epochs=5"])
    config = make_config({"model": "deit_tiny", "epochs": 1})
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import coerce, config_from_dict, field_default, knob, unknown_key
from .data.pipeline import OFFICIAL_AUTO_AUGMENT
from .errors import UserError
from .losses import DISTILLATION_KINDS

CLIP_MODES = ("agc", "norm")
PRECISIONS = ("fp32", "bf16", "auto")
WHERE = "the training config"  # how error messages name it, whether the value came from YAML or --set


@dataclass
class TrainConfig:
    """Defaults are the official ImageNet recipe (Cream's EfficientViT main.py)."""

    model: str = knob("efficientvit_m4", "registered model name (efficientvit list)")
    model_kwargs: dict = knob({}, "extra constructor arguments, the ablation knobs, e.g. {attention: split}")
    data: str = knob("data/imagenet", "fashion-mnist, or an ImageFolder root holding train/<class>/* and val/<class>/*")
    train_images: int | None = knob(
        None,
        "train on this many images of the training split (a fixed, seeded draw; null: all): shorter runs for sweeps",
    )
    epoch_images: int | None = knob(
        None,
        "images per epoch, each epoch the next ones of seeded shuffles of the training split taken in turn (null: "
        "one pass over it): shorter epochs for finer training budgets and snapshots, every image seen once a pass",
    )
    out: str = knob("runs/efficientvit_m4", "run folder: checkpoint.pth, metrics.csv, config.yaml")
    img_size: int = knob(224, "training and evaluation image size (eval resizes to size x 256/224, then crops)")
    epochs: int = knob(300, "training epochs")
    batch_size: int = knob(256, "images per step per process (global batch = batch_size x processes)")
    workers: int = knob(8, "DataLoader worker processes per training process (0 loads in the main process)")
    lr: float = knob(1e-3, "learning rate for a global batch of 512; the run uses lr x global batch / 512")
    min_lr: float = knob(1e-5, "learning rate at the end of the cosine schedule")
    warmup_lr: float = knob(1e-6, "learning rate at the start of the linear warm-up")
    warmup_epochs: float = knob(5, "epochs of linear warm-up (fractions allowed)")
    weight_decay: float = knob(0.025, "AdamW weight decay; norms, biases and no_weight_decay() names get none")
    clip_grad: float | None = knob(0.02, "gradient clipping threshold (null: none)")
    clip_mode: str = knob("agc", "agc: adaptive, unit-wise ratio of gradient to weight norm; norm: global norm")
    smoothing: float = knob(0.1, "label smoothing")
    mixup: float = knob(0.8, "MixUp alpha (0 turns it off); MixUp or CutMix is picked per batch")
    cutmix: float = knob(1.0, "CutMix alpha (0 turns it off)")
    auto_augment: str | None = knob(OFFICIAL_AUTO_AUGMENT, "timm's augmentation policy (null: none)")
    color_jitter: float | None = knob(
        0.4, "colour-jitter strength, applied only without auto_augment (as timm does); null: none"
    )
    reprob: float = knob(0.25, "random-erasing probability")
    crop_scale: list[float] = knob([0.08, 1.0], "RandomResizedCrop area range, as fractions of the image")
    repeated_aug: bool = knob(True, "repeated augmentation: each image 3 times per epoch on different processes")
    drop_path: float = knob(0.0, "stochastic-depth rate (passed to the model as drop_path_rate when > 0)")
    ema_decay: float | None = knob(0.99996, "EMA decay per step (null: no EMA)")
    ema_warmup: bool = knob(
        False,
        "EMA decay min(ema_decay, (1 + t) / (10 + t)) at step t, so the average of a run of a few thousand steps "
        "forgets its random start (the official recipe has no warm-up)",
    )
    init: str | None = knob(
        None,
        "checkpoint of ours to start from, e.g. a pruned model, or a pretrained name (timm/deit_tiny_patch16_224"
        ".fb_in1k, cream/efficientvit_m4: `efficientvit list --pretrained`): its architecture and weights replace "
        "model/model_kwargs; a checkpoint of other classes than the data's starts with a fresh classifier",
    )
    teacher: str | None = knob(
        None,
        "teacher to distil from (the model gets a distillation head): a "
        "checkpoint of ours, a pretrained name, or a timm model name with teacher_weights",
    )
    teacher_weights: str | None = knob(
        None, "state dict of a timm teacher, e.g. regnety_160's trained weights (nothing is downloaded)"
    )
    distillation: str = knob(
        "hard", "DeiT distillation kind: hard (the teacher's top class) or soft (its distribution, at distillation_tau)"
    )
    distillation_alpha: float = knob(0.5, "weight of the distillation loss")
    distillation_tau: float = knob(1.0, "temperature of soft distillation")
    skip_bad: bool = knob(False, "skip unreadable images (and count them) instead of stopping")
    seed: int = knob(0, "seed of everything random")
    precision: str = knob(
        "fp32",
        "fp32 (the official recipe, with a gradient scaler), bf16 (autocast), or auto "
        "(bf16 where the device computes it natively: CUDA, CPUs with AVX-512 BF16 or "
        "AMX, and on a CPU only if a timed trial finds it faster)",
    )
    fast: bool = knob(
        True, "fused AdamW and channels-last for conv models (the same maths, faster); false: plain eager"
    )
    compile: bool | str = knob(
        False,
        "torch.compile the training step: true, false, or auto (compile when the run is long enough to repay "
        "compiling and a timed trial finds the compiled step faster; efficientvit.runtime.choose_speed)",
    )
    snapshots: list[int] = knob(
        [],
        "after each of these epochs also write <out>/snapshots/epoch_<E>.pth (weights, epoch, that epoch's "
        "metrics; no optimizer state): one run, one schedule of `epochs`, seen at several budgets (an epoch the "
        "run does not reach is not written)",
    )
    plateau: float | None = knob(
        None,
        "stop at the plateau: after an epoch, stop when the best val top-1 of the last plateau_epochs epochs "
        "exceeds the best of all the epochs before them by less than this many points (null: never); the stop "
        "writes a snapshot and marks metrics.csv (stopped) and the checkpoint, so a resumed run stays stopped",
    )
    plateau_epochs: int = knob(2, "the plateau rule's window: how many recent epochs must show the gain")


def config_help() -> str:
    """Every key with its default and help, for `efficientvit train --help`."""
    lines = ["config keys (defaults: the official ImageNet recipe):"]
    for f in dataclasses.fields(TrainConfig):
        default = yaml.safe_dump(field_default(f), default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"  {f.name} ({default})\n      {f.metadata['help']}")
    return "\n".join(lines)


def make_config(values: dict) -> TrainConfig:
    """A TrainConfig from plain values (as YAML gives them): keys and types checked, then the values' ranges."""
    config = config_from_dict(TrainConfig, values, WHERE)
    for key, allowed in (("clip_mode", CLIP_MODES), ("precision", PRECISIONS), ("distillation", DISTILLATION_KINDS)):
        if getattr(config, key) not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}")
    if config.compile not in (True, False, "auto"):
        raise UserError(f"compile must be true, false or auto, got {config.compile!r}")
    for key in (
        ("epochs", "batch_size", "plateau_epochs")
        + (("train_images",) if config.train_images is not None else ())
        + (("epoch_images",) if config.epoch_images is not None else ())
    ):
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.epoch_images is not None and config.repeated_aug:
        raise UserError("epoch_images and repeated_aug cannot go together: set repeated_aug: false for short epochs")
    if any(epoch < 1 for epoch in config.snapshots):
        raise UserError(f"snapshots are epochs, counted from 1, got {config.snapshots}")
    if len(config.crop_scale) != 2 or not 0 < config.crop_scale[0] <= config.crop_scale[1] <= 1:
        raise UserError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {config.crop_scale}")
    return config


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML mapping of config keys, or one sentence saying why not."""
    if not Path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{what} {path} must be a mapping of keys to values")
    return values


def check_overrides(values: dict, where: str) -> dict:
    """Training-config keys given on top of a recipe (a preset's `train`, a proxy's `set`, a fine-tune's keys),
    checked as soon as they are read, with the same sentences as a config file's: each key a field of TrainConfig
    (the nearest one named when misspelt), each value of its type. Returns them coerced."""
    hints = typing.get_type_hints(TrainConfig)
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in fields:
            raise unknown_key(key, fields, where)
    return {key: coerce(value, hints[key], f"{where}: {key}") for key, value in values.items()}


def recipe(base: str | os.PathLike | dict | None, *overrides: dict) -> TrainConfig:
    """The one way a TrainConfig is built: a base recipe (a YAML file, or its values; None: the defaults), then
    overrides in order, each later one winning (a preset's `train`, a proxy's `set`, a fine-tune's keys, then what
    the caller fixes: seed, data, out), then every key, type and range checked."""
    values = dict(base) if isinstance(base, dict) else read_yaml(base) if base is not None else {}
    for override in overrides:
        values.update(override)
    return make_config(values)


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """A YAML file of config keys, then `key=value` overrides (values read as YAML)."""
    sets = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set takes key=value, got {item!r}")
        sets[key.strip()] = yaml.safe_load(text)
    return recipe(path or None, sets)
