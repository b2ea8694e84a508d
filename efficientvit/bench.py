"""Throughput as the paper measures it: random weights, eval mode, warm-up, then timed batches until a time budget.

CPU: batch 16; GPU: batch 2048 under AMP (fp16). Models compared in one call are timed in turns, round after
round, so every model sees the same drift of a shared machine and their ratio is measured, not inferred.

A bench entry is a model name and a mode (`MODE_HELP`). Names: every registered model, torchvision's mobile CNNs,
and timm's models as `timm:<name>`.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import difflib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import timm
import torch
import torchvision
from timm.utils.model import reparameterize_model
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse

from .errors import UserError
from .export import export_onnx
from .files import atomic_write_text
from .flops import count_flops
from .fuse import fuse
from .models import create_model, list_models
from .runtime import out_of_memory, peak_matmul_macs, require, resolve_device

MODE_HELP = {
    "eager": "the model as built",
    "fused": "BatchNorm folded, NCHW input (ours: efficientvit.fuse, which also stores conv weights channels-last; "
    "timm: its reparameterize_model; torchvision: torch.fx conv-BN folding)",
    "channels_last": "fused, weights and input channels-last: the best eager layout of every model here on CPU",
    "compile": "channels_last through torch.compile (inductor, with weight freezing on CPU)",
    "onnxruntime": "the fused model exported to ONNX and run by onnxruntime",
    "bf16": "channels_last with weights and activations in bfloat16 (AMX/AVX-512 BF16 on recent Xeons)",
    "compile_bf16": "bf16 through torch.compile (inductor, weight freezing on CPU)",
}
MODES = tuple(MODE_HELP)
CHANNELS_LAST_MODES = ("channels_last", "compile", "bf16", "compile_bf16")
BF16_MODES = ("bf16", "compile_bf16")
COMPILED_MODES = ("compile", "compile_bf16")
TORCHVISION_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf")
TIMM_PREFIX = "timm:"
# How far a mode's logits may stray from eager fp32, relative to the largest |logit| (what tests hold modes to).
MODE_TOLERANCE = {
    "eager": 0.0,
    "fused": 1e-4,
    "channels_last": 1e-4,
    "compile": 1e-4,
    "onnxruntime": 1e-4,
    "bf16": 0.1,
    "compile_bf16": 0.1,
}


def model_names() -> list[str]:
    names = list_models() + list(TORCHVISION_MODELS)
    names += [TIMM_PREFIX + n for n in timm.list_models("efficientvit_m*")]
    return names


def check_name(name: str) -> None:
    if name in list_models() or name in TORCHVISION_MODELS:
        return
    if name.startswith(TIMM_PREFIX):
        if name[len(TIMM_PREFIX) :] in timm.list_models():
            return
    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown model {name!r}.{hint} Choose from: {', '.join(model_names())}.")


def build_model(name: str, img_size: int = 224) -> nn.Module:
    """A bench model with random weights in eval mode."""
    check_name(name)
    if name in list_models():
        return create_model(name, img_size=img_size).eval()
    if name in TORCHVISION_MODELS:
        return torchvision.models.get_model(name, weights=None).eval()
    timm_name = name[len(TIMM_PREFIX) :]
    kwargs = {"img_size": img_size} if "efficientvit_m" in timm_name else {}
    return timm.create_model(timm_name, pretrained=False, **kwargs).eval()


def fold_norms(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` with its BatchNorms folded, by the model family's own tool."""
    if name in list_models():
        return fuse(model)
    if name.startswith(TIMM_PREFIX):
        return reparameterize_model(model).eval()
    return fx_fuse(copy.deepcopy(model).eval())


def perturb_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine weights, in place. Random-init models start every residual branch
    at zero (zero-init BN) and give near-zero logits; this makes every layer count when comparing modes."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


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


def onnx_session(model: nn.Module, x: torch.Tensor, threads: int, device: str, profile_prefix: str | None = None):
    """An onnxruntime session on the ONNX export of `model` for inputs shaped like `x` (the file is temporary);
    with `profile_prefix`, onnxruntime's profiler records every node run (`session.end_profiling()` writes it)."""
    ort = require("onnxruntime", "--mode onnxruntime")
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    export_onnx(model, tmp.name, x)
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


