"""Load any supported checkpoint into a model, and save the project's own checkpoints atomically.

Formats, detected from the file itself:
  efficientvit-lab   our own: {"format": "efficientvit-lab", "model_config": ..., "model": state_dict, ...};
                     it rebuilds its model (`model_from_checkpoint`)
  official           the Cream release of EfficientViT: {"model": state_dict}, keys like
                     `blocks2.3.mixer.m.attn.qkvs.0.c.weight`
  timm               timm's state dicts; for EfficientViT the layout is ours, key for key

A pretrained name (`efficientvit.hub`: timm/deit_tiny_patch16_224.fb_in1k, cream/efficientvit_m4, ...) is
accepted wherever a checkpoint is: it is read from timm's or torch.hub's cache and builds the model it is for.

Whatever is particular to a model family (renaming another release's keys, fused or separate q/k/v, resizing the
tables that depend on the input resolution) is the family's `checkpoint_filter(state, fmt, model)`, in its own
module (models/efficientvit.py, deit.py, swin.py). This module reads, detects the format, fits strictly (one
readable message for any mismatch) and saves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from . import hub
from .errors import CheckpointError
from .files import atomic_path
from .models.registry import family_checkpoint_filter
from .models.spec import ModelSpec

FORMAT = "efficientvit-lab"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True (safetensors for .safetensors files, as the hub's), turning every failure
    into one readable sentence; for a pretrained name, its weights (`efficientvit.hub`)."""
    if hub.is_name(path):
        return hub.resolve(path).weights()
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(path)
        else:
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


def checkpoint_label(checkpoint: str | os.PathLike) -> str:
    """A checkpoint's short label for run names and tables: a file's stem, a pretrained name's <arch>.<tag>."""
    return hub.resolve(checkpoint).label if hub.is_name(checkpoint) else Path(checkpoint).stem


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
    """Load a checkpoint file, a pretrained name, or an in-memory checkpoint/state dict into `model`; returns the
    format detected.

    Strict by default: any missing, unexpected or mis-shaped key raises one CheckpointError that names the
    format and a few keys of each kind; a pretrained name for another model is one sentence.
    """
    if hub.is_name(checkpoint) and getattr(model, "spec", None) is not None:
        hub.resolve(checkpoint).check_model(model.spec.name)
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    return fit(model, obj, source, strict)


def fit(model: nn.Module, obj: dict[str, Any], source: str, strict: bool = True) -> str:
    """Load the checkpoint `obj` (read from `source`) into `model` through its family's filter; the format."""
    state, fmt = unwrap(obj)
    if getattr(model, "spec", None) is not None:
        state = family_checkpoint_filter(model.spec.name)(state, fmt, model)
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
    the `spec` of the model it is for; a pretrained name builds the model it is for, at the weights' input size
    and classes (a `spec` given beside it must name that model; its arguments apply as overrides), and the model
    carries the weights' `pretrained_cfg`, whose evaluation transform `open_split` then applies.

    `overrides` (img_size, a knob) apply on top. `num_classes` other than the checkpoint's loads every weight but
    the classifier, which is fresh (as timm's pretrained=True with num_classes=N): fine-tuning on other classes.
    """
    pretrained = hub.resolve(checkpoint) if hub.is_name(checkpoint) else None
    if pretrained is not None:
        if spec is not None:
            pretrained.check_model(spec.name)
            overrides = {**spec.kwargs, **overrides}
        spec = pretrained.spec
    obj = read_checkpoint(checkpoint)
    if obj.get("format") == FORMAT and obj.get("model_config"):
        spec = ModelSpec.from_dict(obj["model_config"])
    if spec is None:
        raise CheckpointError(
            f"{checkpoint} does not say which model it holds (not an {FORMAT} checkpoint): name the model it is for "
            "(--model, or ModelSpec(name))"
        )
    classes = overrides.pop("num_classes", None)
    model = spec.build(**overrides)
    fit(model, obj, str(checkpoint))
    if classes is not None and classes != model.num_classes:
        model.reset_classifier(classes)
        model.spec = model.spec.with_kwargs(num_classes=classes)
    if pretrained is not None:
        model.pretrained_cfg = pretrained.pretrained_cfg
    return model
