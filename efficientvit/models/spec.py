"""A model's identity: its registered name and constructor arguments. It builds the model, travels in
checkpoints (so a checkpoint rebuilds its model) and reads and writes the YAML the tools exchange
(`model:` + `model_kwargs:`, the model part of a training config)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..errors import UserError
from ..files import atomic_write_text
from .registry import check_model_name, registered_constructor


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_model_name(self.name)
        # lists, not tuples, as YAML and JSON give them back: a spec read from a file equals the one written
        object.__setattr__(self, "kwargs", json.loads(json.dumps(dict(self.kwargs))))

    def build(self, **overrides: Any) -> nn.Module:
        """The model, with `overrides` (num_classes, img_size, a knob) on top of the spec's arguments; the model
        carries the spec it was built from as `model.spec`, and as `model.pretrained_cfg` timm's pretrained config
        of weights loaded by name (efficientvit.hub; None until then): the transform they are evaluated with."""
        spec = self.with_kwargs(**overrides)
        model = registered_constructor(spec.name)(**spec.kwargs)
        model.spec = spec
        model.pretrained_cfg = None
        return model

    def with_kwargs(self, **kwargs: Any) -> ModelSpec:
        return ModelSpec(self.name, {**self.kwargs, **kwargs})

    def describe(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in sorted(self.kwargs.items()))})"

    # -- as stored in checkpoints: {"name": ..., "kwargs": {...}} ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> ModelSpec:
        return cls(content["name"], content.get("kwargs") or {})

    # -- as YAML: {model: ..., model_kwargs: {...}} ----------------------------------------------------------------
    def to_yaml(self, path: str | os.PathLike, comment: str = "") -> Path:
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        content = yaml.safe_dump({"model": self.name, "model_kwargs": self.kwargs}, sort_keys=False)
        return atomic_write_text(path, header + content)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ModelSpec:
        path = Path(path)
        if not path.exists():
            raise UserError(f"model configuration {path} does not exist")
        content = yaml.safe_load(path.read_text()) or {}
        if not isinstance(content, dict) or "model" not in content:
            raise UserError(f"model configuration {path} has no `model:` entry naming a registered model")
        return cls(content["model"], dict(content.get("model_kwargs") or {}))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: `create_model("efficientvit_m4", num_classes=10, img_size=128)`. Keyword arguments
    override its configuration (num_classes, img_size, knobs); the model carries its `ModelSpec` as `model.spec`."""
    return ModelSpec(name, kwargs).build()
