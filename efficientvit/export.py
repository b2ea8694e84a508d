"""Export a model to ONNX, int8 ONNX or TorchScript, written atomically and checked against PyTorch before it is kept.

ONNX goes through the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): for these models it
is quicker, needs no extra packages, and its graph runs in onnxruntime within 1e-5 of PyTorch; the dynamo
exporter gives the same graph after seconds more of tracing.

int8 is static post-training quantization by onnxruntime (`quantize_static`): the BN-fused model's ONNX graph in
the QDQ format, weights int8 per output channel (symmetric), activations uint8 with one scale and zero point per
tensor from the min and max that N calibration images of the training data reach. Quantized, in int8 arithmetic
(onnxruntime's VNNI kernels): the convolutions (the stem, the pointwise and depthwise convs, Q/K/V and the
projections, with BatchNorm folded into their weights first, which is why the weights need a scale per channel),
the classifier's Linear and the attention's two matmuls, and the data movement between them (split, reshape,
transpose, concat, ReLU), so int8 tensors flow from one to the next without a round trip through float.
In float: the softmax (its exponentials and normalisation need the range float gives, and its input, logits
plus bias, spans orders of magnitude that one uint8 scale would flatten), the attention-bias add and the scale
before it (the bias is a learned table of a few hundred values, cheap in float, and adding it in int8 would
requantize the logits), the residual adds (two tensors of different ranges; float keeps the skip path exact),
the squeeze-excite's pooling and sigmoid, and any LayerNorm (the `ln` ablation; statistics over channels need
float). Only `INT8_OPS` are quantized; every other operator runs in float between a dequantize and a quantize.
One exception at run time: onnxruntime fuses an add whose inputs both come out of a dequantize and whose output
only goes into a quantize into its int8 `QLinearAdd`: in EfficientViT that takes the depthwise convs' and the
downsamplings' residuals and some FFN residuals and cascade adds; the rest stay float. The measured agreement
with fp32 (benchmarks/README.md) includes them.

The int8 graph is traced from the channels-last model, the fp32 one from the contiguous model. onnxruntime runs
int8 convolutions in NHWC and puts a transpose wherever an operator needs the NCHW the graph was written in;
its fp32 convolutions run in a blocked NCHW layout. Traced channels-last, EfficientViT's attention heads are
written token-major (permute, then reshape), and those permutes cancel against the NHWC convolutions around
them; traced contiguous, channel-major (reshape, then transpose), which the fp32 layout runs faster (timings:
benchmarks/README.md).
Choosing between this and PyTorch's PT2E flow (x86 inductor quantizer): benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import model_from_checkpoint
from .data.pipeline import check_bad_images, collate
from .data.sources import fixed_subset, open_split
from .errors import UserError
from .files import atomic_path
from .fuse import fuse
from .models import ModelSpec, create_model
from .runtime import require

FORMATS = ("onnx", "int8", "torchscript")
# The operators int8 quantizes (the module docstring says why these and not the others)
INT8_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Split", "Slice", "Concat", "Reshape", "Transpose", "Flatten", "Pad")
CALIBRATION_IMAGES = 256
CALIBRATION_SEED = 0
DEFAULT_OPSET = 17
# 14: the oldest opset every family exports to (DeiT and Swin's attention needs it); 20: the newest the
# TorchScript-based exporter writes
MIN_OPSET, MAX_OPSET = 14, 20


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    x: torch.Tensor,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    channels_last: bool = False,
) -> Path:
    """Write `model` (eval mode, on the CPU) traced on `x` as ONNX to `path`, atomically. The graph computes the
    same in either layout; the layout it is traced in (`channels_last`) chooses which of a model's equivalent
    forms it records, where a model has several (EfficientViT's attention heads: module docstring)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"ONNX opset must be between {MIN_OPSET} and {MAX_OPSET} (what every model here exports to), got {opset}"
        )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().cpu().to(memory_format=layout)
    with atomic_path(path, make_parents=False) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about constant shapes, which hold for a fixed size
        torch.onnx.export(
            model,
            (x.cpu().contiguous(memory_format=layout),),
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


def has_vnni() -> bool:
    """AVX-512 VNNI, AVX-VNNI or AMX: uint8 x int8 dot products summed in 32 bits in one instruction. Without them
    onnxruntime's uint8 x int8 kernels can overflow their 16-bit sums unless weights keep 7 bits (reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags) is not None


def calibration_images(
    data: str,
    img_size: int,
    images: int = CALIBRATION_IMAGES,
    split: str = "train",
    pretrained_cfg: dict | None = None,
) -> torch.Tensor:
    """A fixed, seeded draw of `images` images of `data`'s `split` (by default the training data, what the model
    learned from, never the split it is evaluated on), through the evaluation transform (the one published with
    pretrained weights: `pretrained_cfg`), as one batch."""
    if images < 1:
        raise UserError(f"int8 needs at least one calibration image, got {images}")
    dataset = fixed_subset(open_split(data, split, img_size, pretrained_cfg=pretrained_cfg), images, CALIBRATION_SEED)
    batches = []
    for batch, _, bad in DataLoader(dataset, batch_size=64, collate_fn=collate):
        check_bad_images(bad, skip_bad=False)
        batches.append(batch)
    return torch.cat(batches)


def calibration_feed(images: torch.Tensor, batch: int, input_name: str):
    """onnxruntime's calibration reader over `images` in batches of `batch`, served a range of batches at a time
    (`set_range`: the calibrator then merges each range's minima and maxima into the last, so its memory holds
    one range's activations, not every image's). The last batch is padded with copies of its last image: a graph
    traced at a fixed batch takes no other, and a repeated image moves no minimum or maximum."""
    quantization = require("onnxruntime.quantization", "int8 quantization")
    padding = -len(images) % batch
    batches = torch.cat([images, images[-1:].expand(padding, -1, -1, -1)]).split(batch)

    class Feed(quantization.CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.served = iter(batches[start_index:end_index])

        def get_next(self) -> dict | None:
            chunk = next(self.served, None)
            return None if chunk is None else {input_name: chunk.contiguous().numpy()}

    return Feed()


def quantize_onnx(fp32: str | os.PathLike, path: str | os.PathLike, calibration: torch.Tensor, batch: int) -> Path:
    """The fp32 ONNX graph `fp32` statically quantized to int8 (QDQ; the module docstring says how), calibrated on
    the `calibration` images fed in batches of `batch`, written to `path` atomically."""
    quantization = require("onnxruntime.quantization", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder, atomic_path(path, make_parents=False) as tmp:
        prepared = os.path.join(folder, "prepared.onnx")
        # shape inference and onnxruntime's own graph clean-up before quantizing, as its quantization guide asks
        quant_pre_process(os.fspath(fp32), prepared, skip_symbolic_shape=True)
        quantization.quantize_static(
            prepared,
            tmp,
            calibration_feed(calibration, batch, "input"),
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OPS),
            per_channel=True,
            reduce_range=not has_vnni(),
            # uint8 activations: onnxruntime's x86 kernels multiply uint8 by int8 (VNNI's vpdpbusd); int8 by int8
            # has no such kernel and runs slower than fp32 here
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            # one batch at a time, ranges merged: calibration memory does not grow with the number of images
            extra_options={"CalibStridedMinMax": 1},
        )
    return Path(path)


def export_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: torch.Tensor,
    batch: int = 16,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """`model` with its BatchNorms folded, exported to ONNX for batches of `batch` (any batch with
    `dynamic_batch`) and quantized to int8, calibrated on the `calibration` images (N, 3, H, W)."""
    x = torch.zeros(batch, *calibration.shape[1:])
    with tempfile.TemporaryDirectory() as folder:
        fp32 = os.path.join(folder, "fp32.onnx")
        export_onnx(fuse(model, channels_last=False), fp32, x, dynamic_batch, opset, channels_last=True)
        return quantize_onnx(fp32, path, calibration, batch)


def int8_agreement(path: str | os.PathLike, model: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Share of `images` on which the int8 graph at `path` predicts PyTorch's fp32 top-1, and its largest |logit
    difference|. The images go in batches of the graph's batch size, or all at once when it is free."""
    ort = require("onnxruntime", "checking an int8 export")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    with torch.no_grad():
        expected = model.eval()(images)
    chunks = images.split(batch if isinstance(batch, int) else len(images))
    got = torch.cat([torch.from_numpy(session.run(None, {name: chunk.numpy()})[0]) for chunk in chunks])
    return (got.argmax(1) == expected.argmax(1)).float().mean().item(), (got - expected).abs().max().item()


