"""The pruning oracle: the loss change when a filter is removed, measured exactly, and the criteria set against it."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import efficientvit
from analysis import pruning_oracle as po
from analysis import taylor_pruning as tp
from tests.analysis.test_taylor_pruning import FAMILIES, batches, perturbed


def zeroed_by_hand(model, layer_index, kind, head, channel):
    """A copy of `model` with one filter's weights zeroed by index arithmetic written out here (not filter_slices)."""
    model = copy.deepcopy(model)
    layer = tp.model_layers(model)[layer_index].module
    with torch.no_grad():
        if kind == "ffn":
            layer.mlp.fc1.weight[channel] = 0
            layer.mlp.fc1.bias[channel] = 0
            layer.mlp.fc2.weight[:, channel] = 0
        else:
            attn = layer.attn
            width = attn.qk_dim if kind == "qk" else attn.v_dim
            row = head * width + channel
            for linear in (attn.q, attn.k) if kind == "qk" else (attn.v,):
                linear.weight[row] = 0
                linear.bias[row] = 0
            if kind == "v":
                attn.proj.weight[:, row] = 0
    return model


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_the_oracle_is_the_loss_change_of_the_model_with_the_filter_removed(name, kwargs):
    model = perturbed(name, kwargs, dtype=torch.float64)
    layers = tp.model_layers(model)
    g = torch.Generator().manual_seed(1)
    images, labels = (
        torch.randn(10, 3, 32, 32, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (10,), generator=g),
    )
    held = po.HeldOut(model, images, labels, batch=4)  # from each unit's block onwards (DeiT, Swin)
    with torch.no_grad():
        base = F.cross_entropy(model(images), labels, reduction="none")
    assert torch.allclose(held.base, base, atol=1e-12)
    units = [
        {"layer": i, "kind": kind, "members": [members[j]]}
        for i, layer in enumerate(layers)
        for kind in layer.widths()
        for members in [po.filters_of(layer, kind)]
        for j in (0, len(members) - 1)
    ]
    po.measure_units(units, layers, model, held)
    for unit in units:
        (head, channel), kind = unit["members"][0], unit["kind"]
        with torch.no_grad():
            masked = zeroed_by_hand(model, unit["layer"], kind, head, channel)(images)
        expected = F.cross_entropy(masked, labels, reduction="none") - base
        assert unit["delta"] == pytest.approx(float(expected.mean()), abs=1e-12)
        assert unit["delta_a"] == pytest.approx(float(expected[0::2].mean()), abs=1e-12)
        assert unit["delta_b"] == pytest.approx(float(expected[1::2].mean()), abs=1e-12)
    assert any(abs(unit["delta"]) > 1e-6 for unit in units)  # the filters matter: the test is not between zeros
    after = F.cross_entropy(model(images), labels, reduction="none")  # every filter restored
    assert torch.equal(after, base)


def test_a_filter_that_contributes_nothing_has_no_loss_change_and_no_output_term():
    model = perturbed(*FAMILIES[0], dtype=torch.float64)
    layers = tp.model_layers(model)
    ffn = next(i for i, layer in enumerate(layers) if layer.kind == "F")
    with torch.no_grad():
        layers[ffn].module.mlp.fc2.weight[:, 3] = 0  # unit 3 writes nothing into the residual stream
    g = torch.Generator().manual_seed(2)
    images, labels = torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    units = [{"layer": ffn, "kind": "ffn", "members": [(None, 3)]}]
    po.measure_units(units, layers, model, po.HeldOut(model, images, labels))
    assert units[0]["delta"] == 0.0
    moments = tp.term_moments(model, layers, batches(dtype=torch.float64), 2, torch.device("cpu"))
    assert moments[ffn]["ffn"]["b"][3] == 0 and moments[ffn]["ffn"]["b2"][3] == 0  # activation x gradient: nothing


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_q_k_and_v_terms_come_in_equal_pairs_and_ffn_terms_do_not(name, kwargs):
    """Why Molchanov's sum double-counts attention filters: the logits are bilinear in q and k, so a Q/K channel's
    Q-row term equals its K-row term; a V channel's V-row term equals its projection-column term (both are the head
    output channel's activation times gradient). An FFN unit's fc1-row and fc2-column terms differ (GELU)."""
    model = perturbed(name, kwargs, dtype=torch.float64)
    layers = tp.model_layers(model)
    model.zero_grad()
    x, y = next(iter(batches(dtype=torch.float64)))[:2]
    F.cross_entropy(model(x), y).backward()
    for layer in layers:
        for kind, (a, b) in layer.term_pairs().items():
            if kind == "ffn":
                assert not torch.allclose(a, b, rtol=1e-3)
            else:
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-12) and a.abs().max() > 0


