import json
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import efficientvit
from efficientvit.bench.measure import peak_memory_mb
from efficientvit.bench.modes import BF16_MODES, COMPILED_MODES, MODE_TOLERANCE, Entry, prepare
from efficientvit.bench.run import BenchRun, ratios, timing_order
from efficientvit.bench.zoo import build_model, fold_norms, perturb_norms
from efficientvit.cli import main
from efficientvit.models import create_model
from efficientvit.runtime import cpu_features, peak_matmul_macs, sized_rate

CSV_COLUMNS = (
    "model mode round img_s latency_ms load_avg prepare_seconds macs_per_img max_logit_diff max_abs_logit peak_mem_mb "
    "share_of_peak share_of_own_peak device cpu batch threads img_size seconds peak_gmac_s peak_bf16_gmac_s "
    "peak_int8_gmac_s peak_int8_ort_gmac_s memory_method"
).split()
TINY = ["--img-size", "64", "--batch", "2", "--seconds", "0.05", "--threads", "1", "--no-memory"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """`--threads` sets torch's thread count for the whole process, as a command should; the tests after these
    must not inherit it (float32 results, compared at tight tolerances elsewhere, depend on it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_times_models_in_turns_and_writes_every_round(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert (
        main(
            [
                "bench",
                "efficientvit_m0",
                "--vs",
                "efficientvit_m1",
                "--mode",
                "fused",
                "channels_last",
                "--rounds",
                "2",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "efficientvit_m0" in printed and "vs efficientvit_m1" in printed and "GMAC/s" in printed
    samples = pd.read_csv(out)
    assert len(samples) == 2 * 2 * 2  # models x modes x rounds
    assert list(samples["round"][:4]) == [0, 0, 0, 0]  # a round visits every entry before the next round
    # multiply-adds per image as torch's own counter sees the fused graph (2 FLOPs each), rate x work / peak
    m0 = efficientvit.fuse(perturb_norms(build_model("efficientvit_m0", 64)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m0(torch.randn(1, 3, 64, 64))
    macs = samples.loc[samples["model"] == "efficientvit_m0", "macs_per_img"]
    assert (macs - counter.get_total_flops() / 2).abs().max() < 0.01 * macs.iloc[0]
    peak = samples["macs_per_img"] * samples["img_s"] / samples["share_of_peak"]  # one peak, measured once
    assert peak.max() == pytest.approx(peak.min(), rel=1e-9) and 1e8 < peak.iloc[0] < 1e13
    assert (samples["prepare_seconds"] > 0).all()  # time to the first batch (compile time for compile)
    assert (samples["share_of_own_peak"] == samples["share_of_peak"]).all()  # no bf16 entry: the fp32 peak
    assert list(samples.columns) == CSV_COLUMNS
    run = BenchRun.read(out)  # the run's metadata read back once, not per row
    assert (run.device, run.batch, run.threads, run.img_size, run.rounds) == ("cpu", 2, 1, 64, 2)
    assert run.peak == pytest.approx(peak.iloc[0], rel=0.01) and "VmHWM" in run.memory_method
    assert json.loads((tmp_path / "bench.json").read_text())["run"] == run.metadata()


@pytest.mark.parametrize("mode", ["fused", "channels_last", "onnxruntime", "bf16"])
def test_modes_give_eager_logits_within_their_tolerance(mode):
    model = perturb_norms(build_model("efficientvit_m0", 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x)
    out = prepare(model, "efficientvit_m0", mode, batch=2, img_size=64, threads=1, x=x).run()
    assert reference.abs().max() > 0.1  # perturbed norms: the comparison is not between near-zero logits
    assert (out - reference).abs().max() <= MODE_TOLERANCE[mode] * reference.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("mode", COMPILED_MODES)
def test_compiled_modes_give_eager_logits(mode):
    if mode in BF16_MODES and not cpu_features().native_bf16:
        pytest.skip(
            "bf16 is emulated on this CPU (no AVX-512 BF16 or AMX usable): the compiled bf16 mode is for CPUs "
            "that have it; the eager bf16 mode's numerics are tested here all the same"
        )
    # one block per stage: inductor compiles every stage's kind of block, in a third of M0's compile time
    model = perturb_norms(create_model("efficientvit_m0", img_size=64, depth=(1, 1, 1)).eval())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x)
    out = prepare(model, "efficientvit_m0", mode, batch=2, img_size=64, threads=1, x=x).run()
    assert (out - reference).abs().max() <= MODE_TOLERANCE[mode] * reference.abs().max()


def test_baselines_build_and_fold():
    for name in ("mobilenet_v2", "timm:efficientvit_m0"):
        pytest.importorskip("timm") if name.startswith("timm:") else None
        model = perturb_norms(build_model(name, 64))
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(fold_norms(model, name)(x), model(x), atol=1e-4)


def test_ratios_are_medians_of_per_round_ratios():
    samples = pd.DataFrame(
        {
            "model": ["a", "b"] * 3,
            "mode": "fused",
            "round": [0, 0, 1, 1, 2, 2],
            "img_s": [10.0, 5.0, 30.0, 10.0, 8.0, 8.0],
        }
    )
    row = ratios(samples, ["a"], ["b"]).iloc[0]
    assert (row.speedup, row.speedup_min, row.speedup_max) == (2.0, 1.0, 3.0)


def test_peak_matmul_and_memory_are_measured():
    assert peak_matmul_macs(seconds=0.05) > 1e8


@pytest.mark.slow
def test_peak_memory_grows_with_the_batch_and_not_with_earlier_work():
    hog = torch.ones(2**27)  # 512 MB in this process must not show in a fresh one's figure
    small = peak_memory_mb("efficientvit_m0", "fused", "cpu", 2, 224, 1)
    del hog
    big = peak_memory_mb("efficientvit_m0", "fused", "cpu", 32, 224, 1)
    # The stem's first output is 16 x 112 x 112 floats = 0.8 MB an image, 24 MB more at batch 32 than at 2. Measured
    # growth is 0.57-0.75 MB an image across the project's CPUs (other buffers are reused between layers), so half
    # the stem's difference is the bound; the 512 MB, if counted, would put the small batch's figure past the big one's.
    assert 0 < small < big < 512 and big - small > 12


def one_line_exit_2(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    for word in words:
        assert word in err


def test_unknown_model_or_mode_is_one_sentence_and_exit_2(capsys):
    one_line_exit_2(capsys, ["bench", "efficientvit_m9", *TINY], "unknown model", "efficientvit_m0")
    with pytest.raises(SystemExit) as e:  # argparse rejects the mode before anything runs
        main(["bench", "efficientvit_m0", "--mode", "turbo", *TINY])
    assert e.value.code == 2


def test_batch_that_does_not_fit_says_to_lower_it(capsys):
    one_line_exit_2(capsys, ["bench", "efficientvit_m0", *TINY, "--batch", str(10**9)], "--batch")


def test_batch_zero_is_refused_not_replaced_by_the_default(capsys):
    one_line_exit_2(capsys, ["bench", "efficientvit_m0", *TINY, "--batch", "0"], "--batch", "at least 1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(capsys):
    one_line_exit_2(capsys, ["bench", "efficientvit_m0", "--device", "cuda", *TINY], "no CUDA")


def test_missing_optional_packages_name_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    one_line_exit_2(capsys, ["bench", "efficientvit_m0", "--mode", "onnxruntime", *TINY], "efficientvit-lab[bench]")


class TinyNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.slow
def test_every_model_of_one_class_is_compiled_past_dynamos_default_limit():
    """Dynamo compiles 8 graphs per code object by default and runs the rest eager without a word: a bench of
    M0-M5 in two compiled modes timed M4 and M5 in eager as `compile`."""
    from torch._dynamo.utils import counters

    models = [TinyNet().eval() for _ in range(10)]
    before = counters["stats"]["unique_graphs"]
    for model in models:
        x = torch.randn(1, 3, 8, 8)
        # Under one of our names the model is folded by `fuse`, which keeps its class (and so its forward's code
        # object), as for our and timm's models; torch.fx folding would make a new class every time.
        out = prepare(model, "efficientvit_m0", "compile", batch=1, img_size=8, threads=1, x=x).run()
        with torch.inference_mode():
            assert torch.allclose(out, model(x), atol=1e-5)
    assert counters["stats"]["unique_graphs"] - before == len(models)


def test_peers_are_timed_side_by_side_mode_by_mode():
    names = ["efficientvit_m0", "efficientvit_m1", "timm:efficientvit_m0", "timm:efficientvit_m1"]
    entries = [Entry(name, mode, lambda: None, 1) for name in names for mode in ("int8", "fused")]
    order = [(entry.name, entry.mode) for entry in timing_order(entries)]
    assert order[:4] == [
        ("efficientvit_m0", "fused"),
        ("timm:efficientvit_m0", "fused"),
        ("efficientvit_m0", "int8"),
        ("timm:efficientvit_m0", "int8"),
    ]
    assert sorted(order) == sorted((entry.name, entry.mode) for entry in entries)


def test_int8_entries_are_shares_of_the_int8_kernels_peak_and_the_header_names_the_instruction_sets(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    args = ["bench", "efficientvit_m0", "--mode", "int8", "fused", "--rounds", "1", "--out", str(out), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    features = cpu_features()
    assert features.capability in printed and " ".join(features.flags) in printed  # the header: what the CPU has
    assert "int8 (onnxruntime)" in printed and "int8 (oneDNN)" in printed
    samples = pd.read_csv(out).set_index("mode")
    run = BenchRun.read(out)
    assert features.describe() in run.cpu
    work = samples["macs_per_img"] * samples["img_s"]
    # the CSV keeps each peak to 0.01 G multiply-adds/s: the share of the exact peak lies within that rounding
    for mode, peak in (("int8", run.peak_int8_ort), ("fused", run.peak)):
        if mode == "fused" or run.native("peak_int8_ort"):
            low, high = work[mode] / (peak + 0.005e9), work[mode] / max(peak - 0.005e9, 1.0)
            assert low * (1 - 1e-9) <= samples.loc[mode, "share_of_own_peak"] <= high * (1 + 1e-9)
        else:  # no int8 dot-product path in onnxruntime on this CPU: no share of a crawl
            assert np.isnan(samples.loc[mode, "share_of_own_peak"])


def made_run(**peaks) -> BenchRun:
    samples = pd.DataFrame(
        {"model": "m", "mode": ["fused", "bf16", "int8"], "round": 0, "img_s": 100.0, "macs_per_img": 1e8}
    )
    return BenchRun(
        samples, "cpu", 16, 2, 224, 1.0, **{"peak": 100e9, "peak_bf16": None, "memory_method": "VmHWM"} | peaks
    )


def test_a_reduced_precision_path_slower_than_fp32_is_no_peak_and_no_share_is_taken_of_it():
    # the AVX2-only AMD EPYC of the report: oneDNN's int8 matmul at 0.29 G/s, bf16 emulated
    avx2 = made_run(peak_bf16=0.15e9, peak_int8=0.29e9, peak_int8_ort=150e9)
    assert not avx2.native("peak_bf16") and not avx2.native("peak_int8") and avx2.native("peak_int8_ort")
    assert np.isnan(avx2.own_peak("bf16")) and np.isnan(avx2.own_peak("compile_bf16"))
    assert avx2.own_peak("int8") == 150e9 and avx2.own_peak("fused") == 100e9  # int8: the kernels it runs on
    line = avx2.peaks_line()
    assert "fp32 100.0" in line and "int8 (onnxruntime) 150.0" in line
    assert "bf16: no native dot-product path on this CPU (0.15 measured, below fp32)" in line
    assert "int8 (oneDNN): no native dot-product path on this CPU (0.29 measured, below fp32)" in line
    vnni = made_run(peak_bf16=1000e9, peak_int8=1800e9, peak_int8_ort=900e9)
    assert vnni.own_peak("bf16") == 1000e9 and vnni.own_peak("int8") == 900e9
    assert "no native" not in vnni.peaks_line() and np.isnan(made_run().own_peak("int8"))  # int8 not run


def test_a_peak_is_measured_briefly_where_the_path_crawls():
    sizes = []

    def crawl(n):  # a matmul path at a few M multiply-adds/s: one 2048-square call would take minutes
        sizes.append(n)
        return lambda: time.sleep(n**3 / 2e8)

    assert 0 < sized_rate(crawl, 2048, seconds=0.2) < 1e9 and set(sizes) == {256}
    sizes.clear()
    sized_rate(lambda n: sizes.append(n) or (lambda: None), 2048, seconds=0.01)  # instant: up to the largest size
    assert sizes == [256, 512, 1024, 2048]
