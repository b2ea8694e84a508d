import pandas as pd
import pytest
import torch

import efficientvit
from analysis import design_variant
from efficientvit.data.synthetic import make_synthetic
from efficientvit.models import ModelSpec

EFFICIENTVIT = dict(embed_dim=(16, 32), depth=(1, 1), num_heads=(2, 2), img_size=32, patch_size=4, num_classes=4)


def efficientvit_pruning() -> pd.DataFrame:
    """An M0 pruning (per block) as analysis/taylor_pruning.py writes it: stage 2 keeps narrower Q/K, stage 3 less
    FFN, and stage 3's last block almost nothing."""
    rows = []
    for block, (stage, width, qk, v, ffn) in enumerate(
        [
            (1, 64, 64, 64, 256),
            (2, 128, 32, 128, 512),
            (2, 128, 40, 120, 480),
            (3, 192, 48, 192, 384),
            (3, 192, 44, 180, 400),
            (3, 192, 8, 8, 16),
        ],
        start=1,
    ):
        rows.append(
            dict(
                model="efficientvit_m0",
                block=block,
                stage=stage,
                in_width=width,
                heads=4,
                qk_before=64,
                qk_kept=qk,
                v_before=width,
                v_kept=v,
                ffn_layers=2,
                ffn_before=4 * width,
                ffn_kept=ffn,
                qk_ratio=qk / width,
                v_ratio=v / width,
                ffn_ratio=ffn / 2 / width,
            )
        )
    return pd.DataFrame(rows)


def test_efficientvit_pruning_gives_per_stage_settings_and_the_depth_the_pruning_suggests():
    variant = design_variant.design(efficientvit_pruning(), "efficientvit_m0", patch_size=4)
    kwargs = variant["model_kwargs"]
    assert variant["model"] == "efficientvit_m0"
    assert kwargs["key_dim"] == [16, 8, 12]  # median kept per head: 16, 9, 11 -> multiples of 4
    assert kwargs["v_ratio"] == [1.0, 1.0, 1.0] and kwargs["mlp_ratio"] == [2.0, 2.0, 1.0]
    assert kwargs["depth"] == [1, 2, 2]  # stage 3's last block kept 40 of its 1,024 channels: dropped
    assert kwargs["embed_dim"] == [64, 128, 192] and kwargs["num_heads"] == [4, 4, 4]
    assert design_variant.design(efficientvit_pruning(), min_kept=0.0)["model_kwargs"]["depth"] == [1, 2, 3]


def test_designed_per_stage_yaml_builds_and_trains_a_step(tmp_path):
    variant = design_variant.design(efficientvit_pruning(), "efficientvit_m0", patch_size=4)
    path = ModelSpec(variant["model"], variant["model_kwargs"]).to_yaml(tmp_path / "v.yaml")
    model = ModelSpec.from_yaml(path).build(num_classes=10, img_size=32)
    attention = [stage.blocks[0].mixer.m.attn for stage in model.stages]
    assert [a.key_dim for a in attention] == [16, 8, 12]
    assert [len(stage.blocks) for stage in model.stages] == [1, 2, 2]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()  # a training step's forward and backward
    assert all(p.grad is not None for p in model.parameters())


def test_a_deit_pruning_keeps_one_setting_for_the_whole_model():
    table = efficientvit_pruning().assign(model="deit_tiny")
    kwargs = design_variant.design(table)["model_kwargs"]
    assert kwargs["key_dim"] == 12 and kwargs["depth"] == [1, 2, 3]  # the median over all blocks: 11 -> 12


def test_an_efficientvit_pruning_of_another_depth_names_the_base_to_give():
    with pytest.raises(efficientvit.UserError, match="the pruning has 3 stages and the base EfficientViT 2"):
        design_variant.per_stage_settings(efficientvit_pruning(), 2)


def test_design_from_checkpoint_prunes_and_writes_a_variant_that_builds(tmp_path):
    data = make_synthetic(tmp_path / "synth", classes=4, train=16, val=8, size=32, seed=0)
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "m0" / "checkpoint.pth", efficientvit.create_model("efficientvit_m0", **EFFICIENTVIT)
    )
    pruning = dict(batches=1, batch=8, workers=0, iterative=2, step_finetune=1, eval_images=8)
    path = design_variant.design_from_checkpoint(
        checkpoint,
        data,
        0.3,
        tmp_path / "out",
        runs_dir=tmp_path / "runs",
        pruning=pruning,
        variant={"seconds": 0.01, "compare": []},
    )
    assert path == tmp_path / "out" / "variants" / "m0_ratio_0.3_variant.yaml"
    assert (tmp_path / "out" / "taylor_pruning" / "m0_ratio_0.3.csv").exists()
    assert (tmp_path / "runs" / "m0_ratio_0.3.pth").exists()
    spec = ModelSpec.from_yaml(path)
    assert spec.kwargs["patch_size"] == 4 and spec.kwargs["embed_dim"] == [16, 32]  # the pruned model's stem
    assert len(spec.kwargs["key_dim"]) == 2 and spec.kwargs["num_heads"] == [2, 2]  # and stages
    model = spec.build(num_classes=4, img_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    before = path.stat().st_mtime_ns
    assert (
        design_variant.design_from_checkpoint(checkpoint, data, 0.3, tmp_path / "out", runs_dir=tmp_path / "runs")
        == path
    )
    assert path.stat().st_mtime_ns == before  # kept: a rerun resumes
