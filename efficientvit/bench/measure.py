"""Measurements of a bench entry or a model: throughput and latency through `efficientvit.runtime`'s one timing
loop, throughput of several models in turns (`interleaved_throughput`, what the subnet search and the designed
variant compare by), the memory one batch takes, and fvcore's multiply-adds."""

from __future__ import annotations

import copy
import ctypes
import math
import multiprocessing
import statistics
import warnings

import torch
from torch import nn

from ..flops import count_flops
from ..runtime import rate, require, sized_rate, time_calls
from .modes import COMPILED_MODES, Entry, prepare
from .zoo import build_model


def time_entry(entry: Entry, seconds: float, warmup: int = 2) -> tuple[float, float]:
    """(images per second, median milliseconds per batch): `warmup` batches, then batches for `seconds`."""
    times, elapsed = time_calls(entry.run, seconds, warmup=warmup)
    return len(times) * entry.batch / elapsed, statistics.median(times) * 1e3


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
    return rate(lambda: model(x), batch_size, seconds, device, warmup)


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


def peak_int8_macs(threads: int, seconds: float = 1.0) -> tuple[float, float]:
    """Multiply-adds per second of a square int8 matmul (up to 2048) on the CPU, two ways: onnxruntime's
    (`MatMulInteger`, uint8 by int8, the layout of the int8 mode's QDQ graph: the kernels that mode runs on) and
    oneDNN's (`torch._int_mm`, int8 by int8), for comparison. Where a library has no int8 dot-product path on this
    CPU its rate falls below the fp32 one (oneDNN's measured 0.29 G/s on an AVX2-only AMD EPYC): `sized_rate` keeps
    that measurement short, and the bench reports no peak for it (`BenchRun.native`)."""
    ort = require("onnxruntime", "--mode int8")
    from onnx import TensorProto, helper

    def onnxruntime_call(n: int):
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
            "int8_matmul",
            [
                helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {"a": torch.randint(0, 256, (n, n), dtype=torch.uint8).numpy(), "b": int8_matrix(n).numpy()}
        return lambda: session.run(None, feed)

    def onednn_call(n: int):
        a, b = int8_matrix(n), int8_matrix(n)
        return lambda: torch._int_mm(a, b)

    return sized_rate(onnxruntime_call, 2048, seconds), sized_rate(onednn_call, 2048, seconds)


def int8_matrix(n: int) -> torch.Tensor:
    return torch.randint(-128, 128, (n, n), dtype=torch.int8)


def count_macs(model: nn.Module, img_size: int) -> float:
    """fvcore multiply-adds per image (NaN where fvcore cannot trace the model)."""
    graph = copy.deepcopy(model).float().cpu()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(count_flops(graph, (img_size, img_size)))
    except Exception:  # an untraceable third-party model only loses its share-of-peak column
        return math.nan


def memory_method(device: str) -> str:
    """How `peak_memory_mb` measures on `device`, in words for the tables."""
    if device == "cuda":
        return "cuda max_memory_allocated"
    return "rise of the peak resident set (VmHWM) over one batch, in a fresh process"


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
