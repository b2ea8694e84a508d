"""Our models against timm's implementations (an independent reference), with the same random weights."""

import pytest
import torch

import efficientvit

timm = pytest.importorskip("timm")

PAIRS = [
    ("deit_tiny", "deit_tiny_patch16_224"),
    ("swin_tiny", "swin_tiny_patch4_window7_224"),
    ("efficientvit_m0", "efficientvit_m0"),
    ("efficientvit_m3", "efficientvit_m3"),
]


def random_timm_model(name):
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("ours_name,timm_name", PAIRS)
def test_same_logits_as_timm_and_export_round_trip(ours_name, timm_name):
    reference = random_timm_model(timm_name)
    assert sum(p.numel() for p in reference.parameters()) == sum(
        p.numel() for p in efficientvit.create_model(ours_name).parameters())
    ours = efficientvit.create_model(ours_name).eval()
    assert efficientvit.load_checkpoint(ours, reference.state_dict()) == "timm"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, out = reference(x), ours(x)
        assert (expected - out).abs().max() < 1e-4 * expected.abs().max()
        if hasattr(ours, "to_timm_layout"):
            back = timm.create_model(timm_name, pretrained=False).eval()
            back.load_state_dict(ours.to_timm_layout(), strict=True)
            assert torch.equal(back(x), expected)
