import copy
import json
import re

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

import efficientvit
from analysis import design_variant
from analysis import taylor_pruning as tpr
from efficientvit.data.synthetic import make_synthetic
from efficientvit.flops import count_flops
from efficientvit.models import ModelSpec
from tests.helpers import top1_of_checkpoint

TINY = dict(img_size=32, patch_size=8, embed_dim=24, num_heads=3, layout="AFAF", num_classes=4)
TWO_HEADS = dict(img_size=32, patch_size=8, embed_dim=16, num_heads=2, layout="AF", num_classes=4)
SWIN = dict(
    img_size=32, patch_size=2, embed_dim=(12, 24), num_heads=(2, 4), window_size=4, layout="AF,AF", num_classes=4
)
FAMILIES = [("deit_tiny", TINY), ("swin_tiny", SWIN)]
CPU = torch.device("cpu")


def batches(n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=8, collate_fn=lambda b: (*default_collate(b), []))


def perturbed(name, kwargs, dtype=torch.float32):
    """A model away from its initialisation (non-zero biases), in eval mode."""
    torch.manual_seed(0)
    model = efficientvit.create_model(name, fused_qkv=False, **kwargs).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_planted_useless_channels_go_first():
    torch.manual_seed(0)
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TINY)
    layers = tpr.model_layers(model)
    attn, mlp = layers[0].module.attn, layers[1].module.mlp
    with torch.no_grad():
        mlp.fc2.weight[:, [3, 7]] = 0  # hidden units 3 and 7 feed nothing forward
        mlp.fc1.weight[[3, 7]] *= 0
        for h in range(3):  # V channel 5 of every head is never used by the projection
            attn.proj.weight[:, h * 8 + 5] = 0
            attn.v.weight[h * 8 + 5] = 0
        for p in model.parameters():  # the useful channels matter: make the rest large
            p.mul_(3)
    scores = tpr.taylor_scores(model, layers, batches(), 2, torch.device("cpu"), criterion="molchanov")
    assert scores[1]["ffn"][[3, 7]].max() == 0 and scores[1]["ffn"].sort().values[2] > 0
    assert (scores[0]["v"][:, 5] == 0).all() and scores[0]["v"].sort(dim=1).values[:, 1].min() > 0
    chosen = tpr.choose(layers, scores, "channels", 3 + 3)  # two FFN units and one V candidate (3 heads) + 1
    assert set(chosen[(1, "ffn")][:2]) == {3, 7} and [head[0] for head in chosen[(0, "v")]] == [5, 5, 5]


def test_per_head_ranking_removes_each_heads_own_useless_channels():
    """Head 0's Q/K channel 2 and head 1's channel 0 do nothing (zero rows of Q and K), as do head 0's V channel 5
    and head 1's V channel 1; everything else matters. Per-head ranking removes exactly those, a different index
    in each head, and the model computes the same function; a channel index tied across heads cannot."""
    model = perturbed("deit_tiny", TWO_HEADS, torch.float64)
    layers = tpr.model_layers(model)
    attn = layers[0].module.attn  # 2 heads of 8 channels
    with torch.no_grad():
        for head, channel in [(0, 2), (1, 0)]:
            for linear in (attn.q, attn.k):
                linear.weight[head * 8 + channel] = 0
                linear.bias[head * 8 + channel] = 0
        for head, channel in [(0, 5), (1, 1)]:
            attn.v.weight[head * 8 + channel] = 0
            attn.v.bias[head * 8 + channel] = 0
            attn.proj.weight[:, head * 8 + channel] = 0
    scores = tpr.taylor_scores(
        model, layers, batches(dtype=torch.float64), 2, torch.device("cpu"), criterion="molchanov"
    )
    assert scores[0]["qk"][0, 2] == 0 and scores[0]["qk"][1, 0] == 0 and (scores[0]["qk"] > 0).sum() == 14
    assert scores[0]["v"][0, 5] == 0 and scores[0]["v"][1, 1] == 0 and (scores[0]["v"] > 0).sum() == 14
    assert (scores[1]["ffn"] > 0).all()
    chosen = tpr.choose(layers, scores, "channels", 2 * 2 + 2)  # one Q/K candidate (Q and K, 2 heads) and one V
    assert chosen == {(0, "qk"): [[2], [0]], (0, "v"): [[5], [1]]}
    for kind in ("qk", "v"):  # the old grouping: index c of every head, scored by the mean over heads
        tied = scores[0][kind].mean(dim=0).argmin()
        assert scores[0][kind][:, tied].max() > 0  # its cheapest index removes a channel that matters
    x, q = torch.randn(4, 3, 32, 32, dtype=torch.float64), attn.q.weight.detach().clone()
    with torch.no_grad():
        expected = model(x)
        for (i, kind), indices in chosen.items():
            layers[i].remove(kind, indices)
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)
    assert torch.equal(attn.q.weight, q[[row for row in range(16) if row not in (2, 8 + 0)]])  # h * 8 + c_h
    assert (attn.qk_dim, attn.v_dim) == (7, 7)


