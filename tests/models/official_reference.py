"""An independent reference for EfficientViT's forward pass, written against the official release's state-dict
layout (keys like `blocks2.3.mixer.m.attn.qkvs.0.c.weight`) with functional ops only.

It follows the official code's structure and conventions (offset dictionary discovered in order, windows
partitioned in channels-last, padding with zeros, `window = min(window, resolution)`), and shares no code with the
package, so agreement with it checks both our modules and our key conversion.
"""

import contextlib
import itertools

import torch
import torch.nn.functional as F

TRAINING = False  # BatchNorm on batch statistics (train mode) instead of the running ones


@contextlib.contextmanager
def train_mode():
    global TRAINING
    TRAINING = True
    try:
        yield
    finally:
        TRAINING = False


def batch_norm(sd, prefix, x):
    if TRAINING:  # batch statistics; the running ones are neither read nor updated
        return F.batch_norm(x, None, None, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], True, 0.0, 1e-5)
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        False,
        0.0,
        1e-5,
    )


def conv_bn(sd, prefix, x, stride=1, padding=0):
    w = sd[f"{prefix}.c.weight"]
    groups = x.shape[1] if w.shape[1] == 1 and x.shape[1] > 1 else 1
    return batch_norm(sd, f"{prefix}.bn", F.conv2d(x, w, None, stride, padding, 1, groups))


def ffn(sd, prefix, x):
    return conv_bn(sd, f"{prefix}.pw2", F.relu(conv_bn(sd, f"{prefix}.pw1", x)))


def dw(sd, prefix, x):
    return conv_bn(sd, prefix, x, padding=1)


def offset_index(resolution):
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets, idxs = {}, []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            if off not in offsets:
                offsets[off] = len(offsets)
            idxs.append(offsets[off])
    return torch.tensor(idxs).view(len(points), len(points))


def cascaded_group_attention(sd, prefix, x, key_dim, kernels):
    B, C, H, W = x.shape
    heads = sd[f"{prefix}.attention_biases"].shape[0]
    bias = sd[f"{prefix}.attention_biases"][:, offset_index(H)]
    d = C // heads
    chunks = x.chunk(heads, dim=1)
    outs, feat = [], chunks[0]
    for i in range(heads):
        if i > 0:
            feat = feat + chunks[i]
        feat = conv_bn(sd, f"{prefix}.qkvs.{i}", feat)
        q, k, v = feat.view(B, -1, H, W).split([key_dim, key_dim, d], dim=1)
        q = conv_bn(sd, f"{prefix}.dws.{i}", q, padding=kernels[i] // 2)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
        attn = ((q.transpose(-2, -1) @ k) * key_dim**-0.5 + bias[i]).softmax(dim=-1)
        feat = (v @ attn.transpose(-2, -1)).view(B, d, H, W)
        outs.append(feat)
    return conv_bn(sd, f"{prefix}.proj.1", F.relu(torch.cat(outs, 1)))


def local_window_attention(sd, prefix, x, window, key_dim, kernels):
    B, C, H, W = x.shape
    wr = min(window, H)
    if H <= wr and W <= wr:
        return cascaded_group_attention(sd, prefix, x, key_dim, kernels)
    x = x.permute(0, 2, 3, 1)
    pad_b, pad_r = (wr - H % wr) % wr, (wr - W % wr) % wr
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    pH, pW = H + pad_b, W + pad_r
    nH, nW = pH // wr, pW // wr
    x = x.view(B, nH, wr, nW, wr, C).transpose(2, 3).reshape(B * nH * nW, wr, wr, C).permute(0, 3, 1, 2)
    x = cascaded_group_attention(sd, prefix, x, key_dim, kernels)
    x = x.permute(0, 2, 3, 1).view(B, nH, nW, wr, wr, C).transpose(2, 3).reshape(B, pH, pW, C)
    return x[:, :H, :W].permute(0, 3, 1, 2)


def official_forward(sd, depth, kernels, x, key_dim=16, window=7):
    """Logits of the official EfficientViT for the official-layout state dict `sd`."""
    for i, idx in enumerate((0, 2, 4, 6)):
        x = conv_bn(sd, f"patch_embed.{idx}", x, stride=2, padding=1)
        x = F.relu(x) if i < 3 else x
    for stage, n_blocks in enumerate(depth):
        p = f"blocks{stage + 1}"
        first = 0
        if stage > 0:
            x = x + dw(sd, f"{p}.0.0.m", x)
            x = x + ffn(sd, f"{p}.0.1.m", x)
            h = F.relu(conv_bn(sd, f"{p}.1.conv1", x))
            h = F.relu(conv_bn(sd, f"{p}.1.conv2", h, stride=2, padding=1))
            s = h.mean((2, 3), keepdim=True)
            s = F.conv2d(
                F.relu(F.conv2d(s, sd[f"{p}.1.se.fc1.weight"], sd[f"{p}.1.se.fc1.bias"])),
                sd[f"{p}.1.se.fc2.weight"],
                sd[f"{p}.1.se.fc2.bias"],
            )
            x = conv_bn(sd, f"{p}.1.conv3", h * s.sigmoid())
            x = x + dw(sd, f"{p}.2.0.m", x)
            x = x + ffn(sd, f"{p}.2.1.m", x)
            first = 3
        for b in range(first, first + n_blocks):
            q = f"{p}.{b}"
            x = x + dw(sd, f"{q}.dw0.m", x)
            x = x + ffn(sd, f"{q}.ffn0.m", x)
            x = x + local_window_attention(sd, f"{q}.mixer.m.attn", x, window, key_dim, kernels)
            x = x + dw(sd, f"{q}.dw1.m", x)
            x = x + ffn(sd, f"{q}.ffn1.m", x)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    x = batch_norm(sd, "head.bn", x)
    return F.linear(x, sd["head.l.weight"], sd["head.l.bias"])


def ours_to_official_key(key):
    """The official name of one of our keys (used to write official-layout files for every variant)."""
    import re

    key = re.sub(r"^patch_embed\.conv(\d)\.", lambda m: f"patch_embed.{2 * (int(m[1]) - 1)}.", key)
    m = re.match(r"^stages\.(\d)\.downsample\.(res1|patchmerge|res2)\.(.*)$", key)
    if m:
        key = f"blocks{int(m[1]) + 1}.{('res1', 'patchmerge', 'res2').index(m[2])}.{m[3]}"
    m = re.match(r"^stages\.(\d)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        stage = int(m[1])
        key = f"blocks{stage + 1}.{int(m[2]) + (3 if stage else 0)}.{m[3]}"
    return key.replace(".conv.", ".c.").replace("head.linear.", "head.l.")


def random_official_state_dict(model, seed=0):
    """Random weights (and BN statistics) in the official layout, with the official `attention_bias_idxs`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            new = torch.tensor(0)
        elif key.endswith("running_var"):
            new = torch.rand(value.shape, generator=g) + 0.5
        else:
            new = torch.randn(value.shape, generator=g) * (0.5 if value.dim() < 2 else value[0].numel() ** -0.5)
        sd[ours_to_official_key(key)] = new
        if key.endswith("attention_biases"):
            side = int(value.shape[1] ** 0.5)
            sd[ours_to_official_key(key).replace("attention_biases", "attention_bias_idxs")] = offset_index(side)
    return sd
