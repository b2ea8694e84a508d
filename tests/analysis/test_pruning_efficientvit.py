import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

import efficientvit
from analysis import pruning_efficientvit as pe
from analysis import taylor_pruning as tpr
from efficientvit.export import export_onnx, onnx_max_abs_diff
from efficientvit.models.attention import cascade_gather

SMALL = dict(img_size=28, patch_size=4, num_classes=4)  # Fashion-MNIST's size: stages of 7x7 (one window), 4x4, 2x2
# 2 heads of 8 V channels, then 16; at 32 px the first stage's 8x8 map is padded to four 7x7 windows
TINY = dict(embed_dim=(16, 32), depth=(1, 1), num_heads=(2, 2), img_size=32, patch_size=4, num_classes=4)
CPU = torch.device("cpu")


def batches(n=8, dtype=torch.float64, batch=4, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    data = TensorDataset(images, torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=batch, collate_fn=lambda b: (*default_collate(b), []))


def perturbed(name="efficientvit_m0", dtype=torch.float64, **kwargs):
    """A model away from its initialisation: every parameter (zero-init BN included) and BN statistic moved."""
    torch.manual_seed(0)
    model = efficientvit.create_model(name, **(kwargs or TINY)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def filter_entries(layer, kind, channel, head=0):
    """(tensor, index) of every parameter entry one filter owns, BatchNorm included, written out by hand."""
    if kind == "ffn":
        ffn = layer.module
        pw1 = ffn.pw1
        return [(pw1.conv.weight, channel), (pw1.bn.weight, channel), (pw1.bn.bias, channel)] + [
            (ffn.pw2.conv.weight, (slice(None), channel))
        ]
    a = layer.module
    qkv = a.qkvs[head]
    if kind == "qk":
        rows = [channel, a.key_dim + channel]
        dw = a.dws[head]
        own = [(dw.conv.weight, channel), (dw.bn.weight, channel), (dw.bn.bias, channel)]
    else:
        rows = [2 * a.key_dim + channel]
        own = [(a.proj[1].conv.weight, (slice(None), head * a.value_dim + channel))]
    return [(t, r) for r in rows for t in (qkv.conv.weight, qkv.bn.weight, qkv.bn.bias)] + own


def mask(layers, chosen):
    """The unpruned model with the chosen filters zeroed: every parameter entry they own."""
    with torch.no_grad():
        for (i, kind), indices in chosen.items():
            per_head = (
                [(0, c) for c in indices] if kind == "ffn" else [(h, c) for h, cs in enumerate(indices) for c in cs]
            )
            for head, channel in per_head:
                for tensor, where in filter_entries(layers[i], kind, channel, head):
                    tensor[where] = 0


def prunable(layers):
    return sum(layer.channels(kind) * width for layer in layers for kind, width in layer.widths().items())


@pytest.mark.parametrize("name", ["efficientvit_m0", "efficientvit_m2"])  # M2: 4, 3 and 2 heads, V wider than 16
def test_pruned_efficientvit_computes_the_masked_models_function_in_float64(name):
    model = perturbed(name, **SMALL)
    layers = tpr.model_layers(model)
    scores = tpr.taylor_scores(model, layers, batches(2, batch=2, size=28), 1, CPU, criterion="molchanov")
    chosen = tpr.choose(layers, scores, "channels", 0.4 * prunable(layers))
    attention = {key: indices for key, indices in chosen.items() if key[1] != "ffn"}
    assert any(len({tuple(sorted(head)) for head in indices}) > 1 for indices in attention.values())  # own cuts
    fed_forward = [  # a V channel of a head whose output the next head reads (the cascade)
        c
        for (i, kind), indices in attention.items()
        if kind == "v"
        for cs in indices[:-1]
        for c in cs
        if c < layers[i].module.split_dim
    ]
    assert fed_forward
    masked = copy.deepcopy(model)
    mask(tpr.model_layers(masked), chosen)
    for (i, kind), indices in chosen.items():
        layers[i].remove(kind, indices)
    x = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), masked(x), rtol=0, atol=1e-12)
        assert not torch.allclose(model(x), perturbed(name, **SMALL)(x), atol=1e-3)  # it did prune