def mask(layers, chosen):
    """The unpruned model with the chosen channels zeroed: every parameter entry their filters own."""
    with torch.no_grad():
        for (i, kind), indices in chosen.items():
            if kind == "ffn":
                mlp = layers[i].module.mlp
                mlp.fc1.weight[indices] = 0
                mlp.fc1.bias[indices] = 0
                mlp.fc2.weight[:, indices] = 0
                continue
            attn = layers[i].module.attn
            width = attn.qk_dim if kind == "qk" else attn.v_dim
            rows = [h * width + c for h, head in enumerate(indices) for c in head]
            for linear in (attn.q, attn.k) if kind == "qk" else (attn.v,):
                linear.weight[rows] = 0
                linear.bias[rows] = 0
            if kind == "v":
                attn.proj.weight[:, rows] = 0


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_pruned_model_computes_the_masked_models_function(name, kwargs):
    model = perturbed(name, kwargs, torch.float64)
    layers = tpr.model_layers(model)
    scores = tpr.taylor_scores(
        model, layers, batches(dtype=torch.float64), 2, torch.device("cpu"), criterion="molchanov"
    )
    chosen = tpr.choose(layers, scores, "channels", 0.4 * 24 * 8 if name == "deit_tiny" else 60)
    per_head = [indices for (_, kind), indices in chosen.items() if kind != "ffn"]
    assert any(len({tuple(head) for head in indices}) > 1 for indices in per_head)  # heads lost different channels
    masked = copy.deepcopy(model)
    mask(tpr.model_layers(masked), chosen)
    for (i, kind), indices in chosen.items():
        layers[i].remove(kind, indices)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), masked(x), rtol=0, atol=1e-12)
        assert not torch.allclose(model(x), perturbed(name, kwargs, torch.float64)(x), atol=1e-3)  # it did prune


def removed_channels(model, before):
    layers = tpr.model_layers(model)
    return tpr.removed_so_far(layers, before, "channels")


@pytest.mark.parametrize("budget,amount", [("ratio", 0.4), ("target_speedup", 1.3)])
def test_iterative_pruning_meets_the_one_shot_budget_and_fine_tunes_between_rounds(budget, amount):
    results = {}
    for steps in (1, 3):
        model = perturbed("deit_tiny", TINY)
        start = [layer.widths() for layer in tpr.model_layers(model)]
        flops, embed = count_flops(model), model.patch_embed.proj.weight.detach().clone()
        tpr.prune(model, batches(), tpr.Budget(budget, amount), CPU, steps=steps, batches=1, step_finetune=2)
        removed = removed_channels(model, start)
        results[steps] = (removed, count_flops(model))
        assert torch.equal(model.patch_embed.proj.weight, embed) == (steps == 1)  # fine-tuned between rounds only
        assert not model.training
    if budget == "ratio":
        goal = 0.4 * 2 * (2 * 24 + 24 + 96)  # two blocks: Q/K (Q and K rows, 24 each), V (24), FFN (96 units)
        for removed, _ in results.values():
            assert goal <= removed < goal + 2 * 3  # at most one candidate (Q/K of 3 heads) over
    else:
        largest = tpr.model_layers(model)[0].costs()["qk"]  # a Q/K or V candidate: the costliest
        for _, flops_after in results.values():
            assert flops / amount - largest < flops_after <= flops / amount


