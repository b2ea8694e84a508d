import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import efficientvit
from analysis import head_similarity as hs
from efficientvit.data.pipeline import collate, eval_transform, image_folder
from efficientvit.data.synthetic import make_synthetic

TINY_DEIT = dict(img_size=64, patch_size=16, embed_dim=24, num_heads=3, layout="AFAF", num_classes=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "synth", classes=4, train=8, val=10, size=64, seed=0)


def loader(data, batch):
    dataset = image_folder(data, "val", eval_transform(64))
    return DataLoader(dataset, batch_size=batch, collate_fn=collate)


def test_identical_heads_give_one_and_orthogonal_heads_zero():
    stat = hs.PairwiseCosine()
    base = torch.randn(5, 2, 1, 8)
    stat.update(torch.cat([base, 3 * base], dim=2))  # the same direction, another scale
    assert torch.allclose(stat.mean(), torch.ones(2, 2, dtype=torch.float64))
    ortho = hs.PairwiseCosine()
    eye = torch.eye(3).expand(4, 2, 3, 3)  # head h is the h-th unit vector in every window of every image
    ortho.update(eye)
    assert torch.allclose(ortho.mean(), torch.eye(3, dtype=torch.float64))


def test_streaming_equals_a_direct_computation():
    features = torch.randn(7, 3, 4, 10)  # 7 images, 3 windows, 4 heads
    stat = hs.PairwiseCosine()
    for chunk in features.split([2, 4, 1]):
        stat.update(chunk)
    direct = torch.tensor(
        [
            [
                [sum(F_cos(features[n, w, i], features[n, w, j]).item() for w in range(3)) / 3 for j in range(4)]
                for i in range(4)
            ]
            for n in range(7)
        ]
    )
    assert torch.allclose(stat.mean(), direct.mean(0).double(), atol=1e-6)
    assert torch.allclose(stat.std(), direct.double().std(0, unbiased=False), atol=1e-6)


def test_the_maximum_is_taken_per_image_then_averaged_and_the_other_order_is_kept():
    """Image A: heads 0 and 1 identical, head 2 apart; image B: heads 0 and 2 identical, head 1 apart. Per image
    two of three heads have a twin (2/3 each); averaged over images first, every pair is only half alike (1/2)."""
    e0, e1 = torch.eye(3)[0], torch.eye(3)[1]
    image_a, image_b = torch.stack([e0, e0, e1]), torch.stack([e0, e1, e0])
    stat = hs.PairwiseCosine()
    stat.update(torch.stack([image_a, image_b])[:, None])  # (2 images, 1 window, 3 heads, 3)
    assert torch.allclose(stat.max_per_image(), torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    summary = hs.block_summary(stat)
    assert summary["mean_max_similarity"] == pytest.approx(2 / 3)
    assert summary["max_of_mean_similarity"] == pytest.approx(1 / 2)
    assert summary["max_max_similarity"] == pytest.approx(1 / 2)
    assert summary["mean_max_similarity_std"] == pytest.approx(0.0)


def test_the_spread_over_images_is_reported():
    features = torch.randn(6, 4, 3, 5)  # 6 images, 4 windows, 3 heads
    stat = hs.PairwiseCosine()
    for chunk in features.split([4, 2]):
        stat.update(chunk)
    cosine = torch.nn.functional.cosine_similarity(features[:, :, :, None], features[:, :, None, :], dim=-1)
    by_hand = torch.tensor(
        [
            [[max(cosine[n, w, i, j].item() for j in range(3) if j != i) for i in range(3)] for w in range(4)]
            for n in range(6)
        ]
    ).mean(dim=(1, 2))
    summary = hs.block_summary(stat)
    assert summary["mean_max_similarity"] == pytest.approx(by_hand.mean().item(), abs=1e-6)
    assert summary["mean_max_similarity_std"] == pytest.approx(by_hand.std(unbiased=False).item(), abs=1e-6)
    assert summary["mean_max_similarity_ci95"] == pytest.approx(
        1.96 * by_hand.std(unbiased=False).item() / 6**0.5, abs=1e-6
    )


def F_cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("deit_tiny", TINY_DEIT),
        (
            "swin_tiny",
            dict(img_size=64, patch_size=4, embed_dim=(12, 24), num_heads=(2, 4), window_size=4, layout="AF,AF"),
        ),
        ("efficientvit_m0", dict(img_size=64)),
    ],
)
def test_results_do_not_depend_on_batch_size(data, name, kwargs):
    model = efficientvit.create_model(name, **kwargs)
    a_pairs, a_summary = hs.head_similarity(model, loader(data, 3), "attention")
    b_pairs, b_summary = hs.head_similarity(model, loader(data, 10), "attention")
    assert len(a_pairs) and (a_pairs["n_images"] == 10).all() and len(a_summary)
    pd.testing.assert_frame_equal(a_pairs, b_pairs, check_exact=False, atol=1e-6)
    pd.testing.assert_frame_equal(a_summary, b_summary, check_exact=False, atol=1e-6)


