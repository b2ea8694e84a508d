from pathlib import Path

import numpy as np
import pytest
import torch

import efficientvit
from efficientvit.bench.modes import MODE_TOLERANCE, prepare
from efficientvit.bench.zoo import build_model, fold_norms, perturb_norms
from efficientvit.cli import main
from efficientvit.data import fashion_mnist
from efficientvit.data.sources import open_split
from efficientvit.export import calibration_images, export_int8, export_onnx, int8_agreement, quantize_onnx
from efficientvit.models.attention import CascadedGroupAttention

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def test_exports_carry_checkpoint_weights_and_match_pytorch(tmp_path, capsys):
    model = perturb_norms(efficientvit.create_model("efficientvit_m0", img_size=64)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    efficientvit.save_checkpoint(tmp_path / "ckpt.pth", model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 0.1
    assert (
        main(
            [
                "export",
                "torchscript",
                "efficientvit_m0",
                "--img-size",
                "64",
                "--checkpoint",
                str(tmp_path / "ckpt.pth"),
                "--out",
                str(tmp_path / "m0.pt"),
            ]
        )
        == 0
    )
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "m0.pt"))(x), expected, atol=1e-5)
    for dynamic in ([], ["--dynamic-batch"]):
        assert (
            main(
                [
                    "export",
                    "onnx",
                    "efficientvit_m0",
                    "--img-size",
                    "64",
                    "--checkpoint",
                    str(tmp_path / "ckpt.pth"),
                    "--fuse",
                    "--opset",
                    "17",
                    *dynamic,
                    "--out",
                    str(tmp_path / "m0.onnx"),
                ]
            )
            == 0
        )
        assert "max abs difference" in capsys.readouterr().out
        session = ort.InferenceSession(str(tmp_path / "m0.onnx"), providers=["CPUExecutionProvider"])
        batch = x if dynamic else x[:1]  # traced on one image: without --dynamic-batch the batch is fixed at 1
        np.testing.assert_allclose(
            session.run(None, {"input": batch.numpy()})[0], expected[: len(batch)].numpy(), atol=1e-4
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "m0.onnx", "m0.pt"]  # no temporary left


