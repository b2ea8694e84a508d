import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode

import efficientvit
from analysis import memory_profile

TINY = dict(embed_dim=32, num_heads=2, patch_size=8)


def write_config(path: Path, layout: str) -> str:
    path.write_text(yaml.safe_dump({"model": "deit_tiny", "model_kwargs": {**TINY, "layout": layout}}))
    return str(path)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    out = tmp / "run.csv"
    code = memory_profile.main(
        [
            "--models",
            "efficientvit_m0",
            "--subnet-config",
            write_config(tmp / "a.yaml", "AAAA"),
            write_config(tmp / "f.yaml", "FFFF"),
            "--batch",
            "2",
            "--img-size",
            "64",
            "--iters",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_every_operator_has_a_category_and_a_layer_scope(profiled):
    frame = pd.read_csv(profiled)
    assert list(frame.columns) == memory_profile.COLUMNS
    assert set(frame["name"]) == {"efficientvit_m0", "a", "f"}  # a model YAML's rows carry its file name
    assert set(frame["category"]) <= set(memory_profile.CATEGORIES)
    m0 = frame[frame["model"] == "efficientvit_m0"]
    assert set(m0["scope"]) == {"patch_embed", "token_interaction", "attention", "ffn", "patch_merging", "head"}
    # the residual adds closing each FFN and attention layer are in the layer's scope (were outside every scope)
    assert m0.loc[(m0["scope"] == "ffn") & (m0["category"] == "elementwise"), "calls"].sum() >= 6
    assert set(frame["scope"]) <= {"patch_embed", "token_interaction", "attention", "ffn", "patch_merging", "head"}


def test_attention_layers_reshape_and_copy_more_than_ffn_layers(profiled):
    """Counted, not timed (a timing comparison flips on a loaded machine): reshape and copy operator calls."""
    frame = pd.read_csv(profiled)
    moving = frame[frame["category"].isin(["reshape", "copy"])].groupby("layout")["calls"].sum()
    assert moving["AAAA"] > 2 * moving["FFFF"]


class LinearThenAdd(torch.nn.Module):
    """Two operators whose bytes and FLOPs are known by hand."""

    profile_scope = "ffn"

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = self.fc(x.view(-1, 8))  # (24, 8) @ (8, 5) + bias: addmm
        return y + y  # add


def test_bytes_and_flops_match_a_count_by_hand():
    model = LinearThenAdd()
    stack = memory_profile.ScopeStack()
    counter = memory_profile.BytesAndFlops(stack)
    with torch.no_grad(), memory_profile.scopes(model, stack), counter:
        model(torch.randn(2, 3, 4, 8))
    rows, n, out = 24, 8, 5
    assert counter.flops["ffn", "matmul"] == 2 * rows * n * out
    assert counter.bytes["ffn", "matmul"] == 4 * (rows * n + n * out + out + rows * out)  # input, weight, bias, out
    assert counter.flops["ffn", "elementwise"] == rows * out
    assert counter.bytes["ffn", "elementwise"] == 4 * 3 * rows * out  # two reads, one write
    assert counter.bytes["ffn", "reshape"] == 0  # views and transposes move nothing


def test_memory_bound_rows_sit_below_the_balance_point_and_matmuls_above_it(profiled):
    frame = pd.read_csv(profiled)
    sidecar = json.loads(profiled.with_suffix(".json").read_text())
    balance = sidecar["machine_balance"]["balance_flops_per_byte"]
    assert 1 < balance < 1000  # a 2048^2 matmul is compute-bound on any machine, a 128 MiB copy memory-bound
    measured = frame.dropna(subset=["arithmetic_intensity"])
    assert (measured.loc[measured["memory_bound"], "arithmetic_intensity"] < balance).all()
    assert (measured.loc[measured["category"] == "matmul", "arithmetic_intensity"].max()) > 1.0
    assert sidecar["arguments"]["batch"] == 2 and sidecar["environment"]["torch"]


class MatmulAndCopy(torch.nn.Module):
    """A model of two known operators of similar cost: a transposing copy and a matmul."""

    profile_scope = "attention"

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(512, 64))

    def forward(self, x):
        return x.transpose(-1, -2).contiguous() @ self.weight


def covers_step(frame: pd.DataFrame, slack: float = 0.2) -> bool:
    """The profiled self times add up to the wall time of a pass, within `slack` (Python and profiler overhead)."""
    total, step = frame["self_time_us"].sum(), frame["step_time_us"].iloc[0]
    return (1 - slack) * step <= total <= (1 + slack) * step


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_times_add_up_to_the_measured_step_time(device):
    frame = memory_profile.profile_model(MatmulAndCopy(), 8, (512, 512), torch.device(device), iters=5, warmup=2)
    assert set(frame["category"]) >= {"matmul", "copy"} and set(frame["scope"]) <= {"attention", "patch_embed"}
    assert covers_step(frame)
    shares = frame.groupby("category")["share"].sum()
    assert shares["matmul"] > 0.15 and shares["copy"] > 0.15  # both big, so dropping either is visible:
    assert not covers_step(frame[frame["category"] != "copy"])
    assert not covers_step(frame[frame["category"] != "matmul"])


def fake_event(name, parent=None, start=0, cpu=0.0, device=0.0, device_type=DeviceType.CPU):
    return SimpleNamespace(
        name=name,
        cpu_parent=parent,
        time_range=SimpleNamespace(start=start),
        self_cpu_time_total=cpu,
        self_device_time_total=device,
        device_type=device_type,
    )


def test_cuda_kernel_time_is_counted_once():
    """On CUDA the profiler reports a kernel's time on the operator that launched it and again as a kernel
    event; before the fix both were summed (a 100 us matmul counted as 200 us)."""
    forward = fake_event(memory_profile.PASS)
    scope = fake_event("scope::ffn", forward, start=1)
    mm = fake_event("aten::mm", scope, start=2, cpu=5.0, device=100.0)
    kernel = fake_event("volta_sgemm_128x64_nn", mm, start=3, device=100.0, device_type=DeviceType.CUDA)
    glue = fake_event("aten::cat", forward, start=0, cpu=1.0, device=7.0)  # before the first layer: the stem
    pool = fake_event("aten::mean", forward, start=9, cpu=1.0, device=3.0)  # after it: the head
    events = [forward, scope, mm, kernel, glue, pool]
    time_us, calls = memory_profile.attribute_times(events, "cuda")
    assert time_us == {("ffn", "matmul"): 100.0, ("patch_embed", "copy"): 7.0, ("head", "other"): 3.0}
    time_us, _ = memory_profile.attribute_times(events, "cpu")
    assert time_us[("ffn", "matmul")] == 5.0


def dispatched_ops(model, x):
    """Every aten operator a forward pass dispatches, in order."""
    ops = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        model(x)
    return ops


def test_profiling_adds_no_operator_to_the_forward():
    """The profiler's view of a model must be the model: before the fix its taps listened inside cascaded group
    attention and added stack/transpose copies (1.3-2.4 points of M4's memory-bound share)."""
    model = efficientvit.create_model("efficientvit_m0", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    plain = dispatched_ops(model, x)
    memory_profile.explicit_attention(model)
    assert dispatched_ops(model, x) == plain
    # DeiT: only the fused attention kernel is replaced by its explicit operators, nothing else is added
    deit = efficientvit.create_model("deit_tiny", img_size=32, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    fused = Counter(dispatched_ops(deit, x))
    memory_profile.explicit_attention(deit)
    explicit = Counter(dispatched_ops(deit, x))
    assert explicit["_softmax"] + explicit["softmax"] > 0
    assert set((explicit - fused).keys()) <= {
        "mul",
        "softmax",
        "_softmax",
        "bmm",
        "matmul",
        "expand",
        "view",
        "_unsafe_view",
        "clone",
        "transpose",
        "reshape",
    }
    assert set((fused - explicit).keys()) <= {
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    }


def test_resume_skips_profiled_models(profiled, capsys):
    before = pd.read_csv(profiled)
    assert (
        memory_profile.main(["--models", "efficientvit_m0", "--batch", "2", "--img-size", "64", "--out", str(profiled)])
        == 0
    )
    assert pd.read_csv(profiled).equals(before)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--models", "vit_huge"], "unknown model"),
        (["--show", "shuffles"], "unknown category"),
        (["--layout", "AF", "--models", "efficientvit_m0"], "applies to DeiT and Swin"),
    ],
)
def test_bad_input_is_one_sentence(args, message, capsys):
    assert memory_profile.main(args) == 2
    assert message in capsys.readouterr().err


def test_help_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, "analysis/memory_profile.py", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0 and "--subnet-config" in proc.stdout


@pytest.mark.slow
def test_compiled_and_onnxruntime_graphs_are_profiled_by_kernel_category(tmp_path):
    """The execution paths `efficientvit bench` times: inductor's generated kernels count as `fused` (memory-bound),
    library matmuls as matmul; onnxruntime's nodes keep the layer scope their module path names."""
    out = tmp_path / "modes.csv"
    args = ["--models", "deit_tiny", "--layout", "AFAF", "--modes", "compile", "onnxruntime", "--batch", "2"]
    assert memory_profile.main([*args, "--img-size", "64", "--iters", "2", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    compiled, ort = frame[frame["mode"] == "compile"], frame[frame["mode"] == "onnxruntime"]
    for graph in (compiled, ort):
        assert graph["share"].sum() == pytest.approx(1.0) and (graph["step_time_us"] > 0).all()
    kernels = compiled.set_index("category")["calls"]
    assert kernels["fused"] >= 4 and kernels["matmul"] >= 2 and set(compiled["scope"]) == {"graph"}
    assert compiled.loc[compiled["category"] == "fused", "memory_bound"].all()
    assert {"attention", "ffn", "patch_embed"} <= set(ort["scope"])
    assert ort.loc[ort["scope"] == "ffn", "category"].isin(["matmul", "activation"]).any()
