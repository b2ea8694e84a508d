"""Model families (one per file) and the registry of named constructors."""

from . import deit, efficientvit, swin  # noqa: F401  (they register their models)
from .registry import list_models, model_family, register_model
from .spec import ModelSpec, create_model

__all__ = ["ModelSpec", "create_model", "list_models", "model_family", "register_model"]