def test_per_head_ranking_cuts_each_heads_own_useless_channels_and_keeps_the_function():
    """In the first block, head 0's Q/K channel 2 and head 1's channel 0 do nothing (their K rows and K BatchNorm
    are zero), as do head 0's V channel 5 and head 1's V channel 1 (zero V rows: zero outputs, to the projection and
    to the cascade). Their scores are exactly zero, the per-head ranking offers them first, and cutting them leaves
    the model's function as it was."""
    model = perturbed()
    layers = tpr.model_layers(model)
    i = next(n for n, layer in enumerate(layers) if layer.kind == "A")
    attention = layers[i].module  # 2 heads: key_dim 16, value_dim 8
    with torch.no_grad():
        for head, channel in [(0, 2), (1, 0)]:
            for tensor in (
                attention.qkvs[head].conv.weight,
                attention.qkvs[head].bn.weight,
                attention.qkvs[head].bn.bias,
            ):
                tensor[16 + channel] = 0
        for head, channel in [(0, 5), (1, 1)]:
            for tensor in (
                attention.qkvs[head].conv.weight,
                attention.qkvs[head].bn.weight,
                attention.qkvs[head].bn.bias,
            ):
                tensor[32 + channel] = 0
        for qkv in attention.qkvs:  # V outputs positive: the ReLU before the projection passes every channel
            qkv.bn.bias[32:] += 5 * (qkv.bn.weight[32:] != 0)
    scores = tpr.taylor_scores(model, layers, batches(), 2, CPU, criterion="molchanov")[i]
    assert scores["qk"][0, 2] == 0 and scores["qk"][1, 0] == 0 and (scores["qk"] > 0).sum() == 30
    assert scores["v"][0, 5] == 0 and scores["v"][1, 1] == 0 and (scores["v"] > 0).sum() == 14
    first = {kind: next(c for c in tpr.candidates([layers[i]], [scores]) if c[2] == kind) for kind in ("qk", "v")}
    assert first["qk"][-1] == (2, 0) and first["v"][-1] == (5, 1) and first["qk"][0] == first["v"][0] == 0
    for kind in ("qk", "v"):  # one index tied across heads would cut a channel that matters
        tied = scores[kind].mean(dim=0).argmin()
        assert scores[kind][:, tied].max() > 0
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        layers[i].remove("qk", [[2], [0]])
        layers[i].remove("v", [[5], [1]])
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)
    assert attention.value_channels == [[0, 1, 2, 3, 4, 6, 7], [0, 2, 3, 4, 5, 6, 7]]
    assert (attention.key_dim, attention.value_dim, attention.dws[0].conv.groups) == (15, 7, 15)
    assert attention.scale == 16**-0.5  # the designed scale: cutting a channel does not rescale the logits


def finite_difference_importance(model, entries, loader, eps=1e-4):
    """Molchanov's I(S) = mean over batches of (sum_S w dL/dw)^2, the first-order term as the central difference
    of the loss when the filter's entries are scaled by 1 +- eps (float64, eval mode): no autograd involved."""
    originals = [tensor[where].clone() for tensor, where in entries]
    values = []
    with torch.no_grad():
        for x, y, _ in loader:
            losses = []
            for sign in (1, -1):
                for (tensor, where), original in zip(entries, originals):
                    tensor[where] = original * (1 + sign * eps)
                losses.append(nn.functional.cross_entropy(model(x), y).item())
            for (tensor, where), original in zip(entries, originals):
                tensor[where] = original
            values.append(((losses[0] - losses[1]) / (2 * eps)) ** 2)
    return sum(values) / len(values)


def test_scores_are_molchanovs_criterion_with_batchnorm_folded_into_each_group():
    model = perturbed()
    layers = tpr.model_layers(model)
    loader = batches(12)  # three batches: the mean of squares is not the square of the mean
    scores = tpr.taylor_scores(model, layers, loader, 3, CPU, criterion="molchanov")
    # per layer and kind, the filter that matters most (the finite difference is then far above rounding)
    cases = [(i, kind, scores[i][kind]) for i in (0, 1) for kind in scores[i]]
    assert [kind for _, kind, _ in cases] == ["ffn", "qk", "v"]
    for i, kind, values in cases:
        index = values.flatten().argmax().item()
        head, channel = (0, index) if kind == "ffn" else divmod(index, values.shape[1])
        entries = filter_entries(layers[i], kind, channel, head)
        score = values.flatten()[index].item()
        assert score == pytest.approx(finite_difference_importance(model, entries, loader), rel=1e-5, abs=0)
        without_bn = [(t, w) for t, w in entries if t.dim() > 1]  # conv weights only: a different number
        assert finite_difference_importance(model, without_bn, loader) != pytest.approx(score, rel=1e-3, abs=0)


