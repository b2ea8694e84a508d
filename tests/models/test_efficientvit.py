import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import efficientvit
from efficientvit.flops import count_flops, count_params
from efficientvit.models.attention import CascadedGroupAttention, relative_offset_index
from efficientvit.models.efficientvit import CONFIGS
from efficientvit.models.layers import LayerNorm2d

from .official_reference import (
    official_forward,
    offset_index,
    ours_to_official_key,
    random_official_state_dict,
    train_mode,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
MODELS = [f"efficientvit_m{i}" for i in range(6)]
# The official code's exact parameter counts and fvcore FLOPs (analysis/published/table2_efficientvit.csv).
PARAMS = dict(zip(MODELS, [2_349_436, 2_980_560, 4_187_554, 6_900_722, 8_804_228, 12_473_772]))
PARAMS_FUSED = dict(zip(MODELS, [2_334_916, 2_964_256, 4_168_338, 6_875_890, 8_776_340, 12_436_260]))
MFLOPS_FUSED = dict(zip(MODELS, [79.20, 167.05, 201.04, 262.67, 299.31, 521.59]))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_equal_the_official_code(name):
    model = efficientvit.create_model(name)
    assert count_params(model) == PARAMS[name]
    assert count_params(efficientvit.fuse(model)) == PARAMS_FUSED[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_fused_fvcore_flops_within_one_percent_of_the_official(name):
    flops = count_flops(efficientvit.fuse(efficientvit.create_model(name))) / 1e6
    assert flops == pytest.approx(MFLOPS_FUSED[name], rel=0.01)


def test_state_dict_layout_is_timms_key_for_key():
    timm_keys = json.loads((FIXTURES / "timm_efficientvit_m0_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in efficientvit.create_model("efficientvit_m0").state_dict().items()}
    assert ours == timm_keys


def test_reference_writes_the_official_layout():
    """The test helper that writes official-layout files must agree with the real official key list."""
    official = json.loads((FIXTURES / "official_m0_keys.json").read_text())
    sd = random_official_state_dict(efficientvit.create_model("efficientvit_m0"))
    assert {k: list(v.shape) for k, v in sd.items()} == official


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [224, 256])
def test_same_function_as_the_official_implementation(name, size):
    model = efficientvit.create_model(name, img_size=size).double()
    sd = random_official_state_dict(model)
    efficientvit.load_checkpoint(model, {"model": sd})
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    expected = official_forward(
        {k: v.double() if v.is_floating_point() else v for k, v in sd.items()},
        CONFIGS[name]["depth"],
        CONFIGS[name]["q_kernels"],
        x,
    )
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["efficientvit_m0", "efficientvit_m4"])
def test_same_loss_and_gradients_as_the_official_implementation_in_train_mode(name):
    """Train mode (BatchNorm on batch statistics), float64: the loss and the gradient of every parameter."""
    model = efficientvit.create_model(name).double()
    sd = random_official_state_dict(model)
    efficientvit.load_checkpoint(model, {"model": sd})
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([3, 7])
    leaves = {k: v.double().requires_grad_() if v.is_floating_point() else v for k, v in sd.items()}
    with train_mode():
        expected = F.cross_entropy(
            official_forward(leaves, CONFIGS[name]["depth"], CONFIGS[name]["q_kernels"], x), targets
        )
    expected.backward()
    loss = F.cross_entropy(model.train()(x), targets)
    loss.backward()
    assert torch.allclose(loss, expected, atol=0, rtol=1e-10)
    # each gradient within 1e-9 of its largest entry; a BN bias right before another BN has an exactly-zero
    # gradient (rounding noise only), measured against the model's largest gradient instead
    floor = 1e-3 * max(leaves[ours_to_official_key(k)].grad.abs().max() for k, _ in model.named_parameters())
    for key, param in model.named_parameters():
        reference = leaves[ours_to_official_key(key)].grad
        assert (param.grad - reference).abs().max() <= 1e-9 * max(reference.abs().max(), floor), key


def test_offset_index_matches_the_official_discovery_order():
    for side in (1, 4, 7):
        assert torch.equal(relative_offset_index(side, side), offset_index(side))


def test_initialisation_matches_the_official_code():
    model = efficientvit.create_model("efficientvit_m0")
    block = model.stages[1].blocks[0]
    # zero-init norms close every residual branch of the blocks, and the attention projection
    for name in ("dw0.m.bn", "ffn0.m.pw2.bn", "dw1.m.bn", "ffn1.m.pw2.bn", "mixer.m.attn.proj.1.bn"):
        assert torch.all(block.get_submodule(name).weight == 0), name
    assert torch.all(block.get_submodule("ffn0.m.pw1.bn").weight == 1)
    # the official subsample block leaves its depthwise norm at one
    assert torch.all(model.stages[1].downsample.res1[0].m.bn.weight == 1)
    assert torch.all(model.head.linear.bias == 0) and model.head.linear.weight.std() < 0.03


@pytest.mark.parametrize("size", [160, 192, 200, 288, 320, (224, 320)])
def test_any_input_size_runs(size):
    model = efficientvit.create_model("efficientvit_m0", img_size=size, num_classes=7).eval()
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_image_smaller_than_the_total_stride_is_refused():
    with pytest.raises(ValueError, match="total stride"):
        efficientvit.create_model("efficientvit_m0", img_size=48)


def stage_output_sizes(model, x):
    sizes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:]))) for stage in model.stages]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    return out, sizes


