"""Load any supported checkpoint into a model, and save the project's own checkpoints atomically.

Formats, detected from the file itself:
  efficientvit-lab   our own: {"format": "efficientvit-lab", "model_config": ..., "model": state_dict, ...};
                     it rebuilds its model (`model_from_checkpoint`)
  official           the Cream release of EfficientViT: {"model": state_dict}, keys like
                     `blocks2.3.mixer.m.attn.qkvs.0.c.weight`
  timm               timm's state dicts; for EfficientViT the layout is ours, key for key

Attention-bias tables are resized when the checkpoint was trained at another input size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .files import atomic_path
from .models.attention import join_qkv, split_qkv
from .models.registry import family_checkpoint_filter
from .models.spec import ModelSpec

FORMAT = "efficientvit-lab"
IGNORED_KEYS = ("attention_bias_idxs", "relative_position_index", "attn_mask")  # buffers rebuilt by the model itself


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into one readable sentence."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a damaged file; all mean the same to the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in reason:  # torch's text goes on to advise unsafe loading: not repeated
            reason = "only tensors and plain containers are loaded, for safety"
        raise CheckpointError(
            f"could not read checkpoint {path}: the file is corrupt, truncated, not a PyTorch checkpoint or holds "
            f"Python objects besides weights ({reason[:200]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write our format atomically (temporary file, then rename): an interrupted save leaves no broken file.

    `extra` (epoch, optimizer state, ...) is stored beside the weights.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(
            "the model has no spec (it was not built by create_model or ModelSpec.build), so its "
            "checkpoint could not rebuild it; build it with create_model(name, **kwargs)"
        )
    payload = {"format": FORMAT, "model_config": spec.to_dict(), "model": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def unwrap(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a checkpoint, and the checkpoint's format."""
    if obj.get("format") == FORMAT:
        return obj["model"], FORMAT
    for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the checkpoint does not contain a state dict of tensors")
    if any(k.startswith("blocks1.") for k in obj):
        return obj, "official"
    return obj, "timm"


def convert(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a state dict of a known format into the model's own layout, including fused vs separate q/k/v."""
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_KEYS)}
    if fmt != FORMAT and getattr(model, "spec", None) is not None:
        state = family_checkpoint_filter(model.spec.name)(state, fmt)
    own = model.state_dict()
    if any(k.endswith(".qkv.weight") and k not in own for k in state):
        state = split_qkv(state)
    elif any(k.endswith(".q.weight") and k not in own for k in state):
        state = join_qkv(state)
    return state


def resize_grid(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (channels, n) table laid out on a square grid of n = side * side entries."""
    side = math.isqrt(table.shape[1])
    if side * side != table.shape[1]:
        raise CheckpointError(f"cannot resize a table of {table.shape[1]} entries: it is not a square grid")
    grid = table.reshape(1, table.shape[0], side, side).float()
    resized = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return resized.reshape(table.shape[0], -1).to(table.dtype)


def fit_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize what depends on the input resolution when the checkpoint was trained at another one: EfficientViT's
    attention-bias tables, Swin's relative position tables (other window) and DeiT's position embeddings."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own or value.shape == own[key].shape:
            continue
        owner = key.rsplit(".", 1)[0]
        if key.endswith("attention_biases") and value.shape[0] == own[key].shape[0]:
            state[key] = resize_grid(value, model.get_submodule(owner).window)
        elif key.endswith("relative_position_bias_table") and value.shape[1] == own[key].shape[1]:
            wh, ww = model.get_submodule(owner).window
            state[key] = resize_grid(value.t(), (2 * wh - 1, 2 * ww - 1)).t()
        elif key == "pos_embed" and value.shape[2] == own[key].shape[2]:
            patches = resize_grid(value[0, 1:].t(), model.grid).t()
            state[key] = torch.cat([value[0, :1], patches])[None]
    return state


def describe_mismatch(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k}: {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or misshaped):
        return None

    def few(label: str, items: list[str]) -> str:
        more = f", ... ({len(items) - 3} more)" if len(items) > 3 else ""
        return f"{len(items)} {label} ({'; '.join(items[:3])}{more})"

    return ", ".join(
        few(label, items)
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped, checkpoint vs model", misshaped),
        )
        if items
    )


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | dict[str, Any], strict: bool = True) -> str:
    """Load a checkpoint file or an in-memory checkpoint/state dict into `model`; returns the format detected.

    Strict by default: any missing, unexpected or mis-shaped key raises one CheckpointError that names the
    format and a few keys of each kind.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state, fmt = unwrap(obj)
    state = fit_to_model(convert(state, fmt, model), model)
    problem = describe_mismatch(state, model)
    if problem and strict:
        name = model.spec.name if getattr(model, "spec", None) else type(model).__name__
        held = (obj.get("model_config") or {}) if fmt == FORMAT else {}
        holds = f" (it holds {held['name']})" if held.get("name") and held.get("name") != name else ""
        raise CheckpointError(f"checkpoint {source} ({fmt} format){holds} does not fit model {name}: {problem}")
    model.load_state_dict(state, strict=False)
    return fmt


def model_from_checkpoint(checkpoint: str | os.PathLike, spec: ModelSpec | None = None, **overrides: Any) -> nn.Module:
    """The model a checkpoint holds, with its weights: ours name their model; a timm or official checkpoint needs
    the `spec` of the model it is for. `overrides` (img_size, a knob) apply on top."""
    obj = read_checkpoint(checkpoint)
    if obj.get("format") == FORMAT and obj.get("model_config"):
        spec = ModelSpec.from_dict(obj["model_config"])
    if spec is None:
        raise CheckpointError(
            f"{checkpoint} does not say which model it holds (not an {FORMAT} checkpoint): name the model it is for "
            "(--model, or ModelSpec(name))"
        )
    model = spec.build(**overrides)
    load_checkpoint(model, obj)
    return model
