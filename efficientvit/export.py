"""Export a model to ONNX or TorchScript, written atomically and checked against PyTorch before it is kept.

ONNX goes through the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): for these models it
is quicker, needs no extra packages, and its graph runs in onnxruntime within 1e-5 of PyTorch; the dynamo
exporter gives the same graph after seconds more of tracing.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .errors import UserError
from .files import atomic_path
from .fuse import fuse
from .models import create_model
from .runtime import require

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
# 14: the oldest opset every family exports to (DeiT and Swin's attention needs it); 20: the newest the
# TorchScript-based exporter writes
MIN_OPSET, MAX_OPSET = 14, 20


def export_onnx(
    model: nn.Module, path: str | os.PathLike, x: torch.Tensor, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET
) -> Path:
    """Write `model` (eval mode, on the CPU, contiguous layout) traced on `x` as ONNX to `path`, atomically."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"ONNX opset must be between {MIN_OPSET} and {MAX_OPSET} (what every model here exports to), got {opset}"
        )
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    with atomic_path(path, make_parents=False) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about constant shapes, which hold for a fixed size
        torch.onnx.export(
            model,
            (x.cpu().contiguous(),),
            tmp,
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
    return Path(path)


def export_torchscript(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> Path:
    """Write `model` traced on `x` (`torch.jit.trace`) to `path`, atomically."""
    with atomic_path(path, make_parents=False) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), x), tmp)
    return Path(path)


def onnx_max_abs_diff(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> float:
    """Largest |onnxruntime output - PyTorch output| on `x`."""
    ort = require("onnxruntime", "checking an ONNX export")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(x)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return (torch.from_numpy(got) - expected).abs().max().item()


def torchscript_max_abs_diff(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> float:
    loaded = torch.jit.load(os.fspath(path))
    with torch.no_grad():
        return (loaded(x) - model.eval()(x)).abs().max().item()


def export(
    fmt: str,
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int = 224,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
) -> float:
    """Export and check: returns the max abs difference to PyTorch on a random batch (of 2 with a dynamic batch
    dimension, so the check also exercises a batch other than the traced one)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require("onnxruntime", "checking an ONNX export")
    x = torch.randn(1, 3, img_size, img_size)
    check = torch.randn(2 if dynamic_batch or fmt == "torchscript" else 1, 3, img_size, img_size)
    if fmt == "onnx":
        export_onnx(model, path, x, dynamic_batch, opset)
        return onnx_max_abs_diff(path, model, check)
    export_torchscript(model, path, x)
    return torchscript_max_abs_diff(path, model, check)


HELP = "export a model to ONNX or TorchScript, checked against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Trace a registered model (random weights, or --checkpoint) and write it "
        "atomically; the file is then run (onnxruntime / torch.jit.load) and the max abs "
        "difference to PyTorch printed. Time an ONNX graph with `bench --mode onnxruntime`."
    )
    parser.add_argument("format", choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("name", metavar="NAME", help="registered model name (see `efficientvit list`)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH|NAME",
        help="weights to load: a file (ours, official or timm layout) or a pretrained name for NAME's model "
        "(timm/efficientvit_m4.r224_in1k, cream/efficientvit_m4: `efficientvit list --pretrained`)",
    )
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convs first (for inference)")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset ({DEFAULT_OPSET})")
    parser.add_argument("--img-size", type=int, default=224, help="input side in pixels (224)")
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write (never left half-written)")


def run(args: argparse.Namespace) -> None:
    """`efficientvit export FORMAT NAME ...`: build (and load) the model, export it, print the check."""
    model = create_model(args.name, img_size=args.img_size).eval()
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    if args.fuse:
        model = fuse(model)
    diff = export(args.format, model, args.out, args.img_size, args.dynamic_batch, args.opset)
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    print(
        f"{args.out}: {args.name}{' (BN fused)' if args.fuse else ''} as {args.format}; max abs difference to "
        f"PyTorch through {runner}: {diff:.2e}"
    )