def test_knob_patch_size_default_is_the_official_model():
    torch.manual_seed(0)
    before = efficientvit.create_model("efficientvit_m0", img_size=64).eval()
    torch.manual_seed(0)
    explicit = efficientvit.create_model("efficientvit_m0", img_size=64, patch_size=16).eval()
    ours, theirs = before.state_dict(), explicit.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [conv.conv.stride for conv in explicit.patch_embed[::2]] == [(2, 2)] * 4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(before(x), explicit(x))


@pytest.mark.parametrize("patch_size, size, strides", [(4, 32, [2, 2, 1, 1]), (8, 64, [2, 2, 2, 1])])
def test_knob_patch_size_runs_small_images_at_img_over_patch_size(patch_size, size, strides):
    model = efficientvit.create_model("efficientvit_m0", img_size=size, patch_size=patch_size, num_classes=10)
    assert [conv.conv.stride[0] for conv in model.patch_embed[::2]] == strides  # the last convs keep stride 1
    grid = size // patch_size  # 8x8 after the stem in both cases, then 4x4 and 2x2
    assert [info["resolution"] for info in model.stage_info] == [(g, g) for g in (grid, grid // 2, grid // 4)]
    out, sizes = stage_output_sizes(model.eval(), torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert sizes == [info["resolution"] for info in model.stage_info]
    # same keys at every patch_size; only the resolution-dependent bias tables may differ in shape
    official = efficientvit.create_model("efficientvit_m0", num_classes=10).state_dict()
    assert list(model.state_dict()) == list(official)


def test_knob_patch_size_4_fuses_exactly():
    model = randomize_batchnorm(efficientvit.create_model("efficientvit_m0", img_size=32, patch_size=4)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(efficientvit.fuse(model)(x), model(x), atol=1e-5)


def test_knob_patch_size_survives_a_checkpoint_round_trip(tmp_path):
    model = efficientvit.create_model("efficientvit_m0", img_size=32, patch_size=4, num_classes=10)
    path = efficientvit.save_checkpoint(tmp_path / "p4.pth", randomize_batchnorm(model).eval())
    rebuilt = efficientvit.model_from_checkpoint(path).eval()
    assert rebuilt.patch_size == 4 and rebuilt.stage_info == model.stage_info
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    bigger = efficientvit.model_from_checkpoint(path, img_size=64)  # bias tables resized: 4x4 -> 7x7, 2x2 -> 4x4
    assert bigger.patch_size == 4 and bigger.stage_info[2]["resolution"] == (4, 4)


@pytest.mark.parametrize("patch_size", [3, 32, 1])
def test_knob_patch_size_outside_the_allowed_values_is_refused(patch_size):
    with pytest.raises(ValueError, match=r"patch_size \(the stem's stride\) must be one of \(2, 4, 8, 16\)"):
        efficientvit.create_model("efficientvit_m0", patch_size=patch_size)


def test_small_image_at_the_default_patch_size_says_which_knob_to_set():
    with pytest.raises(ValueError, match="total stride 64 .* set patch_size=4"):
        efficientvit.create_model("efficientvit_m0", img_size=28)
    with pytest.raises(ValueError, match="set patch_size=8"):
        efficientvit.create_model("efficientvit_m0", img_size=48)
    with pytest.raises(ValueError, match="total stride 32 .* set patch_size=4"):
        efficientvit.create_model("efficientvit_m0", img_size=28, patch_size=8)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(efficientvit.UserError, match="efficientvit_m0, efficientvit_m1"):
        efficientvit.create_model("efficientvit_m9")


def test_bias_cache_is_never_stale():
    torch.manual_seed(0)
    model = efficientvit.create_model("efficientvit_m0", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)  # fills the inference cache
    other = randomize_batchnorm(efficientvit.create_model("efficientvit_m0", img_size=64))
    for p in other.parameters():
        p.data.normal_(0, 0.05)
    model.load_state_dict(other.state_dict())  # weights loaded after .eval(): the official cache goes stale here
    with torch.no_grad():
        expected = other.eval()(x)
        assert torch.equal(model(x), expected)
        model.train(), model.eval()
        assert torch.equal(model(x), expected)
        model.double()
        assert torch.allclose(model(x.double()), expected.double(), atol=1e-5)
        attn = model.stages[0].blocks[0].mixer.m.attn
        attn.attention_biases.data.add_(1.0)  # an edit through .data bumps no version counter
        assert torch.equal(attn.attention_bias(), attn.attention_biases[:, attn.attention_bias_idxs])


def test_taps_see_per_head_maps_and_agree_with_the_fast_path():
    model = randomize_batchnorm(efficientvit.create_model("efficientvit_m0", img_size=128)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        fast = model(x)
        seen = {}
        attn = model.stages[0].blocks[0].mixer.m.attn
        attn.attn_tap.register_forward_hook(lambda m, i, o: seen.setdefault("maps", o))
        attn.head_tap.register_forward_hook(lambda m, i, o: seen.setdefault("heads", o))
        tapped = model(x)
    assert torch.allclose(fast, tapped, atol=1e-5)
    windows = 2 * 2 * 2  # batch 2, an 8x8 map in 7x7 windows
    assert seen["maps"].shape == (windows, 4, 49, 49)
    assert torch.allclose(seen["maps"].sum(-1), torch.ones(windows, 4, 49), atol=1e-5)
    assert seen["heads"].shape == (windows, 4, 49, 16)


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, CascadedGroupAttention)]


def test_knob_attention_kind_changes_what_each_head_sees():
    base = attention_modules(efficientvit.create_model("efficientvit_m0"))[0]
    full = attention_modules(efficientvit.create_model("efficientvit_m0", attention="full"))[0]
    split = attention_modules(efficientvit.create_model("efficientvit_m0", attention="split"))[0]
    assert base.qkvs[0].conv.in_channels == split.qkvs[0].conv.in_channels == 16
    assert full.qkvs[0].conv.in_channels == 64
    # split: head 1 is blind to channels of split 0; cascade: it sees them through head 0's output
    for module, sees_split0 in ((split, False), (base, True)):
        randomize_batchnorm(module).eval()
        x = torch.randn(1, 64, 7, 7, requires_grad=True)
        heads = {}
        module.head_tap.register_forward_hook(lambda m, i, o, heads=heads: heads.setdefault("out", o))
        module(x)
        heads["out"][0, 1].sum().backward()
        assert (x.grad[0, :16].abs().sum() > 0) == sees_split0
        assert x.grad[0, 16:32].abs().sum() > 0 and x.grad[0, 32:].abs().sum() == 0


def test_knob_qkv_allocation_off_gives_qkv_the_head_width():
    attn = attention_modules(efficientvit.create_model("efficientvit_m0", qkv_allocation=False))[0]
    assert (attn.key_dim, attn.value_dim) == (16, 16)  # C/H = 64/4: only stage 1 coincides with the default
    attn3 = attention_modules(efficientvit.create_model("efficientvit_m0", qkv_allocation=False))[-1]
    assert (attn3.key_dim, attn3.value_dim) == (48, 48)
    assert attn3.qkvs[0].conv.out_channels == 3 * 48


def test_knob_qk_dim_and_v_ratio():
    model = efficientvit.create_model("efficientvit_m4", key_dim=32, v_ratio=0.5)
    attn = attention_modules(model)[-1]  # stage 3: C=384, H=4, so C/H = 96
    assert (attn.key_dim, attn.value_dim) == (32, 48)
    assert attn.qkvs[0].conv.out_channels == 2 * 32 + 48 and attn.dws[0].conv.in_channels == 32
    assert attn.proj[1].conv.in_channels == 4 * 48
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_knob_sandwich_n(n):
    block = efficientvit.create_model("efficientvit_m0", sandwich=n).stages[0].blocks[0]
    names = [name for name, _ in block.named_children()]
    ffns = [f"ffn{i}" for i in range(2 * n)]
    assert names.index("mixer") == 2 * n and [x for x in names if x.startswith("ffn")] == ffns


def test_knob_swin_like_alternation_and_no_token_interaction():
    block = efficientvit.create_model("efficientvit_m0", block_layout="alternate").stages[0].blocks[0]
    assert [name for name, _ in block.named_children()] == ["mixer", "dw0", "ffn0"]
    model = efficientvit.create_model("efficientvit_m0", token_interaction=False)
    assert [name for name, _ in model.stages[0].blocks[0].named_children()] == ["ffn0", "mixer", "ffn1"]
    assert len(attention_modules(model)[0].dws) == 4  # the DW conv on Q is a separate knob
    assert len(attention_modules(efficientvit.create_model("efficientvit_m0", q_dwconv=False))[0].dws) == 0


def test_knob_mlp_ratio_norm_and_activation():
    model = efficientvit.create_model("efficientvit_m0", mlp_ratio=4, norm="ln", act="hardswish")
    assert model.stages[0].blocks[0].ffn0.m.pw1.conv.out_channels == 256
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, LayerNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 128, 128))).all()


