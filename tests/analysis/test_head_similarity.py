import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import efficientvit
from analysis import head_similarity as hs
from efficientvit.data.pipeline import collate, eval_transform, image_folder
from efficientvit.data.sources import open_split
from efficientvit.data.synthetic import make_synthetic
from efficientvit.models.swin import shift_mask

from ..helpers import class_folders, pretrained_in_hub_cache

TINY_DEIT = dict(img_size=64, patch_size=16, embed_dim=24, num_heads=3, layout="AFAF", num_classes=4)
# stage 1 is 16 x 16 tokens in 16 windows of 4 x 4; its second attention layer shifts them by 2 (a masked block)
TINY_SWIN = dict(img_size=64, patch_size=4, embed_dim=(12, 24), num_heads=(2, 4), window_size=4, layout="AFAF,AF")


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
        ("swin_tiny", TINY_SWIN),
        ("efficientvit_m0", dict(img_size=64)),
    ],
)
def test_results_do_not_depend_on_batch_size(data, name, kwargs):
    model = efficientvit.create_model(name, **kwargs)
    for feature in ("attention", "output"):
        a_pairs, a_summary = hs.head_similarity(model, loader(data, 3), feature)
        b_pairs, b_summary = hs.head_similarity(model, loader(data, 10), feature)
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
    controls = {"attention": "centred_mean_max_similarity", "output": "cka_mean_max"}
    for feature, control in controls.items():
        full_summary = hs.head_similarity(full, loader(data, 5), feature)[1]
        split_summary = hs.head_similarity(split, loader(data, 5), feature)[1]
        for column in ("mean_max_similarity", control):  # the paper's metric and its control agree here
            sim_full, sim_split = full_summary[column].item(), split_summary[column].item()
            assert sim_full == pytest.approx(1.0) and sim_split < sim_full - 0.01
        assert full_summary["entropy_mean"].item() < hs.NEAR_UNIFORM and not full_summary["near_uniform"].item()


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


# -- the controls, each against an independent computation ------------------------------------------------------