def filter_parameters(layer, kind, index, head=0):
    """(tensor, index) pairs of every parameter entry one filter owns, written out by hand."""
    if kind == "ffn":
        mlp = layer.module.mlp
        return [(mlp.fc1.weight, index), (mlp.fc1.bias, index), (mlp.fc2.weight, (slice(None), index))]
    attn = layer.module.attn
    row = head * (attn.qk_dim if kind == "qk" else attn.v_dim) + index
    if kind == "qk":
        return [(attn.q.weight, row), (attn.q.bias, row), (attn.k.weight, row), (attn.k.bias, row)]
    return [(attn.v.weight, row), (attn.v.bias, row), (attn.proj.weight, (slice(None), row))]


@torch.no_grad()
def finite_difference_importance(model, entries, loader, eps=1e-5):
    """Molchanov's I(S) = mean over batches of (sum_S w dL/dw)^2, with the first-order term taken as the central
    difference of the loss when the filter's parameters are scaled by 1 +- eps (float64): no autograd involved."""
    originals = [tensor[where].clone() for tensor, where in entries]
    values = []
    for x, y, _ in loader:
        losses = []
        for sign in (1, -1):
            for (tensor, where), original in zip(entries, originals):
                tensor[where] = original * (1 + sign * eps)
            losses.append(torch.nn.functional.cross_entropy(model(x), y).item())
        for (tensor, where), original in zip(entries, originals):
            tensor[where] = original
        values.append(((losses[0] - losses[1]) / (2 * eps)) ** 2)
    return sum(values) / len(values)


def test_scores_are_molchanovs_criterion_checked_by_finite_differences():
    model = perturbed("deit_tiny", TINY, torch.float64)  # away from the zero biases: biases must count
    layers = tpr.model_layers(model)
    loader = batches(24, torch.float64)  # three batches: the average of squares differs from the square of the average
    scores = tpr.taylor_scores(model, layers, loader, 3, torch.device("cpu"), criterion="molchanov")
    for layer, layer_scores in zip(layers, scores):
        for kind, values in layer_scores.items():
            per_head = values[None] if kind == "ffn" else values  # (heads, channels); one row for FFN units
            for head in range(per_head.shape[0]):
                for index in range(min(per_head.shape[1], 3)):
                    expected = finite_difference_importance(model, filter_parameters(layer, kind, index, head), loader)
                    assert per_head[head, index].item() == pytest.approx(expected, rel=1e-6, abs=1e-14), (kind, index)


def test_the_global_ranking_is_by_importance_and_per_flop_only_when_asked():
    """Molchanov et al. and the paper rank raw importance; dividing by cost (the old default) reverses choices."""
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TINY)
    layers = tpr.model_layers(model)
    assert layers[0].costs()["qk"] > 2 * layers[1].costs()["ffn"]
    scores = [
        {"qk": torch.full((3, 8), 3.0), "v": torch.full((3, 8), 5.0)},
        {"ffn": torch.full((96,), 2.0)},
        {"qk": torch.full((3, 8), 5.0), "v": torch.full((3, 8), 5.0)},
        {"ffn": torch.full((96,), 5.0)},
    ]
    assert list(tpr.choose(layers, scores, "channels", 1)) == [(1, "ffn")]  # the least important candidate
    assert list(tpr.choose(layers, scores, "channels", 1, "importance-per-flop")) == [(0, "qk")]  # the costliest


def test_a_candidate_is_valued_at_the_mean_of_every_heads_next_channel():
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TWO_HEADS)
    layers = tpr.model_layers(model)
    qk = torch.tensor([[5.0, 1.0, 9.0, 2.0, 8.0, 7.0, 6.0, 4.0], [0.0, 3.0, 8.0, 9.0, 9.5, 10, 11, 12]])
    scores = [{"qk": qk, "v": torch.full((2, 8), 100.0)}, {"ffn": torch.full((32,), 100.0)}]
    found = [c for c in tpr.candidates(layers, scores) if c[2] == "qk"]
    assert [value for value, *_ in found[:3]] == [0.5, 2.5, 6.0]  # (1+0)/2, (2+3)/2, (4+8)/2
    assert [channel for *_, channel in found[:3]] == [(1, 0), (3, 1), (7, 2)]
    assert tpr.choose(layers, scores, "channels", 3 * 4)[(0, "qk")] == [[1, 3, 7], [0, 1, 2]]
    assert tpr.choose(layers, scores, "channels", 1000)[(0, "qk")][0] == [1, 3, 7, 0, 6, 5, 4]  # one channel kept


