"""Fig. 5's controls, each on a small case whose answer is known."""

import dataclasses

import pandas as pd
import pytest
import torch

import efficientvit
from analysis import pruning_controls as pc
from analysis import taylor_pruning as tp
from tests.analysis.test_taylor_pruning import FAMILIES, TWO_HEADS, perturbed


def made_scores(layers, low_head=None):
    """Scores rising with the channel index; Q/K cheap in `low_head` (every other head's Q/K costly)."""
    scores = []
    for layer in layers:
        entry = {}
        for kind, width in layer.widths().items():
            if kind == "ffn":
                entry[kind] = torch.arange(width, dtype=torch.float64) + 100.0
            else:
                values = torch.arange(width, dtype=torch.float64).repeat(layer.heads, 1) + 50.0
                if kind == "qk" and low_head is not None:
                    values = values + 1000.0
                    values[low_head] -= 1000.0 + 60.0  # below every FFN unit
                entry[kind] = values
        scores.append(entry)
    return scores


def test_per_head_ranking_lets_a_head_with_low_scores_lose_more_than_the_others():
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TWO_HEADS)
    layers = tp.model_layers(model)
    scores = made_scores(layers, low_head=1)
    qk_dim = layers[0].widths()["qk"]
    per_head = pc.choose_per_head(layers, scores, amount=2 * (qk_dim - 1))  # the low head's Q/K channels but one
    cut = {(kind, head) for _, kind, head, _ in per_head}
    assert cut == {("qk", 1)} and len(per_head) == qk_dim - 1  # every head keeps a channel
    equal = pc.as_filters(tp.choose(layers, scores, "channels", 2 * (qk_dim - 1), "importance"))
    heads = [head for _, kind, head, _ in equal if kind == "qk"]
    assert heads.count(0) == heads.count(1)  # the equal-cut rule: every head loses as many
    table = pc.kept_per_block(layers, per_head)
    assert table["qk_kept"].iloc[0] == 2 * qk_dim - (qk_dim - 1)
    # each ranking's own first Q/K cut: the low head's Q/K come first per head, after V and FFN at an equal cut
    assert pc.first_qk_cut(layers, pc.per_head_removals(layers, scores)) == 0.0
    assert pc.first_qk_cut(layers, pc.equal_cut_removals(layers, scores, "importance")) > 0.5


def test_the_first_qk_cut_is_the_share_of_channels_ranked_below_the_first_qk_candidate():
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TWO_HEADS)
    layers = tp.model_layers(model)
    scores = made_scores(layers)  # V (50..) below Q/K (50..) tie-broken by kind, FFN (100..) above both
    for layer_scores in scores:
        if "qk" in layer_scores:
            layer_scores["qk"] = layer_scores["qk"] + 75.0  # Q/K between V and the FFN units' upper half
    v_channels = sum(layer.channels("v") * layer.widths()["v"] for layer in layers if layer.kind == "A")
    ffn_below = sum(int((s["ffn"] < 125.0).sum()) for s in scores if "ffn" in s)
    v_floors = sum(layer.channels("v") for layer in layers if layer.kind == "A")  # every head keeps a V channel
    expected = (v_channels - v_floors + ffn_below) / pc.total_channels(layers)
    assert pc.first_qk_cut(layers, pc.equal_cut_removals(layers, scores, "importance")) == pytest.approx(expected)
    for layer_scores in scores:  # every FFN unit and V channel below Q/K: the ranking takes all it may first
        if "qk" in layer_scores:
            layer_scores["qk"] = layer_scores["qk"] + 1000.0
    floors = sum(layer.channels(kind) for layer in layers for kind in layer.widths() if kind != "qk")
    expected = (v_channels + sum(len(s["ffn"]) for s in scores if "ffn" in s) - floors) / pc.total_channels(layers)
    assert pc.first_qk_cut(layers, pc.equal_cut_removals(layers, scores, "importance")) == pytest.approx(expected)


def test_the_ratio_at_the_papers_cost_is_interpolated_between_measured_ratios():
    curve = pd.DataFrame({"ratio": [0.2, 0.4, 0.6], "top1": [90.0, 89.0, 85.0], "top1_before": 90.0})
    assert pc.interpolate_ratio(curve, 2.6) == pytest.approx(0.4 + 0.2 * 1.6 / 4)
    assert pc.interpolate_ratio(curve, 10.0) is None


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_every_control_cuts_its_budget_on_the_masked_model_and_restores_it(name, kwargs, tmp_path):
    model = perturbed(name, kwargs)
    data = efficientvit.data.make_synthetic(tmp_path / "data", classes=4, train=16, val=8, size=32, seed=0)
    checkpoint = efficientvit.save_checkpoint(tmp_path / "m.pth", model)
    config = pc.ControlsConfig(
        data=str(data),
        checkpoint=str(checkpoint),
        ratio=0.4,
        ratios=[0.2, 0.5, 0.8],
        cost=0.0,  # the first ratio already costs that: the control is measured there too
        criteria=["molchanov", "output"],
        batches=1,
        batch=8,
        eval_images=8,
        out_dir=tmp_path / "controls",
    )
    table = pc.run(config)
    assert set(table["control"]) == set(pc.CONTROLS) and set(table["criterion"]) == {"molchanov", "output"}
    for (control, _, ratio), group in table.groupby(["control", "criterion", "ratio"]):
        before = sum(group[f"{k}_before"].sum() * (2 if k == "qk" else 1) for k in tp.KINDS)
        kept = sum(group[f"{k}_kept"].sum() * (2 if k == "qk" else 1) for k in tp.KINDS)
        assert (before - kept) / before == pytest.approx(ratio, abs=0.12), control  # within a candidate
    deeper = table[table["control"] == "depth"].groupby("ratio")["ffn_kept"].sum()
    assert deeper.is_monotonic_decreasing
    # the model is restored after every mask: in the other order, the criteria give the same rows
    again = pc.run(dataclasses.replace(config, criteria=["output", "molchanov"]))
    key = ["control", "criterion", "ratio", "block"]
    pd.testing.assert_frame_equal(
        table.sort_values(key, ignore_index=True), again.sort_values(key, ignore_index=True), check_like=True
    )
