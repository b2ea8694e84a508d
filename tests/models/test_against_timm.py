"""Our models against timm's implementations (an independent reference), with the same realistic weights."""

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import efficientvit
from efficientvit.models.registry import family_checkpoint_filter

timm = pytest.importorskip("timm")

PAIRS = [
    ("deit_tiny", "deit_tiny_patch16_224"),
    ("swin_tiny", "swin_tiny_patch4_window7_224"),
    ("efficientvit_m0", "efficientvit_m0"),
    ("efficientvit_m3", "efficientvit_m3"),
]


def realistic_timm_model(name: str) -> torch.nn.Module:
    """timm's own initialisation, every tensor then moved off it by noise of its scale: norms no longer (1, 0)
    and BN statistics not (0, 1), so each norm's epsilon, affine and statistics all reach the logits."""
    torch.manual_seed(0)
    no_drop_path = {} if name.startswith("efficientvit") else {"drop_path_rate": 0.0}  # train mode: deterministic
    model = timm.create_model(name, pretrained=False, **no_drop_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp(min=0.02) * 0.5 if p.numel() > 1 else 0.0)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    return model


def norm_signature(model: torch.nn.Module) -> Counter:
    """Every normalisation layer as (kind, width, eps), counted: a model-agnostic view of the constructors' norms."""
    found = Counter()
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            found["LayerNorm", m.normalized_shape[-1], m.eps] += 1
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            found["BatchNorm", m.num_features, m.eps] += 1
    return found


@pytest.mark.parametrize("ours_name,timm_name", PAIRS)
def test_every_norm_has_timms_width_and_epsilon(ours_name, timm_name):
    ours = norm_signature(efficientvit.create_model(ours_name))
    reference = norm_signature(timm.create_model(timm_name, pretrained=False))
    assert ours == reference, f"ours only: {ours - reference}; timm only: {reference - ours}"


def test_norm_signature_sees_an_epsilon_change():
    model = efficientvit.create_model("deit_tiny")
    before = norm_signature(model)
    model.norm.eps = 1e-3
    assert norm_signature(model) != before


def close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    return (ours - reference).abs().max().item() <= tolerance * reference.abs().max().item()


def forward_backward(model: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Eval-mode logits (BN running statistics), then train-mode loss and every gradient (batch statistics)."""
    model = model.to(dtype)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        logits = model.eval()(x)
    loss = F.cross_entropy(model.train()(x), torch.tensor([3, 7]))
    loss.backward()
    return logits, loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def gradient_error(grads: dict, reference: dict) -> float:
    """Worst gradient difference, each relative to its tensor's largest magnitude; a tensor whose gradient is
    exactly zero in theory (a BN bias right before another BN) is measured against the model's largest gradient."""
    scale = 1e-3 * max(g.abs().max().item() for g in reference.values())
    return max(
        (grads[name].double() - g.double()).abs().max().item() / max(g.abs().max().item(), scale)
        for name, g in reference.items()
    )


@pytest.mark.slow
@pytest.mark.parametrize("ours_name,timm_name", PAIRS)
def test_same_logits_loss_and_gradients_as_timm(ours_name, timm_name):
    """float64: ours equals timm to 1e-10 (the same maths). float32: logits and loss within 1e-5 of timm's, and
    gradients as close to the float64 truth as timm's own float32 gradients are (EfficientViT's train-mode BNs on
    a batch of two amplify rounding: timm's own float32 gradients are 1.5e-4 off its float64 ones)."""
    reference = realistic_timm_model(timm_name)
    runs = {}
    for dtype in (torch.float64, torch.float32):
        ours = efficientvit.create_model(ours_name)
        assert efficientvit.load_checkpoint(ours, reference.state_dict()) == "timm"
        logits, loss, grads = forward_backward(ours, dtype)
        timm_logits, timm_loss, timm_grads = forward_backward(copy.deepcopy(reference), dtype)
        # timm's names and fused q/k/v, in ours
        timm_grads = family_checkpoint_filter(ours_name)(timm_grads, "timm", ours)
        tolerance = 1e-10 if dtype == torch.float64 else 1e-5
        assert close(logits, timm_logits, tolerance), (logits - timm_logits).abs().max().item()
        assert close(loss, timm_loss, tolerance), (loss - timm_loss).item()
        runs[dtype] = grads, timm_grads
    (grads64, timm64), (grads32, timm32) = runs[torch.float64], runs[torch.float32]
    assert gradient_error(grads64, timm64) < 1e-10
    # within 4x of timm's own float32 error: the summation order, and so the ratio, moves with the thread count
    # (M0: 2.2x on one thread, under 2x on two)
    assert gradient_error(grads32, timm64) <= max(1e-5, 4 * gradient_error(timm32, timm64))


@pytest.mark.slow
@pytest.mark.parametrize("ours_name,timm_name", [p for p in PAIRS if p[0] in ("deit_tiny", "swin_tiny")])
def test_export_to_timm_layout_round_trips(ours_name, timm_name):
    reference = realistic_timm_model(timm_name).eval()
    ours = efficientvit.create_model(ours_name).eval()
    efficientvit.load_checkpoint(ours, reference.state_dict())
    back = timm.create_model(timm_name, pretrained=False).eval()
    back.load_state_dict(ours.to_timm_layout(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), reference(x))