def test_paired_effects_are_kept_fraction_differences_in_points_over_the_runs_blocks():
    table = pd.DataFrame(
        dict(
            qk_kept_fraction=[0.25, 0.5, 0.75],
            v_kept_fraction=[1.0, 0.75, 0.5],
            ffn_kept_fraction=[0.5, 1.0, float("nan")],  # the last block has no FFN
        )
    )
    effects = tpr.paired_effects(table)
    assert effects["qk_minus_ffn"] == pytest.approx(100 * ((0.25 - 0.5) + (0.5 - 1.0)) / 2)  # paired blocks only
    assert effects["qk_minus_ffn_blocks"] == 2 and effects["v_minus_qk_blocks"] == 3
    assert effects["v_minus_qk"] == pytest.approx(100 * (0.75 + 0.25 - 0.25) / 3)
    assert effects["qk_kept_fraction"] == pytest.approx(0.5)
    paper = pd.DataFrame(dict(qk_ratio=[0.31], v_ratio=[0.91], ffn_ratio=[2.70]))  # the paper's means
    theirs = tpr.paired_effects(
        paper.assign(
            qk_kept_fraction=paper.qk_ratio, v_kept_fraction=paper.v_ratio, ffn_kept_fraction=paper.ffn_ratio / 4
        )
    )
    assert theirs["qk_minus_ffn"] == pytest.approx(-36.5) and theirs["v_minus_qk"] == pytest.approx(60)