def test_the_summary_ranks_each_criterion_against_both_oracles_per_kind_and_pooled():
    rng = np.random.default_rng(0)
    harm = rng.normal(size=40)
    units = pd.DataFrame(
        {
            "unit": "filter",
            "kind": np.repeat(["qk", "v", "ffn", "ffn"], 10),
            "delta": harm,
            "delta_a": harm + rng.normal(scale=0.01, size=40),  # a reliable oracle: the halves agree
            "delta_b": harm + rng.normal(scale=0.01, size=40),
            **{name: rng.normal(size=40) for name in tp.CRITERIA},
        }
    )
    units["output-signed"] = harm  # a criterion that is the harm itself
    units["output"] = harm**2  # and one that is its size
    summary = po.summarize(units).set_index(["kind", "oracle", "criterion"])["rho"]
    assert summary["pooled", "signed", "output-signed"] == pytest.approx(1.0)
    assert summary["pooled", "squared", "output"] == pytest.approx(1.0)
    assert summary["qk", "signed", "split-half reliability"] > 0.99
    assert abs(summary["pooled", "signed", "molchanov"]) < 0.5  # noise predicts nothing


def test_each_ranking_cuts_its_least_valued_groups_first_and_leaves_every_kind_of_a_block_a_group():
    groups = pd.DataFrame(
        {
            "unit": "group",
            "layer": [0, 0, 0, 1, 1, 1],
            "kind": ["qk", "qk", "qk", "ffn", "ffn", "ffn"],
            "members": [[(0, 0)], [(0, 1)], [(0, 2)], *[[(None, 2 * u), (None, 2 * u + 1)] for u in range(3)]],
            "delta": [5.0, 6.0, 7.0, 0.1, 0.2, 0.3],  # removing Q/K hurts; FFN units barely
            **{name: [1.0, 2.0, 3.0, 0.0, 0.0, 0.0] for name in tp.CRITERIA},
        }
    )
    groups["molchanov"] = [0.0, 0.1, 0.2, 10.0, 20.0, 30.0]  # a criterion that has it the other way round
    # 12 channels (2 per Q/K filter, 1 per FFN unit): a third of them is two FFN groups by the oracle
    cut = po.cuts(groups, 1 / 3).set_index(["ranking", "kind"])["kept_fraction"]
    assert cut["oracle, signed", "ffn"] == pytest.approx(1 / 3) and cut["oracle, signed", "qk"] == 1.0
    assert cut["criterion: molchanov", "qk"] == pytest.approx(1 / 3) and cut["criterion: molchanov", "ffn"] == 1.0
    # at 90% the last group of each kind in its block stays, as pruning keeps every head one channel
    deep = po.cuts(groups, 0.9).set_index(["ranking", "kind"])["kept_fraction"]
    assert deep["oracle, signed", "ffn"] == pytest.approx(1 / 3) and deep["oracle, signed", "qk"] == pytest.approx(
        1 / 3
    )


def test_groups_are_drawn_at_random_not_in_any_criterions_order():
    """Groups sorted by one criterion would spread its sums and squeeze the others': the partition is seeded and
    the same whatever the scores say, and it covers every filter."""
    layers = tp.model_layers(perturbed(*FAMILIES[0]))
    config = po.OracleConfig(data="unused", checkpoint="unused", filters=0, group=0.25)
    rng = np.random.default_rng(0)

    def random_scores():
        def shaped(layer, kind, width):
            return torch.tensor(rng.normal(size=(width,) if kind == "ffn" else (layer.heads, width)))

        return {
            name: [{kind: shaped(layer, kind, w) for kind, w in layer.widths().items()} for layer in layers]
            for name in tp.CRITERIA
        }

    def partition(scores):
        return [(u["layer"], u["kind"], tuple(u["members"])) for u in po.make_units(layers, scores, config)]

    first = partition(random_scores())
    assert first == partition(random_scores())
    covered = {}
    for layer_index, kind, members in first:
        covered[(layer_index, kind)] = covered.get((layer_index, kind), 0) + len(members)
    assert covered == {(i, k): len(po.filters_of(layer, k)) for i, layer in enumerate(layers) for k in layer.widths()}