def test_bad_export_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    for argv in (
        ["export", "onnx", "efficientvit_m9", "--out", str(tmp_path / "x.onnx")],
        ["export", "onnx", "efficientvit_m0", "--out", str(tmp_path / "missing" / "x.onnx")],
        ["export", "onnx", "efficientvit_m0", "--out", str(tmp_path / "x.onnx"), "--opset", "1"],
        ["export", "onnx", "efficientvit_m0", "--out", str(tmp_path / "x.onnx"), "--opset", "99"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        assert "--opset" not in argv or "opset must be between 14 and 20" in err
    assert not list(tmp_path.iterdir())


# -- int8 --------------------------------------------------------------------------------------------------------

FASHION = Path(__file__).parent / "fixtures" / "fashion-mnist"  # 300 train + 100 test images
TINY_EFFICIENTVIT = dict(
    img_size=32, patch_size=4, num_classes=10, embed_dim=(16, 32, 48), num_heads=(2, 2, 2), depth=(1, 1, 1)
)
# The int8 tolerance: on the fixture's 100 test images, a tiny model trained for seconds (top-1 near 60%: small
# margins, the hard case) predicts as in fp32 on at least AGREEMENT of them, its logits within MODE_TOLERANCE.
AGREEMENT = 0.9


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A tiny EfficientViT trained for 40 steps on the fixture's training images, saved as a checkpoint beside the
    prepared data: an int8 check needs predictions with margins, which random weights do not have."""
    folder = tmp_path_factory.mktemp("int8")
    data = fashion_mnist.prepare(folder / "fashion-mnist", source=FASHION)
    train = open_split(str(data), "train", 32)
    images = torch.stack([train[i][0] for i in range(len(train))])
    labels = torch.tensor([train[i][1] for i in range(len(train))])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small operators: a second thread only waits at barriers on a busy machine
    torch.manual_seed(0)
    model = efficientvit.create_model("efficientvit_m0", q_kernels=(3, 3), **TINY_EFFICIENTVIT).train()
    optimizer = torch.optim.AdamW(model.parameters(), 5e-3)
    for _ in range(40):
        batch = torch.randint(0, len(images), (50,))
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    efficientvit.save_checkpoint(folder / "tiny.pth", model.eval())
    return model, data, folder / "tiny.pth"


def test_int8_mode_predicts_as_fp32_on_held_out_images(trained_tiny):
    model, data, _ = trained_tiny
    calibration = calibration_images(str(data), 32, 300)
    test = calibration_images(str(data), 32, 100, split="val")
    entry = prepare(model, "efficientvit_m0", "int8", batch=100, img_size=32, threads=1, calibration=calibration)
    with torch.no_grad():
        reference = model(test)
    out = entry.forward(test)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= AGREEMENT
    assert (out - reference).abs().max() <= MODE_TOLERANCE["int8"] * reference.abs().max()
    assert not torch.equal(out, reference)  # quantized, not the fp32 graph under another name


def test_int8_export_is_a_quantized_graph_that_onnxruntime_runs(trained_tiny, tmp_path):
    model, data, _ = trained_tiny
    calibration = calibration_images(str(data), 32, 64)
    path = export_int8(model, tmp_path / "tiny_int8.onnx", calibration, batch=1, dynamic_batch=True)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Softmax" in ops
    # weights stored as int8, one scale per output channel
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights and len(weights) == sum(node.op_type == "Conv" for node in graph.node)
    test = calibration_images(str(data), 32, 100, split="val")
    agreement, diff = int8_agreement(path, model, test)  # any batch: 100 images at once
    assert agreement >= AGREEMENT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_int8.onnx"]  # no temporary left


def optimized_transposes(path: Path) -> int:
    """Transpose nodes left in the int8 graph at `path` once onnxruntime has optimised it for this CPU."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sum(node.op_type == "Transpose" for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_int8_graph_keeps_one_transpose_per_attention_head(tmp_path):
    """onnxruntime's int8 convolutions run NHWC, and the transposes it inserts around them cancel against the
    channels-last trace's permutes (windows gathered in (B, H, W, C) order, heads token-major). What is left is
    one transpose per head (K^T: MatMul has no flag for it) and a few at the ends; timm's graph, in either trace,
    and ours traced contiguous keep about seven per head. At 128 px the first stage is 8x8: padded to two
    windows a side."""
    pytest.importorskip("timm")
    x, calibration = torch.randn(2, 3, 128, 128), torch.randn(4, 3, 128, 128)
    ours = perturb_norms(build_model("efficientvit_m0", 128))
    heads = sum(m.num_heads for m in ours.modules() if isinstance(m, CascadedGroupAttention))
    counts = {"ours": optimized_transposes(export_int8(ours, tmp_path / "ours.onnx", calibration, batch=2))}
    for name, model in (("ours_contiguous", "efficientvit_m0"), ("timm", "timm:efficientvit_m0")):
        folded = fold_norms(ours if name == "ours_contiguous" else perturb_norms(build_model(model, 128)), model)
        fp32 = export_onnx(folded, tmp_path / f"{name}_fp32.onnx", x, channels_last=name == "timm")
        counts[name] = optimized_transposes(quantize_onnx(fp32, tmp_path / f"{name}.onnx", calibration, batch=2))
    assert heads <= counts["ours"] <= heads + 8, counts
    assert counts["timm"] >= 4 * heads and counts["ours_contiguous"] >= 4 * heads, counts


def test_export_int8_command_calibrates_on_the_training_split(tmp_path, capsys):
    data = fashion_mnist.prepare(tmp_path / "fashion-mnist", source=FASHION)
    out = tmp_path / "m0_int8.onnx"
    args = ["export", "int8", "efficientvit_m0", "--img-size", "64", "--out", str(out)]
    assert main(args) == 2
    assert "--calibration-data" in capsys.readouterr().err
    assert main([*args, "--calibration-data", str(data), "--calibration-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"calibrated on 8 images of {data}/train" in printed and "same top-1 as PyTorch fp32" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 1000)


def test_eval_modes_lists_int8_beside_eager_fp32(trained_tiny, capsys):
    _, data, checkpoint = trained_tiny
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0", "--batch-size", "50"]
    assert main([*args, "--modes", "onnxruntime", "int8", "--calibration-images", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "int8 calibrated on 64 images" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert list(rows) == ["eager", "onnxruntime", "int8"]
    assert float(rows["int8"][3].rstrip("%")) >= 100 * AGREEMENT  # same top-1 as eager fp32
    assert 0 < float(rows["int8"][4]) and float(rows["onnxruntime"][4]) < 1e-4


def test_a_checkpoint_exports_as_the_model_it_holds(trained_tiny, tmp_path, capsys):
    """A trained checkpoint with its own settings (widths, 4 px stem, 10 classes) exports as that model, not as the
    registered defaults of its name; a name it does not hold is one sentence and writes nothing."""
    _, data, checkpoint = trained_tiny
    out = tmp_path / "tiny_int8.onnx"
    common = ["--checkpoint", str(checkpoint), "--img-size", "32", "--out", str(out)]
    args = ["export", "int8", "efficientvit_m0", *common, "--calibration-data", str(data), "--calibration-images", "32"]
    assert main(args) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
    out.unlink()
    assert main(["export", "onnx", "deit_tiny", *common]) == 2
    assert "holds efficientvit_m0, not deit_tiny" in capsys.readouterr().err and not out.exists()