@pytest.mark.parametrize("name,kwargs", FAMILIES)
def test_kept_widths_are_the_real_shapes_and_the_pruned_model_reloads(name, kwargs, tmp_path):
    model = efficientvit.create_model(name, fused_qkv=False, **kwargs)
    layers, before, after = tpr.prune(
        model, batches(), tpr.Budget("ratio", 0.4), CPU, steps=2, batches=2, step_finetune=1
    )
    table = tpr.block_table(layers, before, after)
    attention = [layer.module.attn for layer in layers if layer.kind == "A"]
    ffns = [layer.module.mlp for layer in layers if layer.kind == "F"]
    assert list(table["qk_kept"]) == [a.q.out_features for a in attention]
    assert list(table["v_kept"]) == [a.v.out_features for a in attention]
    assert list(table["ffn_kept"]) == [m.fc1.out_features for m in ffns]
    assert (table["qk_kept"] < table["qk_before"]).any() or (table["ffn_kept"] < table["ffn_before"]).any()
    for kind in tpr.KINDS:
        assert (table[f"{kind}_kept_fraction"] == table[f"{kind}_kept"] / table[f"{kind}_before"]).all()
        assert (table[f"{kind}_ratio"] == table[f"{kind}_kept"] / table["in_width"]).all()
    path = efficientvit.save_checkpoint(tmp_path / "pruned.pth", model)
    rebuilt = efficientvit.model_from_checkpoint(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synth", classes=4, train=16, val=8, size=64, seed=0)


def cli_args(checkpoint, data, tmp_path, *extra):
    return [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--ratio",
        "0.3",
        "--batches",
        "1",
        "--batch",
        "8",
        "--workers",
        "0",
        "--iterative",
        "2",
        "--step-finetune",
        "2",
        "--out-dir",
        str(tmp_path),
        "--run",
        "r",
        "--save",
        str(tmp_path / "pruned.pth"),
        *extra,
    ]


def test_run_returns_its_table_stats_and_files_and_the_designer_builds_a_variant(data, tmp_path):
    model = efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    checkpoint = efficientvit.save_checkpoint(tmp_path / "deit.pth", model)
    config = tpr.parse_args(cli_args(checkpoint, data, tmp_path))
    assert (config.iterative, config.step_finetune) == (2, 2)
    result = tpr.run(config)
    assert result.paths == [tmp_path / "r.csv", tmp_path / "r.json"] and result.checkpoint == tmp_path / "pruned.pth"
    table = pd.read_csv(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(table, result.table, check_dtype=False)
    assert result.stats == json.loads((tmp_path / "r.json").read_text())["pruning"]
    assert result.stats["params_after"] < result.stats["params_before"]
    assert {"qk_ratio", "v_ratio", "ffn_ratio", "in_width", "heads"} <= set(table.columns)
    assert {"qk_kept_fraction", "v_kept_fraction", "ffn_kept_fraction"} <= set(table.columns)
    assert (table["v_ratio"] <= 1).all() and (table["ffn_ratio"] <= 4).all()
    assert tpr.main(cli_args(checkpoint, data, tmp_path, "--run", "cli")) == 0
    assert (tmp_path / "cli.csv").exists()
    assert (
        design_variant.main(
            [
                "--pruning",
                str(tmp_path / "r.csv"),
                "--out-dir",
                str(tmp_path),
                "--name",
                "v",
                "--img-size",
                "64",
                "--seconds",
                "0.01",
                "--compare",
                "efficientvit_m0",
            ]
        )
        == 0
    )
    spec = ModelSpec.from_yaml(tmp_path / "v.yaml")
    name, kwargs = spec.name, spec.kwargs
    variant = efficientvit.create_model(name, **kwargs)
    assert sum(p.numel() for p in variant.parameters()) > 0
    assert kwargs["key_dim"] % 4 == 0 and 0.25 <= kwargs["v_ratio"] <= 2


def test_one_shot_and_iterative_defaults():
    config = tpr.parse_args(["--data", "fashion-mnist", "--ratio", "0.4"])
    assert (config.iterative, config.step_finetune, config.step_lr, config.rank_by) == (4, 50, 1e-4, "importance")
    assert tpr.parse_args(["--data", "d", "--ratio", "0.4", "--iterative", "1"]).iterative == 1


def test_designer_reads_the_reallocation_off_the_ratios():
    pruning = pd.DataFrame(
        dict(
            in_width=[96, 96, 192],
            heads=[3, 3, 6],
            qk_kept=[48, 60, 96],
            v_ratio=[1.0, 0.95, 0.8],
            ffn_ratio=[2.1, 1.9, 2.4],
        )
    )
    assert design_variant.reallocation(pruning) == {"key_dim": 16, "v_ratio": 1.0, "mlp_ratio": 2.0}
    variant = design_variant.design(pruning, target_flops=20e6, img_size=64)
    flops = efficientvit.flops.count_flops(
        efficientvit.fuse(efficientvit.create_model(variant["model"], **variant["model_kwargs"], img_size=64))
    )
    assert flops == pytest.approx(20e6, rel=0.2)


def test_designed_variant_with_a_small_stem_trains_on_fashion_mnist_sized_images():
    pruning = pd.DataFrame(
        dict(in_width=[96, 192], heads=[3, 6], qk_kept=[48, 96], v_ratio=[1.0, 0.9], ffn_ratio=[2.0, 2.2])
    )
    variant = design_variant.design(pruning, patch_size=4)
    assert variant["model_kwargs"]["patch_size"] == 4
    model = efficientvit.create_model(variant["model"], **variant["model_kwargs"], num_classes=10, img_size=32)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()  # a training step's forward and backward run at 32 px
    assert "patch_size" not in design_variant.design(pruning)["model_kwargs"]  # the paper's stem by default


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratio", "1.5"], "within \\(0, 1\\)"),
        (["--ratio", "0.5", "--target-speedup", "2"], "exactly one budget"),
        (["--target-flops", "1G"], "already has"),
        (["--target-flops", "1K"], "cannot be reached"),
        (["--ratio", "0.5", "--iterative", "0"], "at least 1"),
    ],
)
def test_bad_budgets_are_one_sentence(data, tmp_path, capsys, args, message):
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "deit.pth", efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    )
    assert tpr.main(["--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0", *args]) == 2
    assert message and re.search(message, capsys.readouterr().err)


EFFICIENTVIT = dict(embed_dim=(16, 32), depth=(1, 1), num_heads=(2, 2), img_size=32, patch_size=4, num_classes=4)


