import numpy as np
import pytest
import torch

import efficientvit
from efficientvit.bench.zoo import perturb_norms
from efficientvit.cli import main

ort = pytest.importorskip("onnxruntime")


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