def test_pruned_checkpoint_rebuilds_loads_strictly_fuses_and_exports(tmp_path):
    model = perturbed(dtype=torch.float32)
    layers, before, after = tpr.prune(
        model, batches(dtype=torch.float32), tpr.Budget("ratio", 0.4), CPU, steps=2, batches=1, step_finetune=1
    )
    table = tpr.block_table(layers, before, after)
    attention = [layer.module for layer in layers if layer.kind == "A"]
    assert list(table["stage"]) == [1, 2] and list(table["ffn_layers"]) == [2, 2]
    assert list(table["qk_kept"]) == [a.key_dim * a.num_heads for a in attention]
    assert all(a.qkvs[0].conv.out_channels == 2 * a.key_dim + a.value_dim for a in attention)
    assert list(table["v_kept"]) == [a.proj[1].conv.in_channels for a in attention]
    assert list(table["ffn_kept"]) == [
        sum(layer.module.pw1.conv.out_channels for layer in layers if layer.kind == "F" and layer.block == b)
        for b in (1, 2)
    ]
    assert (table["ffn_ratio"] == table["ffn_kept"] / 2 / table["in_width"]).all()
    assert (
        table[["qk_kept", "v_kept", "ffn_kept"]].sum(axis=1)
        < table[["qk_before", "v_before", "ffn_before"]].sum(axis=1)
    ).all()
    path = efficientvit.save_checkpoint(tmp_path / "pruned.pth", model)
    rebuilt = efficientvit.model_from_checkpoint(path).eval()  # strict: every key and shape fits
    assert rebuilt.spec.kwargs["block_dims"] == pe.block_dims(layers)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
        assert torch.allclose(efficientvit.fuse(rebuilt)(x), model(x), atol=1e-5)
    pytest.importorskip("onnxruntime")
    onnx = export_onnx(efficientvit.fuse(rebuilt), tmp_path / "pruned.onnx", x[:1])
    assert onnx_max_abs_diff(onnx, efficientvit.fuse(rebuilt), x[:1]) < 1e-4


def test_unpruned_m0_table_reads_the_released_settings_per_stage():
    model = efficientvit.create_model("efficientvit_m0", **SMALL)
    layers = tpr.model_layers(model)
    widths = [layer.widths() for layer in layers]
    table = tpr.block_table(layers, widths, widths)
    assert list(table["stage"]) == [1, 2, 2, 3, 3, 3] and list(table["heads"]) == [4] * 6
    assert list(table["qk_ratio"]) == pytest.approx([1, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])  # 16 x 4 heads / C
    assert (table["v_ratio"] == 1).all() and (table["ffn_ratio"] == 2).all()
    stages = pe.stage_settings(table)
    assert list(stages["depth"]) == [1, 2, 3] and list(stages["in_width"]) == [64, 128, 192]
    for column, released in pe.RELEASED.items():
        assert (stages[column] == released).all()


def test_stage_settings_drop_blocks_that_kept_too_little_and_plot_beside_the_released(tmp_path):
    table = pd.DataFrame(
        dict(
            block=[1, 2, 3],
            stage=[1, 2, 2],
            in_width=[64, 128, 128],
            heads=[4, 4, 4],
            qk_before=[64, 64, 64],
            qk_kept=[32, 48, 4],
            v_before=[64, 128, 128],
            v_kept=[64, 120, 8],
            ffn_before=[256, 512, 512],
            ffn_kept=[200, 300, 20],
            v_ratio=[1.0, 120 / 128, 8 / 128],
            ffn_ratio=[200 / 128, 300 / 256, 20 / 256],
        )
    )
    stages = pe.stage_settings(table)
    assert list(stages["depth"]) == [1, 1]  # block 3 kept 40 of 832 channels
    assert list(stages["key_dim"]) == [8, 6.5] and stages["mlp_ratio"][0] == pytest.approx(200 / 128)
    assert list(pe.stage_settings(table, min_kept=0.99)["depth"]) == [1, 1]  # at least one block per stage
    path = pe.plot_stage_settings(stages, tmp_path / "stages.png", "test")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_cascade_gather_puts_kept_v_channels_at_their_designed_positions():
    # head 0 keeps designed channels 0 and 2 of 4, head 1 channels 1 and 3; index 2 is the appended zero channel
    assert cascade_gather([[0, 2], [1, 3]], 4).tolist() == [[0, 2, 1, 2], [2, 0, 2, 1]]
    assert cascade_gather([[0, 5], [1, 3]], 4).tolist() == [[0, 2, 2, 2], [2, 0, 2, 1]]  # past the split: dropped
