import numpy as np
import pytest
import torch

import efficientvit
from efficientvit.bench import perturb_norms
from efficientvit.cli import main

ort = pytest.importorskip("onnxruntime")


def test_onnx_export_runs_in_onnxruntime_like_pytorch_at_any_batch(tmp_path, capsys):
    out = tmp_path / "m0.onnx"
    assert main(["export", "onnx", "efficientvit_m0", "--img-size", "64", "--fuse", "--dynamic-batch",
                 "--out", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    model = efficientvit.fuse(efficientvit.create_model("efficientvit_m0", img_size=64))
    x = torch.randn(3, 3, 64, 64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m0.onnx"]  # no temporary file left behind


def test_exports_carry_checkpoint_weights(tmp_path):
    model = perturb_norms(efficientvit.create_model("efficientvit_m0", img_size=64)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    efficientvit.save_checkpoint(tmp_path / "ckpt.pth", model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 0.1
    assert main(["export", "torchscript", "efficientvit_m0", "--img-size", "64", "--checkpoint",
                 str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "m0.pt")]) == 0
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "m0.pt"))(x), expected, atol=1e-5)
    assert main(["export", "onnx", "efficientvit_m0", "--img-size", "64", "--checkpoint", str(tmp_path / "ckpt.pth"),
                 "--fuse", "--opset", "17", "--out", str(tmp_path / "m0.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m0.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:1].numpy()})[0]  # exported without --dynamic-batch: batch 1
    np.testing.assert_allclose(got, expected[:1].numpy(), atol=1e-4)


def test_bad_export_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    for argv in (["export", "onnx", "efficientvit_m9", "--out", str(tmp_path / "x.onnx")],
                 ["export", "onnx", "efficientvit_m0", "--out", str(tmp_path / "missing" / "x.onnx")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
