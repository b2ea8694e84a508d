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
