import json
from pathlib import Path

import pytest
import torch

import efficientvit
from efficientvit.flops import count_params
from efficientvit.models.attention import TokenAttention
from efficientvit.models.layout import mhsa_proportion, spread_layout

FIXTURES = Path(__file__).parents[1] / "fixtures"
SMALL_DEIT = dict(img_size=32, patch_size=8, embed_dim=24, num_heads=3)
SMALL_SWIN = dict(img_size=32, patch_size=2, embed_dim=(12, 24), num_heads=(2, 4), window_size=4, layout="AF,AF")


def test_default_layouts_have_timms_parameter_counts():
    assert count_params(efficientvit.create_model("deit_tiny")) == 5_717_416
    assert count_params(efficientvit.create_model("swin_tiny")) == 28_288_354


@pytest.mark.parametrize(
    "name,fixture",
    [
        ("deit_tiny", "timm_deit_tiny_patch16_224_keys.json"),
        ("swin_tiny", "timm_swin_tiny_patch4_window7_224_keys.json"),
    ],
)
def test_exports_exactly_timms_key_layout(name, fixture):
    expected = json.loads((FIXTURES / fixture).read_text())
    exported = efficientvit.create_model(name).to_timm_layout()
    assert {k: list(v.shape) for k, v in exported.items()} == expected


def test_timm_layout_round_trips_through_load_checkpoint():
    model = efficientvit.create_model("swin_tiny", img_size=224).eval()
    other = efficientvit.create_model("swin_tiny", fused_qkv=False).eval()  # separate q/k/v, as pruning needs
    assert efficientvit.load_checkpoint(other, model.to_timm_layout()) == "timm"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(other(x), model(x), atol=1e-6)
    assert set(other.to_timm_layout()) == set(model.to_timm_layout())


def test_fused_qkv_splits_at_the_models_own_widths_when_qk_and_v_differ():
    # Fig. 5's width control: Q/K 64 channels a head, V 32 (a fused qkv of 480 rows is not three equal thirds)
    kwargs = dict(embed_dim=96, num_heads=3, head_dim=64, layout="AF", layer_dims=[[64, 32], 384], img_size=32)
    model = efficientvit.create_model("deit_tiny", **kwargs).eval()
    other = efficientvit.create_model("deit_tiny", fused_qkv=False, **kwargs).eval()
    efficientvit.load_checkpoint(other, model.to_timm_layout())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(other(x), model(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["full", "split", "cascade"])
@pytest.mark.parametrize("layout", ["A", "F", "AAFF", "FAFFA"])
def test_any_layout_and_attention_kind_builds_and_runs(kind, layout):
    deit = efficientvit.create_model("deit_tiny", layout=layout, attention=kind, num_classes=5, **SMALL_DEIT)
    swin = efficientvit.create_model(
        "swin_tiny", **{**SMALL_SWIN, "layout": [layout, layout[::-1]]}, attention=kind, num_classes=5
    )
    for model in (deit, swin):
        out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 5)
        out.sum().backward()


def test_split_and_cascade_heads_only_see_their_split():
    x = torch.randn(2, 5, 12, requires_grad=True)
    for kind, head1_sees_split0 in (("split", False), ("cascade", True), ("full", True)):
        attn = TokenAttention(12, 3, kind=kind)
        seen = {}
        attn.head_tap.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("heads", o))
        attn(x)
        x.grad = None
        seen["heads"][:, 1].sum().backward()
        grad = x.grad.abs().sum(dim=(0, 1))
        assert (grad[:4].sum() > 0) == head1_sees_split0, kind
        assert grad[4:8].sum() > 0
        assert (grad[8:].sum() > 0) == (kind == "full"), kind


@pytest.mark.parametrize("name,kwargs", [("deit_tiny", SMALL_DEIT), ("swin_tiny", SMALL_SWIN)])
def test_taps_have_per_head_shapes_and_equal_the_fast_path(name, kwargs):
    model = efficientvit.create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
        attn = next(m for m in model.modules() if isinstance(m, TokenAttention))
        seen = {}
        attn.attn_tap.register_forward_hook(lambda m, i, o: seen.setdefault("maps", o))
        attn.head_tap.register_forward_hook(lambda m, i, o: seen.setdefault("heads", o))
        tapped = model(x)
    assert torch.allclose(fast, tapped, atol=1e-5)
    if name == "deit_tiny":  # 16 patches + the class token
        assert seen["maps"].shape == (2, 3, 17, 17) and seen["heads"].shape == (2, 3, 17, 8)
    else:  # a 16x16 map in 4x4 windows: 16 windows per image
        assert seen["maps"].shape == (2 * 16, 2, 16, 16) and seen["heads"].shape == (2 * 16, 2, 16, 6)
    assert torch.allclose(seen["maps"].sum(-1), torch.ones(seen["maps"].shape[:-1]), atol=1e-5)