def prepare(
    model: nn.Module,
    name: str,
    mode: str,
    device: str = "cpu",
    batch: int = 16,
    img_size: int = 224,
    threads: int | None = None,
    x: torch.Tensor | None = None,
) -> Entry:
    """Turn an eval-mode `model` into a bench entry for `mode` (the model itself is left untouched)."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    threads = threads or torch.get_num_threads()
    dev = torch.device(device)
    x = torch.randn(batch, 3, img_size, img_size) if x is None else x
    graph = model if mode == "eager" else fold_norms(model, name)
    if mode == "onnxruntime":
        session = onnx_session(graph, x, threads, device)
        input_name = session.get_inputs()[0].name

        def infer(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {input_name: images.numpy()})[0])

        feed = x.numpy()
        return Entry(name, mode, lambda: torch.from_numpy(session.run(None, {input_name: feed})[0]), batch, infer)

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
    module = graph
    if mode in COMPILED_MODES:
        # Every model of one class shares its forward's code object, and dynamo compiles at most `recompile_limit`
        # graphs per code object: past it, a model would silently run eager. Room for every model of a bench run,
        # and an error rather than eager beyond that.
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        dynamo_config.fail_on_recompile_limit_hit = True
        if dev.type == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # constant weights: prepacked, BN/ReLU/add fused into the convs
        module = torch.compile(graph)
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


def time_entry(entry: Entry, seconds: float, warmup: int = 2) -> tuple[float, float]:
    """(images per second, median milliseconds per batch): `warmup` batches, then batches for `seconds`."""
    for _ in range(warmup):
        entry.run()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or not times:
        t0 = time.perf_counter()
        entry.run()
        times.append(time.perf_counter() - t0)
    return len(times) * entry.batch / (time.perf_counter() - start), statistics.median(times) * 1e3


@torch.inference_mode()
def measure_throughput(
    model: nn.Module,
    batch_size: int = 16,
    img_size: tuple[int, int] | None = None,
    seconds: float = 1.0,
    warmup: int = 3,
) -> float:
    """Images per second of `model` (eval mode) on random input: `warmup` batches, then batches for `seconds`."""
    model = model.eval()
    height, width = img_size or model.img_size
    device = next(model.parameters()).device
    x = torch.randn(batch_size, 3, height, width, device=device)

    def run():
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return time_entry(Entry("", "eager", run, batch_size), seconds, warmup)[0]


def interleaved_throughput(models: list[nn.Module], rounds: int = 3, **kwargs) -> list[list[float]]:
    """Throughput of several models measured in turns (A, B, A, B, ...), `rounds` times each.

    Timing on shared machines drifts by tens of percent between passes; interleaving exposes every model to the
    same drift, so ratios of per-round figures (or of medians) are far steadier than separate runs.
    """
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, runs in zip(models, samples):
            runs.append(measure_throughput(model, **kwargs))
    return samples


def count_macs(model: nn.Module, img_size: int) -> float:
    """fvcore multiply-adds per image (NaN where fvcore cannot trace the model)."""
    graph = copy.deepcopy(model).float().cpu()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(count_flops(graph, (img_size, img_size)))
    except Exception:  # an untraceable third-party model only loses its share-of-peak column
        return math.nan


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _child_peak_rss(name: str, mode: str, batch: int, img_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    entry = prepare(build_model(name, img_size), name, mode, "cpu", batch, img_size, threads)
    # Freed heap pages still resident would be reused by the batch unseen: hand them back to the system first.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    # getrusage's ru_maxrss would not do: Linux carries the parent's peak over fork and exec. The peak resident
    # set of this process (VmHWM) is reset to the current one by writing 5 to clear_refs.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_status_bytes("VmRSS")
    entry.run()
    return _proc_status_bytes("VmHWM") - before


def peak_memory_mb(name: str, mode: str, device: str, batch: int, img_size: int, threads: int) -> float:
    """Memory one batch takes beyond the prepared model. CUDA: `torch.cuda.max_memory_allocated`. CPU: in a fresh
    process, the rise of the peak resident set (VmHWM, reset before the batch) over the resident set before it;
    tracemalloc cannot see torch's allocations. NaN for the compiled modes, whose compilation would dominate it."""
    if mode in COMPILED_MODES:
        return math.nan
    if device == "cuda":
        entry = prepare(build_model(name, img_size), name, mode, device, batch, img_size, threads)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        entry.run()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child_peak_rss, (name, mode, batch, img_size, threads)) / 2**20