@pytest.mark.parametrize(
    "model,kwargs,args,message",
    [
        ("efficientvit_m0", EFFICIENTVIT, ["--ratio", "1.5"], r"--ratio must be within \(0, 1\), got 1.5"),
        ("efficientvit_m0", EFFICIENTVIT, ["--ratio", "0"], r"within \(0, 1\)"),
        ("deit_tiny", {**TINY, "img_size": 64, "layout": "FF"}, ["--ratio", "0.5"], "has no attention layers to prune"),
        ("deit_tiny", {**TINY, "img_size": 64, "attention": "split"}, ["--ratio", "0.5"], "attention='full'"),
        (
            "deit_tiny",
            {**TINY, "img_size": 64},
            ["--ratio", "0.5", "--model", "efficientvit_m0"],
            "--model efficientvit_m0 is efficientvit, but the checkpoint .* holds deit_tiny",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(data, tmp_path, capsys, model, kwargs, args, message):
    checkpoint = efficientvit.save_checkpoint(tmp_path / "model.pth", efficientvit.create_model(model, **kwargs))
    out = ["--out-dir", str(tmp_path / "out"), "--save", str(tmp_path / "pruned.pth"), "--workers", "0"]
    assert tpr.main(["--checkpoint", str(checkpoint), "--data", str(data), *out, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_missing_data_is_one_sentence(tmp_path, capsys):
    assert tpr.main(["--model", "deit_tiny", "--data", str(tmp_path / "nowhere"), "--ratio", "0.5"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_efficientvit_cli_writes_the_table_the_stage_figure_and_a_pruned_checkpoint(data, tmp_path):
    model = efficientvit.create_model("efficientvit_m0", **EFFICIENTVIT)
    checkpoint = efficientvit.save_checkpoint(tmp_path / "m0.pth", model)
    config = tpr.parse_args(cli_args(checkpoint, data, tmp_path))
    result = tpr.run(config)
    assert result.paths == [tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "r_stages.png"]
    table = pd.read_csv(tmp_path / "r.csv")
    assert list(table["model"]) == ["efficientvit_m0"] * 2 and list(table["stage"]) == [1, 2]
    assert list(table["ffn_layers"]) == [2, 2] and (table["ffn_before"] == [64, 128]).all()  # 2 x ratio 2 x C
    kept = 2 * table["qk_kept"].sum() + table["v_kept"].sum() + table["ffn_kept"].sum()
    before = 2 * table["qk_before"].sum() + table["v_before"].sum() + table["ffn_before"].sum()
    assert 0.7 * before - 2 * 2 < kept <= 0.7 * before  # --ratio 0.3, at most one candidate over
    pruned = efficientvit.model_from_checkpoint(tmp_path / "pruned.pth")
    assert len(pruned.spec.kwargs["block_dims"]) == 2
    assert result.stats["params_after"] < result.stats["params_before"]


def test_pruned_model_fine_tunes_with_the_training_pipeline(data, tmp_path):
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "deit.pth", efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    )
    finetune = tmp_path / "finetune.yaml"
    finetune.write_text(
        f"data: {data}\nimg_size: 64\nepochs: 1\nbatch_size: 8\nworkers: 0\nwarmup_epochs: 0\n"
        "mixup: 0.0\ncutmix: 0.0\nauto_augment: null\nreprob: 0.0\nrepeated_aug: false\n"
    )
    assert tpr.main(cli_args(checkpoint, data, tmp_path, "--finetune-config", str(finetune))) == 0
    stats = json.loads((tmp_path / "r.json").read_text())["pruning"]
    assert stats["top1_finetuned"] == pytest.approx(
        top1_of_checkpoint(tmp_path / "pruned_finetuned" / "checkpoint.pth", data, 64)
    )
    tuned = efficientvit.model_from_checkpoint(tmp_path / "pruned_finetuned" / "checkpoint.pth")
    assert (
        tuned.spec.kwargs["layer_dims"]
        == efficientvit.model_from_checkpoint(tmp_path / "pruned.pth").spec.kwargs["layer_dims"]
    )
    misspelt, elsewhere = tmp_path / "misspelt.yaml", tmp_path / "elsewhere"
    misspelt.write_text(finetune.read_text().replace("epochs:", "epoch:"))
    assert tpr.main(cli_args(checkpoint, data, elsewhere, "--finetune-config", str(misspelt))) == 2
    assert not elsewhere.exists()  # refused before pruning: nothing pruned, saved or written
