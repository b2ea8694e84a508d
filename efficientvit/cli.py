"""The `efficientvit` command. Every subcommand explains itself with --help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError


def parse_img_size(text: str) -> tuple[int, int]:
    """'224' or '224x320' (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW with positive numbers, got {text!r}")
    return parts[0], parts[1]


def cmd_list(args: argparse.Namespace) -> None:
    from .models import list_models, model_family

    for name in list_models(args.family):
        print(f"{name:24s} {model_family(name)}")


def describe(name: str, img_size: tuple[int, int] | None, throughput: bool,
             threads: int | None) -> tuple[dict, torch.nn.Module]:
    from .bench import measure_throughput
    from .flops import count_flops, count_params
    from .fuse import fuse
    from .models import create_model

    model = create_model(name, **({"img_size": img_size} if img_size else {})).eval()
    fused = fuse(model)
    row = {
        "model": name,
        "img_size": "x".join(map(str, model.img_size)),
        "params": count_params(model),
        "params_fused": count_params(fused),
        "mflops_fused": round(count_flops(fused) / 1e6, 1),
        "mflops_unfused": round(count_flops(model) / 1e6, 1),
    }
    if throughput:
        if threads:
            torch.set_num_threads(threads)
        row["cpu_img_s_b16_fused"] = round(measure_throughput(fused, batch_size=16), 1)
    return row, model


def cmd_info(args: argparse.Namespace) -> None:
    rows = []
    for name in args.models:
        row, model = describe(name, args.img_size, args.throughput, args.threads)
        rows.append(row)
    if len(rows) == 1:
        row = rows[0]
        print(f"{row['model']}  ({row['img_size']} input)")
        if row["params"] == row["params_fused"]:  # no BatchNorm to fold
            print(f"  parameters  {row['params']:,}")
            print(f"  FLOPs       {row['mflops_fused']} M (fvcore)")
        else:
            print(f"  parameters  {row['params']:,}   (BN fused: {row['params_fused']:,})")
            print(f"  FLOPs       {row['mflops_fused']} M BN fused   ({row['mflops_unfused']} M unfused; fvcore)")
        if "cpu_img_s_b16_fused" in row:
            print(f"  throughput  {row['cpu_img_s_b16_fused']} img/s (CPU, batch 16, fused, {torch.get_num_threads()} threads)")
        if getattr(model, "stage_info", None):
            stages = pd.DataFrame(model.stage_info)
            for col in ("resolution", "window"):
                if col in stages:
                    stages[col] = stages[col].map(lambda hw: f"{hw[0]}x{hw[1]}")
            print("\n" + stages.to_string(index=False))
    else:
        table = pd.DataFrame(rows)
        print(table.to_string(index=False, formatters={c: "{:,}".format for c in ("params", "params_fused")}))


def cmd_make_data(args: argparse.Namespace) -> None:
    import time

    from .data import fashion_mnist
    from .data.synthetic import make_synthetic

    started = time.perf_counter()
    if args.kind == fashion_mnist.NAME:
        out = fashion_mnist.prepare(args.out, args.source)
        print(f"{out}: Fashion-MNIST, 60,000 train + 10,000 val images ({time.perf_counter() - started:.1f} s); "
              f"train on it with data: {out}")
        return
    out = make_synthetic(args.out, classes=args.classes, train=args.train, val=args.val, size=args.size,
                         seed=args.seed, workers=args.workers, style=args.style)
    print(f"{out}: {args.train} train + {args.val} val {args.style} images of {args.classes} classes at {args.size} px "
          f"({time.perf_counter() - started:.1f} s)")


def cmd_train(args: argparse.Namespace) -> None:
    from .train import run

    run(args)


def cmd_eval(args: argparse.Namespace) -> None:
    from torch.optim.swa_utils import AveragedModel
    from torch.utils.data import DataLoader

    from .checkpoint import model_from_checkpoint, read_checkpoint
    from .data.pipeline import collate
    from .data.sources import open_split
    from .train import evaluate

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
        raise UserError(f"{args.data}/{args.split} has {len(dataset.classes)} classes but the model predicts "
                        f"{model.num_classes}")
    loader = DataLoader(dataset, args.batch_size, num_workers=args.workers, collate_fn=collate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate(model.to(device), loader, device, args.skip_bad, distributed=False)
    skipped = f", {metrics['skipped']} unreadable skipped" if metrics["skipped"] else ""
    print(f"{args.checkpoint}{' (EMA)' if args.ema else ''} on {args.data}/{args.split} ({len(dataset)} images"
          f"{skipped}): top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}")


def cmd_subnet(args: argparse.Namespace) -> None:
    from .subnet import find_subnet, save_model_config

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    result = find_subnet(args.family, args.speedup, args.mhsa, img_size=args.img_size, device=args.device,
                         cache=None if args.no_cache else args.cache)
    out = args.out or f"runs/subnets/{args.family}_{args.speedup}x_mhsa{args.mhsa}.yaml"
    path = save_model_config(result, out)
    print(f"{args.family} subnet for {args.speedup}x, MHSA proportion {args.mhsa}:")
    for key, value in result["kwargs"].items():
        print(f"  {key}: {value}")
    print(f"achieved speed-up {result['speedup_measured']}x ({result['throughput']} vs "
          f"{result['full_throughput']} img/s, batch 16, {args.device})")
    if not result["met"]:
        print(f"the target {args.speedup}x cannot be met within 7% at this MHSA proportion; "
              "this is the nearest configuration found")
    print(f"configuration written to {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientvit",
        description="EfficientViT (CVPR 2023) models and the tools that reproduce the paper's analyses.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("--family", help="only this family (efficientvit, deit, swin)")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("info", help="parameters, FLOPs and per-stage shapes of one or more models",
                       description="Parameters (as built and with BatchNorm folded), fvcore FLOPs per image "
                                   "(multiply-adds, attention matmuls included) and, for one model, the resolution, "
                                   "width, depth, heads and attention window of every stage.")
    p.add_argument("models", nargs="+", metavar="NAME", help="registered model names (see `efficientvit list`)")
    p.add_argument("--img-size", type=parse_img_size, help="input size, N or HxW (default: the model's, 224)")
    p.add_argument("--throughput", action="store_true",
                   help="also time the BN-fused model on this CPU (batch 16, about one second per model)")
    p.add_argument("--threads", type=int, help="CPU threads for --throughput (default: torch's choice)")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("make-data", help="prepare Fashion-MNIST, or generate the shapes dataset",
                       description="fashion-mnist: the real data set of the CPU presets (70,000 28x28 product "
                                   "photos, 10 classes), found in --source, else in the Debian package "
                                   "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), else downloaded by "
                                   "torchvision when online; every file is checked, and DIR becomes a torchvision "
                                   "root that any --data or data: accepts. (`data: fashion-mnist` does the same "
                                   "into data/fashion-mnist on first use.) synthetic: an ImageFolder tree "
                                   "(train/<class>/*.png, val/<class>/*.png) and manifest.json; each image holds "
                                   "two shapes (circle, square, triangle, cross), the class is which lies above "
                                   "the other, over random positions, textures, colours, sizes and noise. Same "
                                   "arguments, same bytes.")
    p.add_argument("kind", choices=["fashion-mnist", "synthetic"], help="which dataset")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to create (written to a hidden sibling, then renamed: never half-written)")
    p.add_argument("--source", metavar="DIR", help="fashion-mnist: folder holding the four .gz files "
                                                   "(default: the Debian package's folder)")
    p.add_argument("--classes", type=int, default=10,
                   help="synthetic: number of classes, 2 to 12 (ordered pairs of 4 shapes; default 10)")
    p.add_argument("--train", type=int, default=10000,
                   help="synthetic: training images, spread evenly over classes (10000)")
    p.add_argument("--val", type=int, default=2000, help="synthetic: validation images (2000)")
    p.add_argument("--size", type=int, default=64, help="synthetic: image side in pixels (64)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed (0)")
    p.add_argument("--workers", type=int, help="synthetic: processes drawing images (default: one per CPU core)")
    p.add_argument("--style", choices=["textured", "clean"], default="textured",
                   help="textured (default): textured background, clutter and noise; clean: the same shapes and "
                        "classes on a black background, without clutter or noise")
    p.set_defaults(run=cmd_make_data)

    from .train import add_arguments

    p = sub.add_parser("train", help="train a model with the official recipe (also under torchrun)",
                       description="Train with the official EfficientViT recipe. Writes <out>/checkpoint.pth "
                                   "and <out>/metrics.csv after every epoch. For many processes: "
                                   "torchrun --nproc_per_node N -m efficientvit.train --config ...")
    add_arguments(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("eval", help="top-1, top-5 and loss of a trained checkpoint on an ImageFolder split",
                       description="Rebuild the model a checkpoint of `efficientvit train` holds and evaluate it "
                                   "with the official eval transform (resize by 256/224, centre crop).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint written by efficientvit train")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="fashion-mnist, or an ImageFolder root (DATA/<split>/<class>/<image>)")
    p.add_argument("--split", default="val", help="split folder to evaluate (default val)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights instead of the trained ones")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (2)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (and count them) instead of stopping")
    p.set_defaults(run=cmd_eval)

    from .subnet import DEFAULT_CACHE, FAMILIES

    p = sub.add_parser("subnet", help="a throughput-matched DeiT/Swin subnet with a given MHSA proportion (Fig. 3)",
                       description="Keep the full model's number of layers, make a share --mhsa of them attention "
                                   "layers (spread evenly), and search the width until the subnet runs --speedup "
                                   "times faster than the full model on this device (interleaved timing). Writes "
                                   "the configuration as YAML; results are cached.")
    p.add_argument("--family", required=True, choices=FAMILIES, help="the full model to shrink")
    p.add_argument("--speedup", type=float, required=True, help="target speed-up over the full model, e.g. 1.25")
    p.add_argument("--mhsa", type=float, required=True, help="share of attention layers, 0 to 1")
    p.add_argument("--img-size", type=int, help="input size (default 224)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time the models")
    p.add_argument("--out", help="YAML to write (default runs/subnets/<family>_<speedup>x_mhsa<p>.yaml)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"timing cache (default {DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="measure again even if the cache has this call")
    p.set_defaults(run=cmd_subnet)

    from .reproduce import add_arguments as add_reproduce_arguments, run as run_reproduce

    p = sub.add_parser("reproduce", help="run every analysis of the paper end to end, with figures and a report",
                       description="Make the data, train the proxies, run Figs. 2-5 and the variant designer, "
                                   "execute the notebooks (figures in <out>/figures) and write <out>/REPORT.md. "
                                   "Interrupted, it continues where it stopped when run again.")
    add_reproduce_arguments(p)
    p.set_defaults(run=run_reproduce)

    from . import bench, export

    p = sub.add_parser("bench", help="throughput, latency, memory and share of peak, models timed in turns",
                       description="The paper's protocol: random weights, eval mode, warm-up, then batches until a "
                                   "time budget; the models (and --vs references) are timed in turns for --rounds "
                                   "rounds, so their ratios come from one run. Names: `efficientvit list`, "
                                   f"{', '.join(bench.TORCHVISION_MODELS)} (torchvision), timm:<name> (timm). "
                                   "Modes: " + "; ".join(f"{k}: {v}" for k, v in bench.MODE_HELP.items()) + ".")
    p.add_argument("models", nargs="+", metavar="MODEL", help="models to time")
    p.add_argument("--vs", nargs="+", metavar="MODEL", help="references: also timed, and every model's speed-up over "
                                                            "each is printed (each side in its fastest mode)")
    p.add_argument("--mode", nargs="+", default=["channels_last"], choices=bench.MODES, metavar="MODE",
                   help=f"one or more of {', '.join(bench.MODES)} (default channels_last: fused, the best eager "
                        "layout of every model here on CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, help="images per batch (default 16 on CPU, 2048 on CUDA under AMP)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: torch's choice)")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (224)")
    p.add_argument("--seconds", type=float, default=1.0, help="time budget of one measurement, after warm-up (1.0)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians and spreads are over them (5)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a process per entry)")
    p.add_argument("--out", metavar="CSV", help="write every round's sample (long format, plus a .json sidecar)")
    p.set_defaults(run=bench.cli_main)

    p = sub.add_parser("export", help="export a model to ONNX or TorchScript, checked against PyTorch",
                       description="Trace a registered model (random weights, or --checkpoint) and write it "
                                   "atomically; the file is then run (onnxruntime / torch.jit.load) and the max abs "
                                   "difference to PyTorch printed. Time an ONNX graph with `bench --mode onnxruntime`.")
    p.add_argument("format", choices=export.FORMATS, help="onnx or torchscript")
    p.add_argument("name", metavar="NAME", help="registered model name (see `efficientvit list`)")
    p.add_argument("--checkpoint", metavar="PATH", help="weights to load (ours, official or timm layout)")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convs first (for inference)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    p.add_argument("--opset", type=int, default=export.DEFAULT_OPSET, help=f"ONNX opset ({export.DEFAULT_OPSET})")
    p.add_argument("--img-size", type=int, default=224, help="input side in pixels (224)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (never left half-written)")
    p.set_defaults(run=export.cli_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"efficientvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