def run_bench(
    models: list[str],
    modes: list[str] | dict[str, list[str]],
    device: str = "cpu",
    batch: int | None = None,
    threads: int | None = None,
    img_size: int = 224,
    seconds: float = 1.0,
    rounds: int = 5,
    memory: bool = True,
    log: Callable[[str], None] = lambda s: None,
):
    """Time every (model, mode) in turns for `rounds` rounds. Returns (samples, peak): one row per entry and
    round, in long format, and the measured peak multiply-adds per second of the device. `modes` is one list for
    every model, or a list per model.

    Weights are random, with random BatchNorm statistics (`perturb_norms`) so that every layer shapes the logits:
    each mode's `max_logit_diff` is its largest |logit - eager fp32 logit| on the timed batch.
    """
    device = resolve_device(device).type
    modes = modes if isinstance(modes, dict) else {name: modes for name in models}
    for mode in {m for name in models for m in modes[name]}:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode == "onnxruntime":
            require("onnxruntime", "--mode onnxruntime")
    for name in models:  # fail on a bad name before minutes of preparing the others
        check_name(name)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    batch = (2048 if device == "cuda" else 16) if batch is None else batch
    if batch < 1 or seconds <= 0 or rounds < 1:
        raise UserError("--batch and --rounds must be at least 1 and --seconds above 0")
    entries, info = [], {}
    for name in dict.fromkeys(models):
        model = perturb_norms(build_model(name, img_size)).to(device)
        try:
            x = torch.randn(batch, 3, img_size, img_size)
            with torch.inference_mode():
                reference = model(x.to(device)).float().cpu()
            macs = count_macs(fold_norms(model, name), img_size)  # of the BN-fused graph, whatever the mode
            for mode in modes[name]:
                log(f"preparing {name} ({mode})")
                started = time.perf_counter()
                entry = prepare(model, name, mode, device, batch, img_size, threads, x=x)
                out = entry.run().cpu()  # the first call also compiles (compile)
                entries.append(entry)
                info[name, mode] = {
                    # what a user waits before the first batch: compilation, or export and session set-up
                    "prepare_seconds": time.perf_counter() - started,
                    "macs_per_img": macs,
                    "max_logit_diff": (out - reference).abs().max().item(),
                    "max_abs_logit": reference.abs().max().item(),
                    "peak_mem_mb": peak_memory_mb(name, mode, device, batch, img_size, threads) if memory else math.nan,
                }
        except (RuntimeError, MemoryError) as e:
            if out_of_memory(e):
                raise UserError(f"batch {batch} of {name} does not fit in {device} memory; lower --batch") from None
            raise
    log("measuring the peak matmul rate")
    peak = peak_matmul_macs(device)
    uses_bf16 = any(mode in BF16_MODES for name in models for mode in modes[name])
    peak_bf16 = peak_matmul_macs(device, dtype=torch.bfloat16) if uses_bf16 else math.nan
    rows = []
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for entry in entries:
            img_s, latency = time_entry(entry, seconds)
            rows.append(
                {
                    "model": entry.name,
                    "mode": entry.mode,
                    "round": r,
                    "img_s": img_s,
                    "latency_ms": latency,
                    **info[entry.name, entry.mode],
                }
            )
    samples = pd.DataFrame(rows)
    samples["share_of_peak"] = samples["macs_per_img"] * samples["img_s"] / peak  # of the fp32 peak, every mode
    own_peak = samples["mode"].map(lambda mode: peak_bf16 if mode in BF16_MODES else peak)
    samples["share_of_own_peak"] = samples["macs_per_img"] * samples["img_s"] / own_peak  # bf16: of the bf16 peak
    meta = {
        "device": device,
        "batch": batch,
        "threads": threads,
        "img_size": img_size,
        "seconds": seconds,
        "peak_gmac_s": round(peak / 1e9, 2),
        "peak_bf16_gmac_s": round(peak_bf16 / 1e9, 2),
        "memory_method": "cuda max_memory_allocated"
        if device == "cuda"
        else "rise of the peak resident set (VmHWM) over one batch, in a fresh process",
    }
    for key, value in meta.items():
        samples[key] = value
    return samples, peak


def summarize(samples):
    """Median and spread (min-max over rounds) of every entry."""
    g = samples.groupby(["model", "mode"], sort=False)
    out = g.agg(
        img_s=("img_s", "median"),
        img_s_min=("img_s", "min"),
        img_s_max=("img_s", "max"),
        latency_ms=("latency_ms", "median"),
        peak_mem_mb=("peak_mem_mb", "first"),
        gmacs=("macs_per_img", "first"),
        share_of_peak=("share_of_peak", "median"),
        share_of_own_peak=("share_of_own_peak", "median"),
        prepare_seconds=("prepare_seconds", "first"),
        max_logit_diff=("max_logit_diff", "first"),
        max_abs_logit=("max_abs_logit", "first"),
        rounds=("round", "count"),
    ).reset_index()
    out["gmacs"] = out["gmacs"] / 1e9
    return out


def best_modes(samples) -> dict[str, str]:
    """Each model's fastest mode by median throughput (how a baseline gets its best layout)."""
    medians = samples.groupby(["model", "mode"], sort=False)["img_s"].median().reset_index()
    return {m: rows.sort_values("img_s").iloc[-1]["mode"] for m, rows in medians.groupby("model", sort=False)}


