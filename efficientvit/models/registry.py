"""Named model constructors, registered by each family's module; `ModelSpec` (spec.py) builds them."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from ..errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, str] = {}
# family -> checkpoint_filter(state, fmt): another release's state dict ("official", "timm") in our key layout
_FILTERS: dict[str, Callable[[dict, str], dict]] = {}


def register_model(name: str, family: str, checkpoint_filter: Callable[[dict, str], dict]):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        _FAMILIES[name] = family
        _FILTERS[family] = checkpoint_filter
        return fn

    return add


def family_checkpoint_filter(name: str) -> Callable[[dict, str], dict]:
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
