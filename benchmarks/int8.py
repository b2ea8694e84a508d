"""The int8 parts of benchmarks/run.py: which static quantization flow the int8 mode keeps, and where the int8
graph's time goes.

Flows (int8_flows.csv): onnxruntime's QDQ static quantization (the `int8` mode: efficientvit/export.py) against
PyTorch's PT2E flow with the x86 inductor quantizer (torchao's `prepare_pt2e`/`convert_pt2e`, then torch.compile
with freezing, where inductor lowers the quantized patterns to oneDNN's int8 kernels), both calibrated on the same
images, timed in turns with `compile` (fp32) as the peer of both. PT2E runs only where torchao is installed; the
project does not depend on it, since the mode kept is onnxruntime's.

Profile (profile_int8.csv): onnxruntime's own profiler over the int8 graph, node time by category as
analysis/memory_profile.py files onnxruntime's fp32 nodes, plus the quantized node types: (de)quantization is
memory-bound, a QLinearConv a convolution, a QLinearMatMul a matmul.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from efficientvit.bench.measure import time_entry
from efficientvit.bench.modes import Entry, compiled, onnx_session, prepare
from efficientvit.bench.zoo import build_model, fold_norms, perturb_norms

FLOWS = ("int8", "int8_pt2e", "compile")  # the two int8 flows and their fp32 peer
INT8_CATEGORY_OF = {
    "QuantizeLinear": "quantize",
    "DequantizeLinear": "quantize",
    "DynamicQuantizeLinear": "quantize",
    "QLinearConv": "convolution",
    "ConvInteger": "convolution",
    "QLinearMatMul": "matmul",
    "MatMulInteger": "matmul",
    "MatMulIntegerToFloat": "matmul",
    "QGemm": "matmul",
    "QLinearAdd": "elementwise",
    "QLinearMul": "elementwise",
    "QLinearConcat": "copy",
    "QLinearSigmoid": "activation",
    "QLinearGlobalAveragePool": "other",
}


def has_torchao() -> bool:
    return importlib.util.find_spec("torchao") is not None


def calibration(batch: int, img_size: int) -> torch.Tensor:
    """The images both flows calibrate on: as the int8 mode's default, 4 batches of seeded random ones."""
    return torch.randn(4 * batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))


def pt2e_entry(model: torch.nn.Module, name: str, x: torch.Tensor, images: torch.Tensor) -> Entry:
    """`model` (BN folded) through PT2E: exported, annotated by the x86 inductor quantizer (its default: int8
    per-channel weights, uint8 activations, static), calibrated on `images`, converted and compiled."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    graph = torch.export.export(fold_norms(model, name).to(memory_format=torch.contiguous_format), (x,)).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    observed = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for chunk in images.split(len(x)):
            observed(chunk)
    module = compiled(convert_pt2e(observed), torch.device("cpu"))

    @torch.no_grad()
    def call() -> torch.Tensor:
        return module(x)

    return Entry(name, "int8_pt2e", call, len(x))


def measure_flows(models: list[str], threads: int, rounds: int, seconds: float, log) -> pd.DataFrame:
    """Every model in every FLOW, timed in turns (model by model, the flows of one model side by side) for
    `rounds` rounds: one row per model, flow and round."""
    torch.set_num_threads(threads)
    batch, img_size = 16, 224
    flows = FLOWS if has_torchao() else tuple(f for f in FLOWS if f != "int8_pt2e")
    if flows != FLOWS:
        log("int8 flows: torchao is not installed, so PT2E is left out (pip install torchao)")
    entries = []
    for name in models:
        model = perturb_norms(build_model(name, img_size))
        x, images = torch.randn(batch, 3, img_size, img_size), calibration(batch, img_size)
        for flow in flows:
            log(f"int8 flows: preparing {name} ({flow})")
            entry = (
                pt2e_entry(model, name, x, images)
                if flow == "int8_pt2e"
                else prepare(model, name, flow, "cpu", batch, img_size, threads, x=x, calibration=images)
            )
            entry.run()  # compiles
            entries.append(entry)
    rows = []
    for r in range(rounds):
        log(f"int8 flows: round {r + 1}/{rounds}")
        for entry in entries if r % 2 == 0 else entries[::-1]:
            img_s, latency = time_entry(entry, seconds)
            rows.append({"model": entry.name, "flow": entry.mode, "round": r, "img_s": img_s, "latency_ms": latency})
    return pd.DataFrame(rows)


def flows_table(flows: pd.DataFrame) -> pd.DataFrame:
    """Per model: each flow's median img/s [min-max] and both int8 flows over `compile`, per-round ratios."""
    by = flows.set_index(["model", "flow", "round"])["img_s"].sort_index()
    rows = []
    measured = [flow for flow in FLOWS if flow in set(flows["flow"])]  # PT2E only where torchao was installed
    for model in dict.fromkeys(flows["model"]):
        row = {"model": model}
        for flow in measured:
            runs = by[model, flow]
            row[f"{flow} img/s"] = f"{runs.median():.1f} [{runs.min():.1f}-{runs.max():.1f}]"
        for flow in measured[:-1]:
            ratio = by[model, flow] / by[model, "compile"]
            row[f"{flow} / compile"] = f"{ratio.median():.2f}x [{ratio.min():.2f}-{ratio.max():.2f}]"
        if "int8_pt2e" in measured:
            ratio = by[model, "int8"] / by[model, "int8_pt2e"]
            row["onnxruntime / PT2E"] = f"{ratio.median():.2f}x [{ratio.min():.2f}-{ratio.max():.2f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def profile_int8(models: list[str], threads: int, iters: int = 5, warmup: int = 2) -> pd.DataFrame:
    """onnxruntime's node times over the int8 graph of each model (batch 16, 224 px, random weights calibrated
    as the bench calibrates them), as rows of analysis/memory_profile.py's table: name, mode, category,
    memory_bound, calls and self time per pass, share, step_time_us."""
    from analysis.memory_profile import MEMORY_BOUND, ORT_CATEGORY_OF

    torch.set_num_threads(threads)
    frames = []
    for name in models:
        x = torch.randn(16, 3, 224, 224)
        graph = fold_norms(perturb_norms(build_model(name)), name)
        with tempfile.TemporaryDirectory() as folder:
            session = onnx_session(graph, x, threads, "cpu", f"{folder}/ort", calibration(16, 224))
            feed = {session.get_inputs()[0].name: x.numpy()}
            for _ in range(warmup + iters):
                session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")[-iters:]
        nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        time_us, calls = defaultdict(float), defaultdict(int)
        for event in (e for e in nodes if any(start <= e["ts"] <= end for start, end in runs)):  # not the warm-up
            op = event["args"].get("op_name")
            category = INT8_CATEGORY_OF.get(op) or ORT_CATEGORY_OF.get(op, "other")
            time_us[category] += event["dur"] / iters
            calls[category] += 1
        total, step_us = sum(time_us.values()), statistics.median(end - start for start, end in runs)
        frames.append(
            pd.DataFrame(
                {
                    "name": name,
                    "mode": "int8",
                    "category": list(time_us),
                    "memory_bound": [c in MEMORY_BOUND or c == "quantize" for c in time_us],
                    "calls": [calls[c] // iters for c in time_us],
                    "self_time_us": [round(t, 2) for t in time_us.values()],
                    "share": [t / total for t in time_us.values()],
                    "step_time_us": step_us,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
