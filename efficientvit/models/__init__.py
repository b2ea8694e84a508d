"""Model families (one per file) and the registry of named constructors."""

from . import efficientvit  # noqa: F401  (registers efficientvit_m0..m5)
from .registry import create_model, list_models, model_family, register_model

__all__ = ["create_model", "list_models", "model_family", "register_model"]
