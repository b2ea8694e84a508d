"""Figure 2: how much of a ViT's runtime goes to memory-bound operations.

The paper (Sec. 2, "Memory efficiency") profiles Swin-T and DeiT-T with the PyTorch profiler and finds that
reshaping, element-wise addition, copying and normalization take a large share of the time, mostly inside MHSA.
This script repeats that measurement for any registered model or layout:

1. warm forward passes in eval mode (BatchNorm fused, as deployed) under `torch.profiler`, with attention
   computed explicitly (matmul, softmax, matmul) as in the models the paper profiled (`--fused-attention` for
   the fused kernel);
2. every operator's self time is put in a category (reshape, copy, elementwise, normalization, softmax,
   activation, matmul, convolution, other) and in the scope it ran in (attention, ffn, token_interaction,
   patch_embed, patch_merging, head), from the `profile_scope` the model classes declare;
3. memory-bound is measured, not only assumed: one more pass under a dispatch mode records every operator's bytes
   moved (inputs + outputs) and FLOPs, so each row carries an arithmetic intensity to compare with the machine's
   balance point (peak matmul FLOP/s over copy bandwidth, measured once, in the JSON sidecar).

Output: results/memory_profile/<run>.csv, one row per (model, scope, category), and <run>.json.
Example: python analysis/memory_profile.py --models deit_tiny swin_tiny efficientvit_m4 --device cpu --batch 16
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from tqdm import tqdm

import efficientvit
from efficientvit.bench.modes import onnx_session, prepare
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.models import ModelSpec
from efficientvit.models.attention import TokenAttention
from efficientvit.models.layers import Residual
from efficientvit.models.layout import format_layout, mhsa_proportion
from efficientvit.results import read_results, write_results
from efficientvit.runtime import copy_bandwidth, out_of_memory, peak_matmul_macs, resolve_device

CATEGORIES = (
    "reshape",
    "copy",
    "elementwise",
    "normalization",
    "softmax",
    "activation",
    "matmul",
    "convolution",
    "fused",
    "other",
)
# the set the paper names, and the kernels inductor generates by fusing those operators (with softmax and
# activations) into one pass over memory: no matmul or convolution is ever inside one on CPU
MEMORY_BOUND = {"reshape", "copy", "elementwise", "normalization", "fused"}
OP_CATEGORY = {
    "reshape": "view reshape _reshape_alias permute transpose t flatten unflatten squeeze unsqueeze expand split "
    "split_with_sizes chunk narrow slice select unbind as_strided view_as _unsafe_view alias movedim "
    "detach lift_fresh",
    "copy": "copy_ contiguous clone cat stack to _to_copy index index_select roll constant_pad_nd pad "
    "masked_fill zero_ fill_ empty_like",
    "elementwise": "add add_ sub sub_ rsub mul mul_ div div_ neg ne eq where",
    "normalization": "batch_norm native_batch_norm _native_batch_norm_legit_no_training _batch_norm_impl_index "
    "layer_norm native_layer_norm group_norm native_group_norm",
    "softmax": "softmax _softmax _safe_softmax log_softmax",
    "activation": "relu relu_ gelu hardswish hardswish_ sigmoid silu hardsigmoid",
    "matmul": "matmul mm bmm addmm linear baddbmm scaled_dot_product_attention "
    "_scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_attention_math "
    "_scaled_dot_product_flash_attention _scaled_dot_product_efficient_attention _mkl_linear _linear_pointwise",
    "convolution": "conv2d convolution _convolution mkldnn_convolution _mkldnn_convolution cudnn_convolution "
    "_convolution_pointwise "
    "_nnpack_spatial_convolution thnn_conv2d",
}
CATEGORY_OF = {op: category for category, ops in OP_CATEGORY.items() for op in ops.split()}
# onnxruntime's node types (after its graph optimisations: NCHWc reorders, fused convolutions and matmuls)
ORT_CATEGORY = {
    "reshape": "Reshape Flatten Squeeze Unsqueeze Identity",
    "copy": "Transpose Split Slice Concat Gather Expand Pad ReorderInput ReorderOutput",
    "elementwise": "Add Sub Mul Div Where",
    "normalization": "LayerNormalization SkipLayerNormalization SimplifiedLayerNormalization BatchNormalization",
    "softmax": "Softmax",
    "activation": "Relu HardSwish HardSigmoid Gelu FastGelu Sigmoid Erf",
    "matmul": "MatMul FusedMatMul Gemm",
    "convolution": "Conv FusedConv NchwcConv",
}
ORT_CATEGORY_OF = {op: category for category, ops in ORT_CATEGORY.items() for op in ops.split()}
MODES = ("eager", "compile", "onnxruntime")
GRAPH = "graph"  # the scope of a compiled kernel: inductor's kernels span layers
WRAPPERS = ("## ", "Torch-Compiled Region", "TorchDynamo", "Pregraph bytecode", "AOTDispatcher", "CompiledFunction")
COLUMNS = [
    "name",
    "mode",
    "model",
    "layout",
    "mhsa_proportion",
    "device",
    "batch",
    "img_size",
    "threads",
    "category",
    "memory_bound",
    "scope",
    "calls",
    "self_time_us",
    "share",
    "bytes",
    "flops",
    "arithmetic_intensity",
    "step_time_us",
]
SCOPE = "scope::"  # record_function prefix of a layer scope
PASS = "profiled_pass"  # record_function around each profiled forward pass
STEM, HEAD = "patch_embed", "head"


def op_name(name: str) -> str:
    """'aten::addmm' or 'aten.addmm.default' -> 'addmm'."""
    name = name.split("::")[-1]
    return name.split(".")[1] if name.startswith("aten.") else name


def category(name: str) -> str:
    if "cpp_fused" in name or name.startswith("triton_"):
        return "fused"
    return CATEGORY_OF.get(op_name(name), "other")


def scope_of(name: str, module: nn.Module) -> str | None:
    """The layer kind a module's time is attributed to: declared by the model classes (`profile_scope`), or
    recognised by name for modules shared by several roles (the depthwise token interaction, stem, head). A
    residual wrapper belongs to its branch's scope, so the residual add is counted with the layer it closes."""
    if hasattr(module, "profile_scope"):
        return module.profile_scope
    if isinstance(module, Residual) and hasattr(module.m, "profile_scope"):
        return module.m.profile_scope
    if name == STEM or name.startswith(f"{STEM}."):
        return STEM
    if name in ("head", "head_dist", "norm"):
        return HEAD
    if re.search(r"\.dw\d+$|\.res[12]\.0$", name) and not re.search(r"ffn", name):
        return "token_interaction"
    return None