def export(
    fmt: str,
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int = 224,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
) -> float:
    """Export and check: returns the max abs difference to PyTorch on a random batch (of 2 with a dynamic batch
    dimension, so the check also exercises a batch other than the traced one). int8: `run_int8`."""
    if fmt not in FORMATS or fmt == "int8":
        raise UserError(f"unknown export format {fmt!r}: choose one of onnx, torchscript")
    if fmt == "onnx":
        require("onnxruntime", "checking an ONNX export")
    x = torch.randn(1, 3, img_size, img_size)
    check = torch.randn(2 if dynamic_batch or fmt == "torchscript" else 1, 3, img_size, img_size)
    if fmt == "onnx":
        export_onnx(model, path, x, dynamic_batch, opset)
        return onnx_max_abs_diff(path, model, check)
    export_torchscript(model, path, x)
    return torchscript_max_abs_diff(path, model, check)


HELP = "export a model to ONNX, int8 ONNX or TorchScript, checked against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Trace a registered model (random weights, or --checkpoint) and write it "
        "atomically; the file is then run (onnxruntime / torch.jit.load) and the max abs "
        "difference to PyTorch printed. Time an ONNX graph with `bench --mode onnxruntime`, an int8 one with "
        "`bench --mode int8`."
    )
    parser.add_argument(
        "format",
        choices=FORMATS,
        help="onnx, int8 (ONNX statically quantized by onnxruntime, BN folded, calibrated on --calibration-data) "
        "or torchscript",
    )
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
    parser.add_argument(
        "--calibration-data",
        metavar="DATA",
        help="int8: the data set the model was trained on (fashion-mnist or an ImageFolder root), whose --calibration-"
        "split images set the activation ranges",
    )
    parser.add_argument("--calibration-split", default="train", help="int8: the split calibrated on (train)")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"int8: images calibrated on, a fixed seeded draw ({CALIBRATION_IMAGES})",
    )


