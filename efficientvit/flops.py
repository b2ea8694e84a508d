"""Parameter and FLOP counts through fvcore, with the attention matmuls counted.

fvcore counts one multiply-add as one FLOP, as the paper does. It does not know
`aten::scaled_dot_product_attention` or `aten::baddbmm` (it warns and counts nothing), so we give them handles:
Q @ K^T and attn @ V are two batched matmuls, and baddbmm is one (its bias add is not a multiply-add).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore scripts a loss function at import, which torch now warns about
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sdpa_flops(inputs, outputs) -> int:
    q, k, v = (get_shape(x) for x in inputs[:3])
    queries = math.prod(q[:-1])
    return queries * k[-2] * q[-1] + queries * k[-2] * v[-1]


def baddbmm_flops(inputs, outputs) -> int:
    batch, n, inner = get_shape(inputs[1])
    return batch * n * inner * get_shape(inputs[2])[-1]


def flop_analysis(model: nn.Module, img_size: tuple[int, int] | None = None) -> FlopCountAnalysis:
    """fvcore's analysis of one image through `model` in eval mode (for per-module breakdowns)."""
    height, width = img_size or model.img_size
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, height, width))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flops)
    analysis.set_op_handle("aten::baddbmm", baddbmm_flops)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def count_flops(model: nn.Module, img_size: tuple[int, int] | None = None) -> int:
    """FLOPs (multiply-adds) per image at the model's own input size unless another is given."""
    with torch.no_grad():
        return int(flop_analysis(model, img_size).total())
