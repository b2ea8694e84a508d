"""`efficientvit eval`: top-1, top-5 and loss of a trained checkpoint."""

from __future__ import annotations

import argparse

from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..data.pipeline import collate
from ..data.sources import open_split
from ..errors import UserError
from ..runtime import resolve_device
from ..train import evaluate

HELP = "top-1, top-5 and loss of a trained checkpoint on an ImageFolder split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Rebuild the model a checkpoint of `efficientvit train` holds and evaluate it "
        "with the official eval transform (resize by 256/224, centre crop)."
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint written by efficientvit train")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="fashion-mnist, or an ImageFolder root (DATA/<split>/<class>/<image>)",
    )
    parser.add_argument("--split", default="val", help="split folder to evaluate (default val)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights instead of the trained ones")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (2)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (and count them) instead of stopping"
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
    dataset = open_split(args.data, args.split, model.img_size[0])
    if len(dataset.classes) != model.num_classes:
        raise UserError(
            f"{args.data}/{args.split} has {len(dataset.classes)} classes but the model predicts {model.num_classes}"
        )
    loader = DataLoader(dataset, args.batch_size, num_workers=args.workers, collate_fn=collate)
    device = resolve_device("auto")
    metrics = evaluate(model.to(device), loader, device, args.skip_bad, distributed=False)
    skipped = f", {metrics['skipped']} unreadable skipped" if metrics["skipped"] else ""
    print(
        f"{args.checkpoint}{' (EMA)' if args.ema else ''} on {args.data}/{args.split} ({len(dataset)} images"
        f"{skipped}): top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}"
    )
