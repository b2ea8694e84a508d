"""The `released` preset end to end, offline: the released weights (made here, laid in a Hugging Face hub cache as
huggingface_hub lays it out) read as they are, on a tiny generated ImageFolder of ImageNet's 1,000 classes."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.reproduce import main as reproduce_main
from analysis.reproduce import reproduce
from efficientvit.errors import UserError
from tests.helpers import class_folders, pretrained_in_hub_cache

ROOT = Path(__file__).parents[1]
NAMES = {
    "deit_tiny": "timm/deit_tiny_patch16_224.fb_in1k",
    "swin_tiny": "timm/swin_tiny_patch4_window7_224.ms_in1k",
    "efficientvit_m4": "timm/efficientvit_m4.r224_in1k",
}


@pytest.fixture
def imagenet(tmp_path):
    """train/ and val/ of 1,000 classes, one small image each (the transform resizes them to 224 px)."""
    for split in ("train", "val"):
        class_folders(tmp_path / "imagenet" / split, 1000, size=(24, 20))
    return tmp_path / "imagenet"


def small(tmp_path: Path) -> Path:
    """The released preset as committed, its analyses made small enough for a test (same stages, same models)."""
    values = yaml.safe_load((ROOT / "experiments/reproduce/released.yaml").read_text())
    values["runs"] = str(tmp_path / "runs")
    values["device"] = "cpu"
    values["proxies"]["eval_images"] = 8
    values["fig2"]["profile"].update(batch=1, iters=1)
    values["fig4"]["similarity"].update(batch=4)
    values["fig4"]["features"] = ["attention"]  # the head outputs' similarity: tests/analysis
    values["fig5"]["proxies"] = ["efficientvit_m4", "deit_tiny"]  # Swin-T's pruning: tests/analysis, at a small size
    values["fig5"]["pruning"].update(batch=2, iterative=1, step_finetune=0)
    values["fig5"]["oracle"].update(filters=0, group=0.9, batch=2)  # one group per kind and block
    values["fig5"]["controls"].update(ratios=[0.3], batch=2)
    values["fig5"]["variant"].update(seconds=0.01, compare=["efficientvit_m0"])
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_the_released_preset_reads_the_weights_offline_and_reports_like_for_like(tmp_path, imagenet):
    made = {name: pretrained_in_hub_cache(weights)[0] for name, weights in NAMES.items()}
    out = tmp_path / "results"
    args = ["--preset", str(small(tmp_path)), "--data", str(imagenet), "--out", str(out), "--images", "2"]
    assert reproduce_main([*args, "--only", "fig4,fig5"]) == 0
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("metrics.csv"))  # nothing trained
    top1 = pd.read_csv(out / "proxies" / "released.csv").set_index("proxy")
    assert set(top1.index) == set(NAMES) and (top1["images"] == 8).all()
    assert top1["published_top1"].to_dict() == {"deit_tiny": 72.2, "swin_tiny": 81.3, "efficientvit_m4": 74.3}
    assert top1.loc["deit_tiny", "params"] == sum(p.numel() for p in made["deit_tiny"].parameters())
    report = (out / "REPORT.md").read_text()
    assert "| deit_tiny | timm/deit_tiny_patch16_224.fb_in1k | deit_tiny |" in report  # top-1 beside the published
    fig4 = report.split("## Figure 4")[1].split("## Figure 5")[0]
    assert "full-heads curves, block by block" in fig4 and "| deit_tiny | 12 |" in fig4  # DeiT-T's 12 blocks
    similarity = pd.read_csv(out / "head_similarity" / "index.csv")
    assert set(similarity["run"]) >= set(NAMES) and (similarity["budget"].isna() | (similarity["budget"] == 0)).all()
    fig5 = report.split("## Figure 5")[1]
    assert "**The criterion against its oracle**" in fig5 and "**The controls**" in fig5
    assert "| efficientvit_m4 | group | molchanov (the paper's) |" in fig5
    assert "at proxy scale" not in report and "the paper's own released weights" in report  # like for like
    glance = report.split("## The findings at a glance")[1].split("\n## ")[0]
    assert "the released deit_tiny, " in glance and "proxies," not in glance  # the weights named as what they are
    assert "released model (no seeds to vary" in fig5  # one model, the paper's: read by sign and size
    assert "beside EfficientViT M0-M5" in fig5 and "| efficientvit_m0 |" in fig5  # (the test compares M0 alone)
    oracle = pd.read_csv(out / "pruning_oracle" / "efficientvit_m4_ratio_0.3.csv")
    assert set(oracle["kind"]) == {"qk", "v", "ffn", "pooled"}
    (designed,) = (out / "variants").glob("*.yaml")
    assert designed.name.startswith("efficientvit_m4_")  # from M4's pruning, the first the preset lists
    assert yaml.safe_load(designed.read_text())["model"] == "efficientvit_m4"  # M4's own stages, pruned


def test_bad_input_to_the_released_preset_is_one_sentence_before_any_work(tmp_path, imagenet, monkeypatch):
    preset = small(tmp_path)
    with pytest.raises(UserError, match="timm/deit_tiny_patch16_224.fb_in1k"):  # the weights are not in the cache
        reproduce(str(preset), tmp_path / "out", ["fig4"], data_override=str(imagenet))
    for weights in NAMES.values():
        pretrained_in_hub_cache(weights)
    ten = tmp_path / "ten_classes"
    for split in ("train", "val"):
        class_folders(ten / split, 10, size=(24, 20))
    with pytest.raises(
        UserError, match="has 10 classes in train/, and timm/deit_tiny_patch16_224.fb_in1k classifies 1000"
    ):
        reproduce(str(preset), tmp_path / "out", ["fig4"], data_override=str(ten))
    values = yaml.safe_load(preset.read_text())
    values["device"] = "cuda"
    preset.write_text(yaml.safe_dump(values))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available"):
        reproduce(str(preset), tmp_path / "out", ["fig4"], data_override=str(imagenet))
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