def test_the_best_criterion_is_read_on_a_reliable_unit_and_a_nan_never_wins():
    rows = []
    for unit, reliability in (("filter", 0.2), ("group", 0.9)):
        rows.append(
            {
                "unit": unit,
                "kind": "pooled",
                "oracle": "signed",
                "criterion": "split-half reliability",
                "rho": reliability,
            }
        )
        for criterion, rho in (("molchanov", 0.5), ("output", float("nan")), ("output-signed", 0.6)):
            rows.append({"unit": unit, "kind": "pooled", "oracle": "signed", "criterion": criterion, "rho": rho})
    summary = pd.DataFrame(rows)
    assert po.reliable_unit(summary) == "group"
    assert po.best_criterion(summary, "group") == ("output-signed", pytest.approx(0.6))
    summary.loc[summary["criterion"] == "split-half reliability", "rho"] = 0.1
    assert po.reliable_unit(summary) is None


def test_the_oracle_run_writes_its_tables(tmp_path):
    data = efficientvit.data.make_synthetic(tmp_path / "data", classes=4, train=16, val=12, size=32, seed=0)
    model = efficientvit.create_model("deit_tiny", **{**FAMILIES[0][1]})
    checkpoint = efficientvit.save_checkpoint(tmp_path / "m.pth", model)
    config = po.OracleConfig(
        data=str(data),
        checkpoint=str(checkpoint),
        images=12,
        filters=2,
        group=0.5,
        batches=1,
        batch=8,
        out_dir=tmp_path / "oracle",
        run="tiny",
    )
    result = po.run(config)
    assert {p.name for p in result.paths} == {"tiny.csv", "tiny_units.csv", "tiny_cuts.csv"}
    assert set(result.summary["kind"]) == {"qk", "v", "ffn", "pooled"} and set(result.summary["unit"]) == {
        "filter",
        "group",
    }
    groups = result.units[result.units["unit"] == "group"]
    assert len(groups) == 2 * 3 * 2  # two blocks, three kinds, halves
    assert set(result.cuts["ranking"]) >= {"oracle, signed", "oracle, squared", "criterion: molchanov"}
    with pytest.raises(efficientvit.UserError, match="single filters .* or groups"):
        po.run(po.OracleConfig(data=str(data), checkpoint=str(checkpoint), filters=0, group=0))


def test_a_cut_of_one_group_changes_the_loss_by_that_groups_own_change_and_a_bigger_cut_is_measured_whole():
    model = perturbed(*FAMILIES[0], dtype=torch.float64)
    layers = tp.model_layers(model)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    held = po.HeldOut(model, images, labels)
    config = po.OracleConfig(data="unused", checkpoint="unused", filters=0, group=0.5)
    scores = {
        name: tp.criterion_scores(
            layers, tp.term_moments(model, layers, batches(dtype=torch.float64), 1, torch.device("cpu")), name
        )
        for name in tp.CRITERIA
    }
    units = pd.DataFrame(po.make_units(layers, scores, config))
    records = units.to_dict("records")
    po.measure_units(records, layers, model, held)
    units = pd.DataFrame(records)
    groups, _ = po.ranked_groups(units)
    smallest = groups["channels"].min() / groups["channels"].sum()
    one = po.joint_changes(units, smallest / 2, layers, held)  # every ranking cuts exactly its first group
    for ranking, measured in one.items():
        cut = po.cut_by(groups, po.ranked_groups(units)[1][ranking], smallest / 2)
        assert len(cut) == 1
        assert measured["joint_loss_change"] == pytest.approx(units.loc[cut[0], "delta"], abs=1e-12)
    deep = po.joint_changes(units, 0.6, layers, held)["oracle, signed"]
    cut = groups.loc[po.cut_by(groups, groups["delta"], 0.6)]
    filters = [(u.layer, u.kind, h, c) for u in cut.itertuples() for h, c in u.members]
    with tp.removed(layers, filters), torch.no_grad():
        expected = F.cross_entropy(model(images), labels, reduction="none").mean() - held.base.mean()
    assert deep["joint_loss_change"] == pytest.approx(float(expected), abs=1e-12)
    table = po.cuts(units, 0.6, po.joint_changes(units, 0.6, layers, held))
    assert {"added_loss_change", "joint_loss_change", "top1_drop"} <= set(table.columns)