def test_knob_key_dim_v_ratio_and_mlp_ratio_per_stage():
    model = efficientvit.create_model(
        "efficientvit_m0", key_dim=[16, 8, 4], v_ratio=[1.0, 0.5, 0.25], mlp_ratio=[2, 1.5, 1], img_size=64
    )
    attention = attention_modules(model)
    for stage, (key_dim, value_dim, hidden) in zip(model.stages, [(16, 16, 128), (8, 16, 192), (4, 12, 192)]):
        attn = stage.blocks[0].mixer.m.attn  # C/H: 16, 32, 48
        assert (attn.key_dim, attn.value_dim, attn.scale) == (key_dim, value_dim, key_dim**-0.5)
        assert stage.blocks[-1].ffn1.m.pw1.conv.out_channels == hidden
    assert model.stages[1].downsample.res1[1].m.pw1.conv.out_channels == 96  # the subsample: its stage's ratio
    assert len(attention) == 6
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(efficientvit.UserError, match="key_dim needs one value per stage"):
        efficientvit.create_model("efficientvit_m0", key_dim=[16, 8])


def test_block_dims_build_the_pruned_widths_and_are_checked():
    dims = [{"qk_dim": 4, "v_channels": [[0, 3], [1, 2], [0, 15], [2, 3]], "ffn": [10, 20]}] + [None] * 5
    model = efficientvit.create_model("efficientvit_m0", img_size=64, block_dims=dims)
    block = model.stages[0].blocks[0]
    attn = block.mixer.m.attn
    assert (attn.key_dim, attn.value_dim, attn.scale) == (4, 2, 16**-0.5)  # the designed scale
    assert attn.qkvs[0].conv.out_channels == 2 * 4 + 2 and attn.proj[1].conv.in_channels == 4 * 2
    assert attn.dws[0].conv.groups == 4
    assert attn.cascade_gather[2].tolist() == [0] + [2] * 14 + [1]  # head 2's channels 0 and 15, zeros between
    assert (block.ffn0.m.pw1.conv.out_channels, block.ffn1.m.pw1.conv.out_channels) == (10, 20)
    assert model.stages[1].blocks[0].mixer.m.attn.cascade_gather is None  # unpruned: the plain cascade
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    for bad, message in [
        (dims[:2], "block_dims has 2 entries for 6 blocks"),
        ([{"qk": 4}] + [None] * 5, "block_dims entries take qk_dim, v_channels, ffn; got qk"),
        ([{"ffn": [10]}] + [None] * 5, "a block has 2 FFN layers"),
        ([{"v_channels": [[0, 1], [0], [0, 1], [0, 1]]}] + [None] * 5, "value_channels needs 4 lists"),
        ([{"v_channels": [[0, 16]] * 4}] + [None] * 5, "among the 16 designed"),
    ]:
        with pytest.raises(efficientvit.UserError, match=message):
            efficientvit.create_model("efficientvit_m0", img_size=64, block_dims=bad)


def test_distillation_head_averages_at_inference():
    model = randomize_batchnorm(efficientvit.create_model("efficientvit_m0", img_size=64, distillation=True))
    x = torch.randn(2, 3, 64, 64)
    model.train()
    logits, logits_dist = model(x)
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), (model.head(feats) + model.head_dist(feats)) / 2)