class ScopeStack(list):
    """The scopes the running forward pass is in, innermost last. An operator outside every scoped module (a
    class token concatenated, a global pool in the model's own forward) belongs to the stem before the first
    layer ran and to the head after it: every operator of the model has a scope."""

    def __init__(self):
        super().__init__()
        self.past_stem = False

    def current(self) -> str:
        return self[-1] if self else HEAD if self.past_stem else STEM


@contextlib.contextmanager
def scopes(model: nn.Module, stack: ScopeStack):
    """Wrap every scoped module's forward in `record_function("scope::<name>")` and keep `stack` current."""
    handles, frames = [], []

    def enter(scope):
        def hook(module, inputs):
            frame = torch.profiler.record_function(f"{SCOPE}{scope}")
            frame.__enter__()
            frames.append(frame)
            stack.append(scope)
            stack.past_stem |= scope != STEM

        return hook

    def leave(module, inputs, output):
        frames.pop().__exit__(None, None, None)
        stack.pop()

    def start_pass(module, inputs):
        stack.past_stem = False

    handles.append(model.register_forward_pre_hook(start_pass))
    for name, module in model.named_modules():
        scope = scope_of(name, module)
        if scope:
            handles.append(module.register_forward_pre_hook(enter(scope)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def attribute_times(events, device_type: str) -> tuple[dict, dict]:
    """Self time (us) and outermost-operator calls per (scope, category), summed over the profiled passes.

    An operator's self time goes to the category of the outermost operator the model called (a copy_ inside
    addmm is part of the matmul; a copy_ inside contiguous is a copy), in the scope around it; an operator outside
    every scope goes to the stem if it began before the pass's first layer, else to the head. Only operators
    inside a pass count (not the profiler's own synchronisation). On CUDA the time is the kernels' time, read
    from the CPU-side operator that launched them (`self_device_time_total`); the kernel events themselves are
    skipped, since their time is already there.
    """
    first_layer = defaultdict(lambda: float("inf"))  # pass -> when its first layer scope began
    for event in events:
        if event.name.startswith(SCOPE) and event.name not in (SCOPE + STEM, SCOPE + HEAD):
            root = next((a for a in ancestors(event) if a.name == PASS), None)
            if root is not None:
                first_layer[id(root)] = min(first_layer[id(root)], event.time_range.start)
    time_us, calls = defaultdict(float), defaultdict(int)
    for event in events:
        if event.name.startswith(SCOPE) or event.name == PASS or event.device_type != DeviceType.CPU:
            continue
        outermost, scope, root = event, None, None
        for parent in ancestors(event):
            if parent.name == PASS:
                root = parent
                break
            if scope is None and parent.name.startswith(SCOPE):
                scope = parent.name.removeprefix(SCOPE)
            elif scope is None and parent.name.startswith("aten::"):
                outermost = parent
        if root is None:
            continue
        if scope is None:
            scope = STEM if event.time_range.start < first_layer[id(root)] else HEAD
        key = (scope, category(outermost.name))
        time_us[key] += event.self_device_time_total if device_type == "cuda" else event.self_cpu_time_total
        calls[key] += outermost is event
    return time_us, calls


class BytesAndFlops(TorchDispatchMode):
    """Records, per (scope, category), the bytes every operator reads and writes and its FLOPs.

    Views move no data: their bytes are 0. FLOPs of matmuls, convolutions and attention come from torch's own
    flop counter (2 per multiply-add); every other operator is counted as one FLOP per output element.
    """

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.bytes = defaultdict(int)
        self.flops = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        key = (self.stack.current(), category(str(func)))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if key[1] != "reshape":
            self.bytes[key] += sum(t.numel() * t.element_size() for t in tensors)
        if "scaled_dot_product" in str(func):  # fused attention: Q @ K^T and attn @ V
            q, k, v = args[:3]
            self.flops[key] += 2 * q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif func.overloadpacket in flop_registry:
            self.flops[key] += int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        else:
            self.flops[key] += sum(t.numel() for t in outputs)
        return out


def explicit_attention(model: nn.Module) -> None:
    """Make every token attention take its explicit path (q @ k^T, softmax, @ v), as the models the paper
    profiled did, instead of the fused scaled_dot_product_attention kernel that hides softmax and copies inside
    itself. EfficientViT's cascaded attention is always explicit."""
    for module in model.modules():
        if isinstance(module, TokenAttention):
            module.explicit = True


def profile_model(
    model: nn.Module,
    batch: int,
    img_size: tuple[int, int],
    device: torch.device,
    *,
    iters: int,
    warmup: int,
    fused_attention: bool = False,
    mode: str = "eager",
) -> pd.DataFrame:
    """Per (scope, category): calls and self time per forward pass, share of the total, bytes and FLOPs. `mode`:
    eager (the paper's measurement), or the compiled or onnxruntime graph `efficientvit bench` times."""
    if mode == "compile":
        return tabulate(*profile_compiled(model, batch, img_size, iters, warmup))
    if mode == "onnxruntime":
        return tabulate(*profile_onnxruntime(model, batch, img_size, iters, warmup))
    model = efficientvit.fuse(model, channels_last=False).to(device).eval()  # the NCHW graph the paper profiled
    if not fused_attention:
        explicit_attention(model)
    x = torch.randn(batch, 3, *img_size, device=device)
    stack = ScopeStack()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    # no_grad rather than inference_mode, in both passes: under inference_mode composite operators (linear,
    # conv2d) are not decomposed into the kernels (addmm, convolution) whose FLOPs torch's counter knows, and the
    # two passes must see the same operators for bytes and times to line up.
    step_seconds = []
    with torch.no_grad(), scopes(model, stack):
        for _ in range(warmup):
            model(x)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(iters):
                started = time.perf_counter()
                with torch.profiler.record_function(PASS):
                    model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                step_seconds.append(time.perf_counter() - started)
    counter = BytesAndFlops(stack)
    with torch.no_grad(), scopes(model, stack), counter:
        model(x)
    time_us, calls = attribute_times(prof.events(), device.type)
    return tabulate(time_us, calls, step_seconds, counter)


def tabulate(time_us: dict, calls: dict, step_seconds: list[float], counter: BytesAndFlops | None = None):
    """One row per (scope, category): calls and self time per pass, share of the total, and (eager) the bytes and
    FLOPs the dispatch pass counted; a fused kernel's bytes and FLOPs are not observable, so they stay empty."""
    iters = len(step_seconds)
    time_us = {key: t / iters for key, t in time_us.items()}
    total = sum(time_us.values())
    rows = [
        dict(
            scope=scope,
            category=cat,
            memory_bound=cat in MEMORY_BOUND,
            calls=calls[(scope, cat)] // iters,
            self_time_us=round(t, 2),
            share=t / total,
            bytes=counter.bytes[(scope, cat)] if counter else None,
            flops=counter.flops[(scope, cat)] if counter else None,
            step_time_us=round(1e6 * sum(step_seconds) / iters, 2),
        )
        for (scope, cat), t in time_us.items()
    ]
    frame = pd.DataFrame(rows)
    frame["arithmetic_intensity"] = frame["flops"] / frame["bytes"].where(frame["bytes"] > 0)
    return frame


def kernel_times(events) -> tuple[dict, dict]:
    """A compiled graph's self time (us) and kernel calls per category, summed over the profiled passes: each
    operator's self time goes to the outermost kernel below the framework's own frames (an inductor kernel, a
    matmul or convolution library call). As in eager mode, the Python between kernels (here the frames' own
    time) is in no row; `step_time_us` has the whole pass. Scope: `graph`."""
    time_us, calls = defaultdict(float), defaultdict(int)
    for event in events:
        if event.name == PASS or event.name.startswith(WRAPPERS) or event.device_type != DeviceType.CPU:
            continue
        chain = [event, *ancestors(event)]
        top = next((i for i, frame in enumerate(chain) if frame.name == PASS), None)
        if top is None:
            continue
        outermost = [frame for frame in chain[:top] if not frame.name.startswith(WRAPPERS)][-1]
        key = (GRAPH, category(outermost.name))
        time_us[key] += event.self_cpu_time_total
        calls[key] += outermost is event
    return time_us, calls


def profile_compiled(model: nn.Module, batch: int, img_size: tuple[int, int], iters: int, warmup: int):
    """(time per (scope, category) over the passes, calls, seconds per pass) of the model as `efficientvit bench
    --mode compile` runs it: BatchNorm folded, channels-last, torch.compile with inductor and weight freezing."""
    import torch._inductor.config as inductor_config

    x = torch.randn(batch, 3, *img_size)
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):  # a profiler event per generated kernel
        entry = prepare(model, model.spec.name, "compile", "cpu", batch, img_size[0], x=x)
        for _ in range(max(warmup, 1)):  # the first call compiles
            entry.run()
    step_seconds = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            started = time.perf_counter()
            with torch.profiler.record_function(PASS):
                entry.run()
            step_seconds.append(time.perf_counter() - started)
    time_us, calls = kernel_times(prof.events())
    return time_us, calls, step_seconds


def onnx_scope(node: str, scoped: dict[str, str]) -> str | None:
    """A node's layer scope from its name, which the exporter builds from the module path
    ('/stages/stages.0/blocks/blocks.0/dw0/m/conv/Conv_output_0' is in module stages.0.blocks.0.dw0.m.conv);
    None for a node onnxruntime made up (`Gelu_token_42`) or one outside every scoped module."""
    parts = node.strip("/").split("/")[:-1]
    path = ".".join(part.split(".")[-1] for part in parts)
    while path:
        if path in scoped:
            return scoped[path]
        path = path.rpartition(".")[0]
    return None


def profile_onnxruntime(model: nn.Module, batch: int, img_size: tuple[int, int], iters: int, warmup: int):
    """(time per (scope, category) over the passes, calls, seconds per pass) of the model as `efficientvit bench
    --mode onnxruntime` runs it, from onnxruntime's own profiler: every node run of the last `iters` runs."""
    graph = efficientvit.fuse(model).eval()
    scoped = {name: scope for name, module in graph.named_modules() if (scope := scope_of(name, module))}
    x = torch.randn(batch, 3, *img_size)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(graph, x, torch.get_num_threads(), "cpu", profile_prefix=f"{folder}/ort")
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(warmup):
            session.run(None, feed)
        step_seconds = []
        for _ in range(iters):
            started = time.perf_counter()
            session.run(None, feed)
            step_seconds.append(time.perf_counter() - started)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    nodes = sorted(
        (e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"]
    )
    time_us, calls = defaultdict(float), defaultdict(int)
    for start, end in runs[-iters:]:  # the earlier runs were the warm-up
        scope = STEM
        for event in (e for e in nodes if start <= e["ts"] <= end):
            node = event["name"].removesuffix("_kernel_time")
            # as in eager mode, the model's own operators (exported names outside every scoped module) go to the
            # stem before the first layer and to the head after it; a node onnxruntime made up joins its neighbour
            own = onnx_scope(node, scoped)
            scope = own or (scope if not node.startswith("/") else STEM if scope == STEM else HEAD)
            key = (scope, ORT_CATEGORY_OF.get(event["args"].get("op_name"), "other"))
            time_us[key] += event["dur"]
            calls[key] += 1
    return time_us, calls, step_seconds


def machine_balance(device: torch.device, seconds: float = 0.5) -> dict[str, float]:
    """Peak fp32 matmul FLOP/s and copy bandwidth of this device, and their ratio (the balance point: operators
    with fewer FLOPs per byte than this are memory-bound here)."""
    peak = 2 * peak_matmul_macs(device, seconds)  # FLOPs: 2 per multiply-add, as the rows count them
    bandwidth = copy_bandwidth(device, seconds)
    return {"peak_matmul_flops": peak, "copy_bandwidth_bytes_s": bandwidth, "balance_flops_per_byte": peak / bandwidth}


def model_specs(names: list[str], layout: str | None, subnet_configs: list[str]) -> dict[str, ModelSpec]:
    """Every model to profile under the name its rows carry: the model's own, `<model>[<layout>]` when --layout
    reshapes it, and a model YAML's file name (e.g. swin_tiny_1.25x_p0.2 for a subnet the pipeline saved)."""
    specs = {}
    for name in names:
        reshaped = layout and efficientvit.models.model_family(name) in ("deit", "swin")
        specs[f"{name}[{layout}]" if reshaped else name] = ModelSpec(name, {"layout": layout} if reshaped else {})
    if layout and not any(spec.kwargs for spec in specs.values()):
        raise UserError("--layout applies to DeiT and Swin models; none was given in --models")
    return specs | {Path(path).stem: ModelSpec.from_yaml(path) for path in subnet_configs}


def describe_layout(model: nn.Module) -> tuple[str, float]:
    """The model's A/F layout and its MHSA proportion (for EfficientViT: attention layers among A + FFN layers)."""
    if hasattr(model, "layout"):
        return format_layout(model.layout), mhsa_proportion(model.layout)
    kinds = [m.profile_scope for m in model.modules() if getattr(m, "profile_scope", None) in ("attention", "ffn")]
    return "sandwich", kinds.count("attention") / len(kinds)


def profile_models(
    specs: dict[str, ModelSpec],
    config: ProfileConfig,
    device: torch.device,
    done: pd.DataFrame | None = None,
    on_model=None,
) -> pd.DataFrame:
    """Every spec profiled in every mode of `config` (batch, input size, threads, iterations), skipping what
    `done` holds; `on_model` gets the table so far after each model."""
    batch, img_size = config.batch, config.img_size
    if config.threads:
        torch.set_num_threads(config.threads)
    frames = [] if done is None else [done]
    runs = [(label, spec, mode) for label, spec in specs.items() for mode in config.modes]
    for label, spec, mode in tqdm(runs, desc="profiling", unit="model"):
        name, model = spec.name, spec.build(img_size=img_size)
        layout, proportion = describe_layout(model)
        if done is not None and ((done["name"] == label) & (done["mode"] == mode)).any():
            continue  # profiled in an earlier, interrupted run
        try:
            frame = profile_model(
                model,
                batch,
                model.img_size,
                device,
                iters=config.iters,
                warmup=config.warmup,
                fused_attention=config.fused_attention,
                mode=mode,
            )
        except (RuntimeError, MemoryError) as e:
            if out_of_memory(e):
                raise UserError(
                    f"batch {batch} does not fit in {device.type} memory for {name}: lower --batch"
                ) from None
            raise
        frame.insert(0, "name", label)
        frame.insert(1, "mode", mode)
        frame.insert(2, "model", name)
        frame.insert(3, "layout", layout)
        frame.insert(4, "mhsa_proportion", round(proportion, 4))
        for column, value in (
            ("device", device.type),
            ("batch", batch),
            ("img_size", img_size),
            ("threads", torch.get_num_threads()),
        ):
            frame[column] = value
        frames.append(frame[COLUMNS])
        if on_model:
            on_model(pd.concat(frames, ignore_index=True))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


DESCRIPTION = (
    "Profile where a model's inference time goes, by operator category and layer scope (the paper's Fig. 2); "
    "writes results/memory_profile/<run>.csv and .json."
)


@dataclass
class ProfileConfig:
    models: list[str] = knob(["deit_tiny", "swin_tiny", "efficientvit_m4"], "registered model names")
    layout: str | None = knob(None, "A/F layout for the DeiT/Swin models (Swin: stages separated by commas)")
    subnet_config: list[str] = knob([], "model YAMLs (e.g. from `efficientvit subnet`), profiled too", metavar="YAML")
    device: str = knob("cpu", "where to run", choices=("cpu", "cuda", "auto"))
    batch: int = knob(16, "images per forward pass (16: the paper's CPU batch)")
    img_size: int = knob(224, "input size")
    threads: int | None = knob(None, "CPU threads (default: torch's choice)")
    iters: int = knob(5, "profiled forward passes per model")
    warmup: int = knob(2, "forward passes before profiling")
    fused_attention: bool = knob(
        False,
        "profile the fused scaled_dot_product_attention kernel instead of the explicit matmul/softmax attention of "
        "the models the paper profiled",
    )
    modes: list[str] = knob(
        ["eager"],
        "execution paths: eager (the paper's: operators by layer scope, bytes and FLOPs), compile (torch.compile "
        "with inductor and freezing: its generated kernels count as `fused`, memory-bound), onnxruntime (its "
        "profiler's node times); the last two as `efficientvit bench` runs them, CPU only",
        choices=MODES,
    )
    show: list[str] = knob([], f"also print the share of these categories ({', '.join(CATEGORIES)})", metavar="CAT")
    out: Path | None = knob(
        None,
        "CSV path (default results/memory_profile/<device>_b<batch>_<img>.csv); models already in it are "
        "skipped (resume)",
    )
    fresh: bool = knob(False, "ignore an existing CSV instead of resuming it")


def run(config: ProfileConfig) -> pd.DataFrame:
    """Profile every model of the config (resuming the CSV), write the CSV and its sidecar, return the table."""
    unknown = sorted(set(config.show) - set(CATEGORIES))
    if unknown:
        raise UserError(f"unknown category {', '.join(unknown)}: choose from {', '.join(CATEGORIES)}")
    if config.batch < 1 or config.iters < 1:
        raise UserError("--batch and --iters must be at least 1")
    device = resolve_device(config.device)
    if device.type != "cpu" and set(config.modes) != {"eager"}:
        raise UserError("--modes compile and onnxruntime profile on the CPU: use --device cpu")
    specs = model_specs(config.models, config.layout, config.subnet_config)
    out = config.out or Path("results/memory_profile") / f"{device.type}_b{config.batch}_{config.img_size}.csv"
    done = None if config.fresh else read_results(out)
    if done is not None and not set(COLUMNS) <= set(done.columns):
        missing = ", ".join(sorted(set(COLUMNS) - set(done.columns)))
        print(f"{out} was written by an older version (no {missing}): profiling every model again")
        done = None
    balance = machine_balance(device)

    def save(frame: pd.DataFrame) -> None:
        write_results(frame, out, config_arguments(config), {"machine_balance": balance})

    frame = profile_models(specs, config, device, done, save)
    print(
        f"balance point {balance['balance_flops_per_byte']:.1f} FLOP/byte "
        f"({balance['peak_matmul_flops'] / 1e9:.0f} GFLOP/s matmul, "
        f"{balance['copy_bandwidth_bytes_s'] / 1e9:.1f} GB/s copy); written to {out}"
    )
    return frame


def show(config: ProfileConfig) -> None:
    frame = run(config)
    summary = (
        frame.groupby(["name", "mode"], sort=False)
        .apply(lambda g: g.loc[g["memory_bound"], "share"].sum(), include_groups=False)
        .rename("memory_bound_share")
    )
    print(summary.to_string(float_format=lambda v: f"{100 * v:.1f}%"))
    for cat in config.show:
        shares = frame[frame["category"] == cat].groupby(["name", "mode"], sort=False)["share"].sum()
        print(f"{cat}: " + ", ".join(f"{m} ({mode}) {100 * s:.1f}%" for (m, mode), s in shares.items()))


def parse_args(argv: list[str] | None = None) -> ProfileConfig:
    return parse_config(ProfileConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("memory_profile", show, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
