"""Named model constructors, registered by each family's module; `ModelSpec` (spec.py) builds them."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from ..errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, str] = {}
# family -> checkpoint_filter(state, fmt, model): a state dict of another release ("official", "timm"), q/k/v layout
# or input size in the model's own layout (as timm's checkpoint_filter_fn(state_dict, model))
CheckpointFilter = Callable[[dict, str, nn.Module], dict]
_FILTERS: dict[str, CheckpointFilter] = {}


def register_model(name: str, family: str, checkpoint_filter: CheckpointFilter):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        _FAMILIES[name] = family
        _FILTERS[family] = checkpoint_filter
        return fn

    return add


def family_checkpoint_filter(name: str) -> CheckpointFilter:
    """The checkpoint filter of a registered model's family (each family module defines its own)."""
    return _FILTERS[model_family(name)]


def list_models(family: str | None = None) -> list[str]:
    return sorted(name for name in _MODELS if family is None or _FAMILIES[name] == family)


def model_family(name: str) -> str:
    return _FAMILIES[check_model_name(name)]


def check_model_name(name: str) -> str:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}.")
    return name


def registered_constructor(name: str) -> Callable[..., nn.Module]:
    return _MODELS[check_model_name(name)]
