"""Execution modes: one eval-mode model prepared as a user would run it (BatchNorm folded, channels-last, compiled,
exported to onnxruntime, in bf16, quantized to int8), as a bench `Entry` whose `run()` is what gets timed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..export import export_onnx, quantize_onnx
from ..runtime import require
from .zoo import fold_norms

MODE_HELP = {
    "eager": "the model as built",
    "fused": "BatchNorm folded, NCHW input (ours: efficientvit.fuse, which also stores conv weights channels-last; "
    "timm: its reparameterize_model; torchvision: torch.fx conv-BN folding)",
    "channels_last": "fused, weights and input channels-last: the best eager layout of every model here on CPU",
    "compile": "channels_last through torch.compile (inductor, with weight freezing on CPU)",
    "onnxruntime": "the fused model exported to ONNX and run by onnxruntime",
    "bf16": "channels_last with weights and activations in bfloat16 (AMX/AVX-512 BF16 on recent Xeons)",
    "compile_bf16": "bf16 through torch.compile (inductor, weight freezing on CPU)",
    "int8": "the onnxruntime graph statically quantized (QDQ: int8 per-channel weights, uint8 activations calibrated "
    "on images of the training data, or on random ones for random weights; softmax, the attention-bias add and most "
    "residual adds in float: efficientvit/export.py) and run by onnxruntime's int8 kernels (CPU)",
}
MODES = tuple(MODE_HELP)
CHANNELS_LAST_MODES = ("channels_last", "compile", "bf16", "compile_bf16")
BF16_MODES = ("bf16", "compile_bf16")
COMPILED_MODES = ("compile", "compile_bf16")
# How far a mode's logits may stray from eager fp32, relative to the largest |logit| (what tests hold modes to).
MODE_TOLERANCE = {
    "eager": 0.0,
    "fused": 1e-4,
    "channels_last": 1e-4,
    "compile": 1e-4,
    "onnxruntime": 1e-4,
    "bf16": 0.1,
    "compile_bf16": 0.1,
    "int8": 0.1,
}
CALIBRATION_SEED = 1  # random calibration images, not the timed batch (seed 0 in the bench)


def check_mode(mode: str, device: str = "cpu") -> None:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "int8" and device != "cpu":
        raise UserError("mode int8 runs on the CPU only (onnxruntime's int8 kernels); use --device cpu")


@dataclass
class Entry:
    """One model prepared in one mode: `run()` pushes the prepared batch through it and returns the logits (what is
    timed); `forward(images)` does the same for a batch of fp32 NCHW images of the prepared shape, converted to the
    mode's layout and precision first."""

    name: str
    mode: str
    run: Callable[[], Any]
    batch: int
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None


def onnx_session(
    model: nn.Module,
    x: torch.Tensor,
    threads: int,
    device: str,
    profile_prefix: str | None = None,
    calibration: torch.Tensor | None = None,
):
    """An onnxruntime session on the ONNX export of `model` for inputs shaped like `x` (the file is temporary);
    with `calibration` images, on that export quantized to int8 (`efficientvit.export.quantize_onnx`); with
    `profile_prefix`, onnxruntime's profiler records every node run (`session.end_profiling()` writes it)."""
    ort = require("onnxruntime", "--mode onnxruntime")
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    export_onnx(model, tmp.name, x, channels_last=calibration is not None)  # int8: traced as it runs (export.py)
    if calibration is not None:
        quantize_onnx(tmp.name, tmp.name, calibration, len(x))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(tmp.name, options, providers=providers)
    os.unlink(tmp.name)
    return session


def onnxruntime_entry(
    graph: nn.Module,
    name: str,
    x: torch.Tensor,
    batch: int,
    threads: int,
    device: str,
    calibration: torch.Tensor | None = None,
) -> Entry:
    """The onnxruntime mode, or with `calibration` images the int8 one."""
    session = onnx_session(graph, x, threads, device, calibration=calibration)
    input_name = session.get_inputs()[0].name

    def infer(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: images.numpy()})[0])

    feed = x.numpy()
    mode = "onnxruntime" if calibration is None else "int8"
    return Entry(name, mode, lambda: torch.from_numpy(session.run(None, {input_name: feed})[0]), batch, infer)


def compiled(graph: nn.Module, device: torch.device) -> nn.Module:
    """`graph` through torch.compile (inductor; on CPU with its weights frozen)."""
    # Every model of one class shares its forward's code object, and dynamo compiles at most `recompile_limit`
    # graphs per code object: past it, a model would silently run eager. Room for every model of a bench run,
    # and an error rather than eager beyond that.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.fail_on_recompile_limit_hit = True
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: prepacked, BN/ReLU/add fused into the convs
    return torch.compile(graph, options={"guard_filter_fn": identity_guards_only})


def identity_guards_only(guards: list) -> list[bool]:
    """Which of dynamo's guards a compiled bench model keeps: all but those re-checking its modules' attributes
    (hook dicts, flags, types) before every call, a cost that grows with the Python logic of a block and is timed
    with the model. A timed model never changes after compiling (freezing already assumes it of the weights); the
    identity checks on its parameters stay, so two models of one class never share a compiled graph."""
    return [g.guard_type == "ID_MATCH" or not g.orig_guard.source.is_unspecialized_nn_module() for g in guards]


def prepare(
    model: nn.Module,
    name: str,
    mode: str,
    device: str = "cpu",
    batch: int = 16,
    img_size: int = 224,
    threads: int | None = None,
    x: torch.Tensor | None = None,
    calibration: torch.Tensor | None = None,
) -> Entry:
    """Turn an eval-mode `model` into a bench entry for `mode` (the model itself is left untouched). int8 is
    calibrated on the `calibration` images, by default 4 batches of seeded random ones (random weights see random
    inputs in a bench; a trained model's images come from its training data: `export.calibration_images`)."""
    check_mode(mode, device)
    threads = threads or torch.get_num_threads()
    dev = torch.device(device)
    x = torch.randn(batch, 3, img_size, img_size) if x is None else x
    graph = model if mode == "eager" else fold_norms(model, name)
    if mode == "int8" and calibration is None:
        calibration = torch.randn(4 * batch, *x.shape[1:], generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    if mode in ("onnxruntime", "int8"):
        return onnxruntime_entry(graph, name, x, batch, threads, device, calibration if mode == "int8" else None)

    def convert(images: torch.Tensor) -> torch.Tensor:
        images = images.to(dev)
        if mode in CHANNELS_LAST_MODES:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.to(torch.bfloat16) if mode in BF16_MODES else images

    graph = graph.to(dev)
    x = convert(x)
    if mode in CHANNELS_LAST_MODES:
        graph = graph.to(memory_format=torch.channels_last)
    if mode in BF16_MODES:
        graph = graph.to(torch.bfloat16)
    module = compiled(graph, dev) if mode in COMPILED_MODES else graph
    # The paper's GPU protocol runs under AMP; bf16 already chose its precision.
    amp = dev.type == "cuda" and mode not in BF16_MODES

    @torch.inference_mode()
    def call(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            out = module(images)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out.float()

    return Entry(name, mode, lambda: call(x), batch, lambda images: call(convert(images)).cpu())
