import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

import efficientvit
from analysis import design_variant
from analysis import taylor_pruning as tpr
from efficientvit.data.synthetic import make_synthetic
from efficientvit.models import ModelSpec
from tests.helpers import top1_of_checkpoint

TINY = dict(img_size=32, patch_size=8, embed_dim=24, num_heads=3, layout="AFAF", num_classes=4)


def batches(n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=8, collate_fn=lambda b: (*default_collate(b), []))


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
    scores = tpr.taylor_scores(model, layers, batches(), 2, torch.device("cpu"))
    assert scores[1]["ffn"][[3, 7]].max() == 0 and scores[1]["ffn"].sort().values[2] > 0
    assert scores[0]["v"][5] == 0 and scores[0]["v"].sort().values[1] > 0
    chosen = tpr.choose(layers, scores, "channels", 3 + 3)  # two FFN units and one V group (3 heads) + 1
    assert set(chosen[(1, "ffn")][:2]) == {3, 7} and chosen[(0, "v")][0] == 5


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
    torch.manual_seed(0)
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TINY).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero biases of the initialisation: biases must count
            p.add_(torch.randn_like(p) * 0.1)
    layers = tpr.model_layers(model)
    loader = batches(24, torch.float64)  # three batches: the average of squares differs from the square of the average
    scores = tpr.taylor_scores(model, layers, loader, 3, torch.device("cpu"))
    for layer, layer_scores in zip(layers, scores):
        for kind, values in layer_scores.items():
            heads = 1 if kind == "ffn" else layer.module.attn.num_heads
            for index in range(min(len(values), 6)):
                expected = (
                    sum(
                        finite_difference_importance(model, filter_parameters(layer, kind, index, head), loader)
                        for head in range(heads)
                    )
                    / heads
                )  # a group over heads: the mean of its filters
                assert values[index].item() == pytest.approx(expected, rel=1e-6, abs=1e-14), (kind, index)


def test_the_global_ranking_is_by_importance_and_per_flop_only_when_asked():
    """Molchanov et al. and the paper rank raw importance; dividing by cost (the old default) reverses choices."""
    model = efficientvit.create_model("deit_tiny", fused_qkv=False, **TINY)
    layers = tpr.model_layers(model)
    assert tpr.group_costs(layers[0])["qk"] > 2 * tpr.group_costs(layers[1])["ffn"]
    scores = [
        {"qk": torch.full((8,), 3.0), "v": torch.full((8,), 5.0)},
        {"ffn": torch.full((96,), 2.0)},
        {"qk": torch.full((8,), 5.0), "v": torch.full((8,), 5.0)},
        {"ffn": torch.full((96,), 5.0)},
    ]
    assert list(tpr.choose(layers, scores, "channels", 1)) == [(1, "ffn")]  # the least important group
    assert list(tpr.choose(layers, scores, "channels", 1, "importance-per-flop")) == [(0, "qk")]  # the costliest


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("deit_tiny", TINY),
        (
            "swin_tiny",
            dict(
                img_size=32,
                patch_size=2,
                embed_dim=(12, 24),
                num_heads=(2, 4),
                window_size=4,
                layout="AF,AF",
                num_classes=4,
            ),
        ),
    ],
)
def test_kept_widths_are_the_real_shapes_and_the_pruned_model_reloads(name, kwargs, tmp_path):
    model = efficientvit.create_model(name, fused_qkv=False, **kwargs)
    layers, before, after = tpr.prune(model, batches(), "ratio", 0.4, 2, torch.device("cpu"), batches=2)
    table = tpr.block_table(layers, before, after)
    attention = [layer.module.attn for layer in layers if layer.kind == "A"]
    ffns = [layer.module.mlp for layer in layers if layer.kind == "F"]
    assert list(table["qk_kept"]) == [a.q.out_features for a in attention]
    assert list(table["v_kept"]) == [a.v.out_features for a in attention]
    assert list(table["ffn_kept"]) == [m.fc1.out_features for m in ffns]
    assert (table["qk_kept"] < table["qk_before"]).any() or (table["ffn_kept"] < table["ffn_before"]).any()
    path = efficientvit.save_checkpoint(tmp_path / "pruned.pth", model)
    rebuilt = efficientvit.model_from_checkpoint(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synth", classes=4, train=16, val=8, size=64, seed=0)


def test_cli_writes_ratios_and_the_designer_builds_a_variant(data, tmp_path):
    model = efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    checkpoint = efficientvit.save_checkpoint(tmp_path / "deit.pth", model)
    assert (
        tpr.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(data),
                "--ratio",
                "0.3",
                "--batches",
                "2",
                "--batch",
                "8",
                "--workers",
                "0",
                "--out-dir",
                str(tmp_path),
                "--run",
                "r",
                "--save",
                str(tmp_path / "pruned.pth"),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "r.csv")
    assert {"qk_ratio", "v_ratio", "ffn_ratio", "in_width", "heads"} <= set(table.columns)
    assert (table["v_ratio"] <= 1).all() and (table["ffn_ratio"] <= 4).all()
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
    ],
)
def test_bad_budgets_are_one_sentence(data, tmp_path, capsys, args, message):
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "deit.pth", efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    )
    assert tpr.main(["--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0", *args]) == 2
    assert message and __import__("re").search(message, capsys.readouterr().err)


def test_models_without_prunable_attention_and_missing_data(data, tmp_path, capsys):
    assert tpr.main(["--model", "efficientvit_m0", "--data", str(data), "--ratio", "0.5"]) == 2
    assert "supports DeiT and Swin" in capsys.readouterr().err
    assert tpr.main(["--model", "deit_tiny", "--data", str(tmp_path / "nowhere"), "--ratio", "0.5"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pruned_model_fine_tunes_with_the_training_pipeline(data, tmp_path):
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "deit.pth", efficientvit.create_model("deit_tiny", **{**TINY, "img_size": 64})
    )
    finetune = tmp_path / "finetune.yaml"
    finetune.write_text(
        f"data: {data}\nimg_size: 64\nepochs: 1\nbatch_size: 8\nworkers: 0\nwarmup_epochs: 0\n"
        "mixup: 0.0\ncutmix: 0.0\nauto_augment: null\nreprob: 0.0\nrepeated_aug: false\n"
    )
    assert (
        tpr.main(
            [
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
                "--out-dir",
                str(tmp_path),
                "--run",
                "r",
                "--save",
                str(tmp_path / "pruned.pth"),
                "--finetune-config",
                str(finetune),
            ]
        )
        == 0
    )
    import json

    stats = json.loads((tmp_path / "r.json").read_text())["pruning"]
    assert stats["top1_finetuned"] == pytest.approx(
        top1_of_checkpoint(tmp_path / "pruned_finetuned" / "checkpoint.pth", data, 64)
    )
    tuned = efficientvit.model_from_checkpoint(tmp_path / "pruned_finetuned" / "checkpoint.pth")
    assert (
        tuned.spec.kwargs["layer_dims"]
        == efficientvit.model_from_checkpoint(tmp_path / "pruned.pth").spec.kwargs["layer_dims"]
    )