def run(args: argparse.Namespace) -> None:
    """`efficientvit export FORMAT NAME ...`: build (and load) the model, export it, print the check."""
    if args.checkpoint:  # the model the checkpoint holds (a pretrained name's, or ours with its own settings)
        model = model_from_checkpoint(args.checkpoint, ModelSpec(args.name), img_size=args.img_size).eval()
        if model.spec.name != args.name:
            raise UserError(f"{args.checkpoint} holds {model.spec.name}, not {args.name}: name the model it holds")
    else:
        model = create_model(args.name, img_size=args.img_size).eval()
    if args.fuse:
        model = fuse(model)
    if args.format == "int8":
        return run_int8(args, model)
    diff = export(args.format, model, args.out, args.img_size, args.dynamic_batch, args.opset)
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    print(
        f"{args.out}: {args.name}{' (BN fused)' if args.fuse else ''} as {args.format}; max abs difference to "
        f"PyTorch through {runner}: {diff:.2e}"
    )


def run_int8(args: argparse.Namespace, model: nn.Module) -> None:
    """`efficientvit export int8 NAME ...`: calibrate on the training data, quantize, and check the file against
    PyTorch fp32 on the calibration images (random inputs would fall outside the calibrated ranges)."""
    if not args.calibration_data:
        raise UserError(
            "int8 export needs calibration images: give --calibration-data (the data the model was trained on)"
        )
    require("onnxruntime", "int8 export")
    images = calibration_images(
        args.calibration_data,
        args.img_size,
        args.calibration_images,
        args.calibration_split,
        getattr(model, "pretrained_cfg", None),
    )
    export_int8(model, args.out, images, 1, args.dynamic_batch, args.opset)
    agreement, diff = int8_agreement(args.out, model, images)
    print(
        f"{args.out}: {args.name} as int8 ONNX (BN fused), calibrated on {len(images)} images of "
        f"{args.calibration_data}/{args.calibration_split}; on them, through onnxruntime, the same top-1 as PyTorch "
        f"fp32 for {100 * agreement:.1f}% and a max abs logit difference of {diff:.2e}"
    )