def ratios(samples, models: list[str], references: list[str], modes: dict[str, str] | None = None):
    """Speed of each model over each reference, from per-round ratios (both timed in the same round): median and
    min-max. Each side runs in `modes[name]`, by default its fastest mode."""
    modes = modes or best_modes(samples)
    by = samples.set_index(["model", "mode", "round"])["img_s"].sort_index()
    rows = []
    for model in models:
        for ref in references:
            if model == ref:
                continue
            per_round = (by[model, modes[model]] / by[ref, modes[ref]]).dropna()
            rows.append(
                {
                    "model": model,
                    "mode": modes[model],
                    "reference": ref,
                    "reference_mode": modes[ref],
                    "speedup": per_round.median(),
                    "speedup_min": per_round.min(),
                    "speedup_max": per_round.max(),
                }
            )
    return pd.DataFrame(rows)


def write_csv(frame, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Write atomically (a temporary sibling renamed into place), with a JSON sidecar of how it was made."""
    atomic_write_text(path, frame.to_csv(index=False))
    if meta is not None:
        meta = {
            **meta,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        }
        atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(meta, indent=2, default=str))


HELP = "throughput, latency, memory and share of peak, models timed in turns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The paper's protocol: random weights, eval mode, warm-up, then batches until a "
        "time budget; the models (and --vs references) are timed in turns for --rounds "
        "rounds, so their ratios come from one run. Names: `efficientvit list`, "
        f"{', '.join(TORCHVISION_MODELS)} (torchvision), timm:<name> (timm). "
        "Modes: " + "; ".join(f"{k}: {v}" for k, v in MODE_HELP.items()) + "."
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models to time")
    parser.add_argument(
        "--vs",
        nargs="+",
        metavar="MODEL",
        help="references: also timed, and every model's speed-up over each is printed (each side in its fastest mode)",
    )
    parser.add_argument(
        "--mode",
        nargs="+",
        default=["channels_last"],
        choices=MODES,
        metavar="MODE",
        help=f"one or more of {', '.join(MODES)} (default channels_last: fused, the best eager "
        "layout of every model here on CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, help="images per batch (default 16 on CPU, 2048 on CUDA under AMP)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: torch's choice)")
    parser.add_argument("--img-size", type=int, default=224, help="input side in pixels (224)")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="time budget of one measurement, after warm-up (1.0)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds; medians and spreads are over them (5)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurement (a process per entry)"
    )
    parser.add_argument("--out", metavar="CSV", help="write every round's sample (long format, plus a .json sidecar)")


def run(args: argparse.Namespace) -> None:
    """`efficientvit bench`: the summary and ratio tables on stdout, progress on stderr, samples to --out."""

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    models = list(dict.fromkeys(args.models + (args.vs or [])))
    samples, peak = run_bench(
        models,
        args.mode,
        args.device,
        args.batch,
        args.threads,
        args.img_size,
        args.seconds,
        args.rounds,
        memory=not args.no_memory,
        log=say,
    )
    meta = samples.iloc[0]
    summary = summarize(samples)
    print(
        f"{args.device}, batch {meta['batch']}, {meta['threads']} threads, {args.img_size} px, "
        f"{args.rounds} interleaved rounds of {args.seconds} s; img/s median [min-max]"
    )
    table = summary.assign(
        **{
            "img/s": summary["img_s"].map("{:.1f}".format),
            "[min-max]": [f"[{a:.1f}-{b:.1f}]" for a, b in zip(summary["img_s_min"], summary["img_s_max"])],
            "ms/batch": summary["latency_ms"].map("{:.1f}".format),
            "peak MB": summary["peak_mem_mb"].map("{:.0f}".format),
            "GMACs": summary["gmacs"].map("{:.3f}".format),
            "% of peak": (100 * summary["share_of_peak"]).map("{:.1f}".format),
            "max logit diff": summary["max_logit_diff"].map("{:.1e}".format),
        }
    )
    print(
        table[
            ["model", "mode", "img/s", "[min-max]", "ms/batch", "peak MB", "GMACs", "% of peak", "max logit diff"]
        ].to_string(index=False)
    )
    print(
        f"peak: {peak / 1e9:.1f} GMAC/s (fp32 matmul on this {args.device}); % of peak = fvcore multiply-adds "
        f"x img/s / peak; peak MB: {meta['memory_method']}; max logit diff: vs eager fp32 on the timed batch "
        f"(logits up to {summary['max_abs_logit'].max():.2g})"
    )
    if args.vs:
        table = ratios(samples, list(dict.fromkeys(args.models)), list(dict.fromkeys(args.vs)))
        if len(table):
            print("\nspeed-up, per-round ratios (each model in its fastest mode): median [min-max]")
            for row in table.itertuples():
                print(
                    f"  {row.model} ({row.mode}) vs {row.reference} ({row.reference_mode}): {row.speedup:.2f}x "
                    f"[{row.speedup_min:.2f}-{row.speedup_max:.2f}]"
                )
    if args.out:
        write_csv(samples, args.out, meta={k: v for k, v in vars(args).items() if k != "run"})
        print(f"samples written to {args.out}")