def numpy_normalised_entropy(maps: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """H / log(reachable keys) of every row, written directly; NaN for rows of one key."""
    out = np.full(maps.shape[:-1], np.nan)
    for index in np.ndindex(*maps.shape[:-1]):
        p = maps[index][keep[index]]
        if len(p) > 1:
            p = p[p > 0]
            out[index] = -(p * np.log(p)).sum() / np.log(keep[index].sum())
    return out


def test_entropy_matches_a_direct_numpy_formula_with_masked_keys_and_zero_probabilities():
    rng = np.random.default_rng(0)
    shape = (4, 3, 2, 5, 5)  # images, windows, heads, queries, keys
    keep = rng.random(shape) > 0.4
    keep[..., range(5), range(5)] = True  # every query reaches itself
    keep[0, 0, 0, 0] = np.eye(5, dtype=bool)[0]  # a query with one key: no choice, left out
    logits = 3 * rng.normal(size=shape)
    logits[1, 1, 1, 2, :] = -np.inf  # a row whose reachable keys but one get probability exactly 0 (0 log 0 = 0)
    logits[1, 1, 1, 2, 2] = 0.0
    maps = np.where(keep, np.exp(logits), 0.0)
    maps /= maps.sum(-1, keepdims=True)
    expected = numpy_normalised_entropy(maps, keep)
    got = hs.normalised_entropy(torch.tensor(maps), torch.tensor(keep))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(expected[0, 0, 0, 0]) and expected[1, 1, 1, 2] == pytest.approx(0.0)
    stat = hs.HeadEntropy()
    for chunk in got.split([1, 3]):  # streamed over images
        stat.update(chunk)
    per_head = np.nanmean(np.moveaxis(expected, 2, 0).reshape(2, -1), axis=1)
    np.testing.assert_allclose(stat.per_head().numpy(), per_head, rtol=1e-12)
    uniform, peaked = torch.full((1, 7), 1 / 7), torch.eye(7)[:1]
    assert hs.normalised_entropy(uniform).item() == pytest.approx(1.0)
    assert hs.normalised_entropy(peaked).item() == 0.0


def test_centred_similarity_is_zero_for_uniform_maps_where_the_plain_cosine_is_one():
    maps = torch.zeros(3, 2, 4, 49, 49).softmax(dim=-1)  # float32 softmax of equal logits: uniform, up to rounding
    plain, centred = hs.PairwiseCosine(), hs.PairwiseCosine()
    plain.update(maps.flatten(-2))
    centred.update(hs.centred_maps(maps))
    assert hs.block_summary(plain)["mean_max_similarity"] == pytest.approx(1.0)
    assert hs.block_summary(centred)["mean_max_similarity"] == 0.0
    assert (hs.normalised_entropy(maps) - 1).abs().max() < 1e-6


def test_uniform_within_swins_shift_mask_is_uniform():
    """Queries of a shifted window see only their region: uniform over it is entropy 1 and centred similarity 0;
    counting the masked keys would call these maps peaked, and make their shared mask a similarity."""
    mask = shift_mask((8, 8), 4, 2)  # (4 windows, 1, 16, 16)
    maps = (torch.zeros(3, 4, 2, 16, 16) + mask).softmax(dim=-1)  # (images, windows, heads, N, N)
    keep = (mask > hs.MASKED).expand(maps.shape)
    assert (hs.normalised_entropy(maps, keep) - 1).abs().max() < 1e-6
    assert hs.normalised_entropy(maps).nanmean() < hs.NEAR_UNIFORM
    with_mask, without = hs.PairwiseCosine(), hs.PairwiseCosine()
    with_mask.update(hs.centred_maps(maps, keep))
    without.update(hs.centred_maps(maps))
    assert hs.block_summary(with_mask)["mean_max_similarity"] == 0.0
    assert hs.block_summary(without)["mean_max_similarity"] > 0.5


def test_centred_similarity_matches_a_direct_numpy_computation():
    maps = (3 * torch.randn(5, 2, 3, 6, 6)).softmax(dim=-1)  # images, windows, heads, N, N
    stat = hs.PairwiseCosine()
    for chunk in maps.split([2, 3]):
        stat.update(hs.centred_maps(chunk))
    centred = maps.double().numpy().reshape(5, 2, 3, 36) - 1 / 6
    unit = centred / np.linalg.norm(centred, axis=-1, keepdims=True)
    cosine = np.einsum("nwid,nwjd->nwij", unit, unit)  # (images, windows, heads, heads)
    np.testing.assert_allclose(stat.mean().numpy(), cosine.mean(axis=(0, 1)), atol=1e-12)
    others = np.where(np.eye(3, dtype=bool), -np.inf, cosine).max(axis=-1)
    assert hs.block_summary(stat)["mean_max_similarity"] == pytest.approx(others.mean(), abs=1e-12)
    identical = maps[:, :, :1].expand(-1, -1, 3, -1, -1)  # three copies of one peaked head
    twins = hs.PairwiseCosine()
    twins.update(hs.centred_maps(identical))
    assert hs.block_summary(twins)["mean_max_similarity"] == pytest.approx(1.0)


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of (n, d) features, written directly in float64."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def streamed_cka(features: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    stat = hs.PairwiseCKA()
    for chunk in features.split(chunks):
        stat.update(chunk)
    return stat.matrix()


def test_cka_streamed_equals_the_direct_formula_and_ignores_rotation_and_scale():
    rng = np.random.default_rng(0)
    images, windows, heads, tokens, dim = 6, 2, 3, 5, 4
    base = rng.normal(size=(images, windows, tokens, dim))
    features = np.stack(
        [base, base @ rng.normal(size=(dim, dim)) + 0.5 * rng.normal(size=base.shape), rng.normal(size=base.shape)],
        axis=2,
    )  # head 1 a noisy linear map of head 0, head 2 unrelated
    features += 1e3  # a large common mean: the streamed centring must not cancel badly
    cka = streamed_cka(torch.tensor(features, dtype=torch.float32), [2, 3, 1])
    samples = [features[:, :, h].reshape(-1, dim) for h in range(heads)]  # tokens of every window and image
    direct = np.array([[numpy_cka(samples[i], samples[j]) for j in range(heads)] for i in range(heads)])
    np.testing.assert_allclose(cka.numpy(), direct, atol=1e-5)
    assert direct[0, 1] > 0.5 > direct[0, 2]
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    turned = features.copy()
    turned[:, :, 1] = 7.0 * (features[:, :, 1] @ rotation)  # another V basis, another scale
    turned[:, :, 2] *= 0.01
    np.testing.assert_allclose(streamed_cka(torch.tensor(turned), [6]).numpy(), direct, atol=1e-5)
    assert hs.max_over_others(torch.tensor(direct)).numpy() == pytest.approx(
        np.where(np.eye(heads, dtype=bool), -np.inf, direct).max(axis=1)
    )


def test_a_constant_head_has_no_cka_and_is_left_out_of_the_maximum():
    features = torch.randn(4, 1, 3, 5, 2)
    features[:, :, 2] = 1.0
    cka = streamed_cka(features, [4])
    assert cka[2].isnan().all() and not cka[:2, :2].isnan().any()
    best = hs.max_over_others(cka)
    assert best[:2].tolist() == pytest.approx([cka[0, 1].item()] * 2) and best[2].isnan()


def test_swin_heads_attending_uniformly_within_the_shift_mask_are_flagged(data):
    """Q and K at zero and no position bias: every head attends uniformly to the keys its mask leaves, shifted
    windows included. The paper's metric says 1 (identical heads); entropy says uniform; centred says 0."""
    model = efficientvit.create_model("swin_tiny", **TINY_SWIN)
    with torch.no_grad():
        for _, _, attn in hs.attention_blocks(model):
            attn.qkv.weight[: 2 * attn.num_heads * attn.qk_dim] = 0
            attn.qkv.bias[: 2 * attn.num_heads * attn.qk_dim] = 0
            attn.relative_position_bias_table.zero_()
    assert model.stages[0].layers[2].attn_mask is not None  # block 2 is shifted and masked
    summary = hs.head_similarity(model, loader(data, 4), "attention")[1]
    assert summary["mean_max_similarity"].tolist() == pytest.approx([1.0] * 3)
    assert summary["entropy_min"].tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    assert summary["near_uniform"].all() and (summary["centred_mean_max_similarity"] == 0).all()
    assert summary[["cka_mean_max", "cka_max_max"]].isna().all().all()  # the output control is another run's
    output = hs.head_similarity(model, loader(data, 4), "output")[1]
    assert output["near_uniform"].all() and output["centred_mean_max_similarity"].isna().all()
    assert output["cka_mean_max"].between(0, 1).all()


def test_random_init_builds_the_checkpoints_architecture_afresh(data, tmp_path):
    trained = efficientvit.create_model("deit_tiny", **TINY_DEIT, attention="split")
    checkpoint = str(efficientvit.save_checkpoint(tmp_path / "proxy.pth", trained))
    fresh = hs.build_model(None, checkpoint, None, None, random_init=True, seed=3)
    again = hs.build_model(None, checkpoint, None, None, random_init=True, seed=3)
    assert fresh.spec == trained.spec
    trained_state, fresh_state = trained.state_dict(), fresh.state_dict()
    assert {k: v.shape for k, v in fresh_state.items()} == {k: v.shape for k, v in trained_state.items()}
    assert any(not torch.equal(fresh_state[k], trained_state[k]) for k in trained_state)
    assert all(torch.equal(fresh_state[k], v) for k, v in again.state_dict().items())  # the seed fixes it
    config = hs.SimilarityConfig(
        data=str(data), checkpoint=checkpoint, random_init=True, images=4, batch=3, workers=0, out_dir=tmp_path
    )
    result = hs.run(config)
    assert result.paths == [
        tmp_path / f"deit_tiny_proxy_random_init_attention_{t}.csv" for t in ("pairwise", "summary")
    ]
    assert (result.summary["checkpoint"] == "random_init").all() and (result.summary["attention_kind"] == "split").all()
    pd.testing.assert_frame_equal(pd.read_csv(result.paths[0]), result.pairwise, check_exact=False, atol=1e-9)
    pd.testing.assert_frame_equal(pd.read_csv(result.paths[1]), result.summary, check_exact=False, atol=1e-9)
    assert result.summary["near_uniform"].all()  # a fresh DeiT attends almost uniformly


def test_run_returns_its_tables_with_the_controls_beside_the_papers_columns(data, tmp_path):
    checkpoint = efficientvit.save_checkpoint(
        tmp_path / "proxy.pth", efficientvit.create_model("deit_tiny", **TINY_DEIT)
    )
    config = hs.SimilarityConfig(data=str(data), checkpoint=str(checkpoint), feature="output", images=4, workers=0)
    result = hs.run(hs.SimilarityConfig(**{**vars(config), "out_dir": tmp_path / "out"}))
    assert isinstance(result, hs.SimilarityResult) and all(path.exists() for path in result.paths)
    assert list(result.summary.columns[:9]) == [
        "model",
        "checkpoint",
        "attention_kind",
        "feature",
        "stage",
        "block",
    ] + [
        "heads",
        "mean_max_similarity",
        "mean_max_similarity_std",
    ]
    controls = ["entropy_mean", "entropy_min", "near_uniform", "centred_mean_max_similarity", "cka_mean_max"]
    assert set(controls) <= set(result.summary.columns) and (result.summary["checkpoint"] == "proxy").all()
    pair = ["cosine_mean", "cosine_std", "n_images", "entropy_i", "entropy_j", "centred_cosine_mean", "cka"]
    assert set(pair) <= set(result.pairwise.columns)
    diagonal = result.pairwise.query("head_i == head_j")
    assert diagonal["cka"].tolist() == pytest.approx([1.0] * len(diagonal))


def test_a_pretrained_name_measures_its_model_on_the_images_its_transform_makes(tmp_path, monkeypatch):
    """--checkpoint NAME --data VAL_FOLDER: the name builds the model, the split is read with the weights'
    transform, and the random-init control keeps that transform (the same images, prepared the same way)."""
    name = "timm/efficientvit_m0.r224_in1k"
    pretrained_in_hub_cache(name)
    val = class_folders(tmp_path / "val", 3, size=(40, 30))
    opened = []
    monkeypatch.setattr(hs, "open_split", lambda *args, **kwargs: opened.append(kwargs) or open_split(*args, **kwargs))
    for random_init in (False, True):
        config = hs.SimilarityConfig(
            data=str(val), checkpoint=name, random_init=random_init, images=2, batch=2, workers=0, out_dir=tmp_path
        )
        summary = hs.run(config).summary
        assert (summary["model"] == "efficientvit_m0").all() and (summary["n_images"] == 2).all()
    assert [kwargs["pretrained_cfg"]["crop_pct"] for kwargs in opened] == [0.875, 0.875]
    assert (summary["checkpoint"] == "random_init").all()
    assert (tmp_path / "efficientvit_m0_efficientvit_m0.r224_in1k_attention_summary.csv").exists()
