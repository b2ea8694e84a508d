import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config

from efficientvit import hub
from efficientvit.cli import main

from .helpers import class_folders, pretrained_in_hub_cache


def test_list_prints_every_variant(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"efficientvit_m{i}" in out for i in range(6))


def test_info_prints_parameters_flops_and_stages(capsys):
    assert main(["info", "efficientvit_m4"]) == 0
    out = capsys.readouterr().out
    assert "8,804,228" in out and "299.4 M BN fused" in out
    assert "4x4" in out  # stage 3 resolution and window at 224


def test_bad_input_is_one_sentence_and_exit_2(capsys):
    for args in (["info", "efficientvit_m9"], ["info", "efficientvit_m0", "--img-size", "32"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and "error:" in err


def test_list_pretrained_prints_every_name_with_its_model_and_transform(capsys):
    assert main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(hub.names())
    assert any(
        line.split()[:2] == ["timm/deit_tiny_patch16_224.fb_in1k", "deit_tiny"] and "0.900" in line for line in lines
    )
    assert any(line.split()[:2] == ["cream/efficientvit_m4", "efficientvit_m4"] and "0.875" in line for line in lines)


@torch.no_grad()
def test_eval_of_a_name_on_a_seeded_draw_of_an_imagenet_val_folder(tmp_path, capsys):
    """`eval --checkpoint NAME --data VAL_FOLDER --images N`: its loss is that of timm's own model with timm's own
    transform of the weights on the same seeded draw of N images (one image per class, class i at index i)."""
    reference, _ = pretrained_in_hub_cache("timm/efficientvit_m0.r224_in1k")
    val = class_folders(tmp_path / "val", 1000, size=(40, 30))
    args = ["eval", "--checkpoint", "timm/efficientvit_m0.r224_in1k", "--data", str(val), "--images", "6"]
    assert main([*args, "--workers", "0", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    transform = create_transform(**resolve_data_config({}, model=reference))
    drawn = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:6].tolist()
    images = torch.stack([transform(Image.open(val / f"n{i:08d}" / "a.png").convert("RGB")) for i in drawn])
    loss = F.cross_entropy(reference(images), torch.tensor(drawn)).item()
    assert "(6 images)" in out and f"loss {loss:.4f}" in out


def test_a_name_that_is_wrong_or_absent_is_one_sentence_and_exit_2(tmp_path, capsys):
    for checkpoint, says in (
        ("deit_tiny", "the nearest pretrained names are timm/deit_tiny_patch16_224.fb_in1k"),
        ("timm/deit_tiny_patch16_224.fb_in1k", "or pass --checkpoint PATH of model.safetensors with --model deit_tiny"),
    ):
        assert main(["eval", "--checkpoint", checkpoint, "--data", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and says in error