def test_every_other_attention_layer_of_a_swin_stage_is_shifted():
    model = efficientvit.create_model("swin_tiny", **{**SMALL_SWIN, "layout": ["AAFA", "AA"]})
    shifts = [[layer.shift for layer in stage.layers if hasattr(layer, "shift")] for stage in model.stages]
    assert shifts == [[0, 2, 0], [0, 2]]


def test_own_checkpoint_rebuilds_layout_widths_and_kind(tmp_path):
    model = efficientvit.create_model(
        "swin_tiny", **{**SMALL_SWIN, "layout": "AFFF,FFA"}, attention="split", num_classes=3
    ).eval()
    path = efficientvit.save_checkpoint(tmp_path / "swin.pth", model)
    rebuilt = efficientvit.model_from_checkpoint(path).eval()
    assert rebuilt.layout == ["AFFF", "FFA"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_deit_position_embeddings_resize_to_another_size():
    model = efficientvit.create_model("deit_tiny", **SMALL_DEIT)
    bigger = efficientvit.create_model("deit_tiny", **{**SMALL_DEIT, "img_size": 48})
    efficientvit.load_checkpoint(bigger, model.state_dict())
    assert bigger.pos_embed.shape == (1, 1 + 36, 24)


def test_swin_relative_position_tables_resize_to_another_window():
    model = efficientvit.create_model("swin_tiny", **SMALL_SWIN)
    wider = efficientvit.create_model("swin_tiny", **{**SMALL_SWIN, "window_size": 8})
    with torch.no_grad():  # a constant table stays constant when resized
        model.stages[0].layers[0].attn.relative_position_bias_table.fill_(0.5)
    efficientvit.load_checkpoint(wider, model.state_dict())
    table = wider.stages[0].layers[0].attn.relative_position_bias_table
    assert table.shape == (15 * 15, 2) and torch.allclose(table, torch.full_like(table, 0.5))


def test_layout_helpers():
    assert mhsa_proportion("AFAF") == 0.5 and mhsa_proportion(["AF", "FF"]) == 0.25
    layout = spread_layout(10, 2)
    assert layout.count("A") == 2 and layout.index("A") > 0 and layout.rindex("A") < 9


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("deit_tiny", dict(layout="AFX"), "may only contain A"),
        ("swin_tiny", dict(layout="AF,,AF,AF"), "stage 2 is empty"),
        ("deit_tiny", dict(embed_dim=100, num_heads=3), "not divisible by num_heads"),
        ("swin_tiny", dict(img_size=192), "window_size 7 does not tile"),
        ("swin_tiny", dict(img_size=100), "multiple of patch_size"),
        ("deit_tiny", dict(img_size=100), "multiple of patch_size"),
    ],
)
def test_bad_configurations_name_the_parameter(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        efficientvit.create_model(name, **kwargs)


def test_deit_without_attention_pools_the_patch_tokens():
    # the class token would never see the image: every input would get the same logits
    ffn_only = efficientvit.create_model("deit_tiny", img_size=32, patch_size=4, embed_dim=24, layout="FFFF").eval()
    x = torch.randn(2, 3, 32, 32)
    assert ffn_only.global_pool == "avg" and not torch.allclose(ffn_only(x)[0], ffn_only(x)[1])
    assert torch.allclose(
        ffn_only.forward_head(ffn_only.forward_features(x), pre_logits=True),
        ffn_only.forward_features(x)[:, 1:].mean(dim=1),
    )
    assert (
        efficientvit.create_model("deit_tiny", img_size=32, patch_size=4, embed_dim=24, layout="AF").global_pool
        == "token"
    )
    with pytest.raises(ValueError, match="global_pool must be"):
        efficientvit.create_model("deit_tiny", layout="AF", global_pool="max")
