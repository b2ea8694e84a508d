import pytest
import torch

import efficientvit

from .models.test_efficientvit import MODELS, randomize_batchnorm


@pytest.mark.parametrize("name", MODELS)
def test_fused_equals_unfused_with_random_bn_statistics(name):
    model = randomize_batchnorm(efficientvit.create_model(name, img_size=160)).eval()
    fused = efficientvit.fuse(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    x = torch.randn(4, 3, 160, 160)
    with torch.no_grad():
        reference, out = model(x), fused(x)
    assert (reference - out).abs().max() <= 1e-4
    assert reference.abs().max() > 1e-2  # the comparison is not between two near-zero outputs


def test_fused_model_runs_channels_last_from_an_nchw_input():
    fused = efficientvit.fuse(efficientvit.create_model("efficientvit_m0", img_size=64))
    maps = []
    fused.patch_embed.register_forward_hook(lambda module, args, out: maps.append(out))
    with torch.no_grad():
        fused(torch.randn(2, 3, 64, 64))
    assert maps[0].is_contiguous(memory_format=torch.channels_last) and not maps[0].is_contiguous()
    nchw = efficientvit.fuse(efficientvit.create_model("efficientvit_m0", img_size=64), channels_last=False)
    assert next(nchw.parameters()).is_contiguous()