def test_split_heads_lower_the_similarity_on_a_constructed_model(data):
    """Heads with the same weights: seeing the same channels (full) they are identical; seeing their own
    channel splits they differ."""
    full = efficientvit.create_model("deit_tiny", **{**TINY_DEIT, "layout": "A"}, attention="full")
    split = efficientvit.create_model("deit_tiny", **{**TINY_DEIT, "layout": "A"}, attention="split")
    with torch.no_grad():
        for p in [*full.parameters(), *split.parameters()]:  # peaked attention maps, not near-uniform ones
            p.mul_(20)
        qkv = full.layers[0].attn.qkv.weight.view(3, 3, 8, 24)  # (q/k/v, heads, head_dim, in)
        qkv[:, 1:] = qkv[:, :1]
        for head in split.layers[0].attn.qkvs:
            head.weight.copy_(split.layers[0].attn.qkvs[0].weight)
            head.bias.copy_(split.layers[0].attn.qkvs[0].bias)
    for feature in ("attention", "output"):
        sim_full = hs.head_similarity(full, loader(data, 5), feature)[1]["mean_max_similarity"].item()
        sim_split = hs.head_similarity(split, loader(data, 5), feature)[1]["mean_max_similarity"].item()
        assert sim_full == pytest.approx(1.0) and sim_split < sim_full - 0.01


def test_cli_writes_both_csvs_and_reads_our_checkpoints(data, tmp_path):
    model = efficientvit.create_model("deit_tiny", **TINY_DEIT)
    checkpoint = efficientvit.save_checkpoint(tmp_path / "proxy.pth", model)
    assert (
        hs.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(data),
                "--images",
                "50",
                "--batch",
                "4",
                "--workers",
                "0",
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    summary = pd.read_csv(tmp_path / "out" / "deit_tiny_proxy_attention_summary.csv")
    assert list(summary["block"]) == [1, 2] and (summary["n_images"] == 10).all()
    assert (tmp_path / "out" / "deit_tiny_proxy_attention_pairwise.json").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "deit_tiny", "--img-size", "64"], None),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_bad_input(data, tmp_path, capsys, extra, message):
    if message is None:  # a model without attention
        extra = ["--model-config", str(write_ffn_only(tmp_path))]
        message = "no attention layers"
    assert hs.main(["--data", str(data), "--workers", "0", "--out-dir", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def write_ffn_only(tmp_path):
    path = tmp_path / "ffn.yaml"
    path.write_text("model: deit_tiny\nmodel_kwargs: {layout: FF, embed_dim: 24, num_heads: 3, img_size: 64}\n")
    return path


def test_checkpoint_of_another_model_and_empty_split(data, tmp_path, capsys):
    other = efficientvit.save_checkpoint(tmp_path / "m0.pth", efficientvit.create_model("efficientvit_m0"))
    torch.save(efficientvit.create_model("efficientvit_m0").state_dict(), tmp_path / "plain.pth")
    assert hs.main(["--model", "deit_tiny", "--checkpoint", str(tmp_path / "plain.pth"), "--data", str(data)]) == 2
    assert "does not fit model deit_tiny" in capsys.readouterr().err
    (data / "empty").mkdir(exist_ok=True)
    assert hs.main(["--checkpoint", str(other), "--data", str(data), "--split", "empty"]) == 2
    assert "no classes" in capsys.readouterr().err
