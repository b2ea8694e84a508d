"""`efficientvit eval`: top-1, top-5 and loss of a trained checkpoint or of pretrained weights by name."""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..bench.modes import MODES, Entry, prepare
from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..data.pipeline import check_bad_images, collate
from ..data.sources import fixed_subset, open_split
from ..errors import UserError
from ..evaluation import evaluate, hits
from ..export import CALIBRATION_IMAGES, calibration_images
from ..runtime import resolve_device

HELP = "top-1, top-5 and loss of a trained checkpoint or pretrained name on an ImageFolder split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Rebuild the model a checkpoint of `efficientvit train` holds, or the one a pretrained name is for, and "
        "evaluate it with the official eval transform (resize by 256/224, centre crop), or, for a pretrained "
        "name, the transform published with its weights (timm's pretrained config)."
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH|NAME",
        help="checkpoint written by efficientvit train, or a pretrained name (timm/deit_tiny_patch16_224.fb_in1k, "
        "cream/efficientvit_m4: `efficientvit list --pretrained`)",
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="fashion-mnist, an ImageFolder root (DATA/<split>/<class>/<image>) or a split folder itself "
        "(DATA/<class>/<image>, e.g. /data/imagenet/val)",
    )
    parser.add_argument("--split", default="val", help="split folder to evaluate (default val)")
    parser.add_argument(
        "--images", type=int, metavar="N", help="evaluate a fixed, seeded draw of N images of the split (default all)"
    )
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights instead of the trained ones")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (2)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (and count them) instead of stopping"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        metavar="MODE",
        help="also evaluate the model as `efficientvit bench` runs it in these modes (" + ", ".join(MODES) + ") and "
        "report, for each, top-1 and how often its prediction agrees with eager fp32 (CPU)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        metavar="N",
        help=f"--modes int8: calibrate on a fixed, seeded draw of N images of the training split of --data, the "
        f"data the model learned from ({CALIBRATION_IMAGES})",
    )


def run(args: argparse.Namespace) -> None:
    model = model_from_checkpoint(args.checkpoint)
    if args.ema:
        ema_state = read_checkpoint(args.checkpoint).get("ema")
        if not ema_state:
            raise UserError(f"checkpoint {args.checkpoint} holds no EMA weights (trained with ema_decay: null)")
        averaged = AveragedModel(model)
        averaged.load_state_dict(ema_state)
        model = averaged.module
    dataset = open_split(args.data, args.split, model.img_size[0], pretrained_cfg=model.pretrained_cfg)
    if len(dataset.classes) != model.num_classes:
        raise UserError(
            f"{args.data}/{args.split} has {len(dataset.classes)} classes but the model predicts {model.num_classes}"
        )
    if args.images is not None and args.images < 1:
        raise UserError("--images must be at least 1")
    dataset = fixed_subset(dataset, args.images)
    loader = DataLoader(dataset, args.batch_size, num_workers=args.workers, collate_fn=collate)
    if args.modes:
        return compare_modes(model, loader, args)
    device = resolve_device("auto")
    metrics = evaluate(model.to(device), loader, device, args.skip_bad, distributed=False)
    skipped = f", {metrics['skipped']} unreadable skipped" if metrics["skipped"] else ""
    print(
        f"{args.checkpoint}{' (EMA)' if args.ema else ''} on {args.data}/{args.split} ({len(dataset)} images"
        f"{skipped}): top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}"
    )


def mode_logits(entry: Entry, loader: DataLoader, skip_bad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the whole split through one bench entry; the last batch is padded to the prepared
    batch size (exported and compiled graphs have a fixed shape) and the padding dropped."""
    logits, targets = [], []
    for images, labels, bad in tqdm(loader, desc=entry.mode, leave=False):
        check_bad_images(bad, skip_bad)
        if images is None:
            continue
        padding = entry.batch - len(images)
        batch = torch.cat([images, images[-1:].expand(padding, -1, -1, -1)]) if padding else images
        logits.append(entry.forward(batch)[: len(images)].float())
        targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def compare_modes(model: nn.Module, loader: DataLoader, args: argparse.Namespace) -> None:
    """Top-1 of every mode, its agreement with eager fp32's predictions, and its largest logit difference."""
    model, name, size = model.eval(), model.spec.name, model.img_size[0]
    reference, targets = mode_logits(
        prepare(model, name, "eager", batch=args.batch_size, img_size=size), loader, args.skip_bad
    )
    print(f"{args.checkpoint} on {args.data}/{args.split} ({len(targets)} images), batches of {args.batch_size}:")
    if "int8" in args.modes:
        print(f"(int8 calibrated on {args.calibration_images} images of {args.data}/train, a fixed seeded draw)")
    print("mode            top-1   top-5   same top-1 as eager fp32   max |logit diff|")
    for mode in dict.fromkeys(["eager", *args.modes]):
        if mode == "eager":
            logits = reference
        else:
            calibration = (
                calibration_images(args.data, size, args.calibration_images, pretrained_cfg=model.pretrained_cfg)
                if mode == "int8"
                else None
            )
            entry = prepare(model, name, mode, batch=args.batch_size, img_size=size, calibration=calibration)
            logits = mode_logits(entry, loader, args.skip_bad)[0]
        top1, top5 = (100 * h.item() / len(targets) for h in hits(logits, targets))
        agree = 100 * (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        diff = (logits - reference).abs().max().item()
        print(f"{mode:<15} {top1:6.2f}  {top5:6.2f}  {agree:24.2f}%  {diff:17.1e}")
