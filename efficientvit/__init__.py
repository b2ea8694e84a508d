"""efficientvit-lab: EfficientViT (Liu et al., CVPR 2023) and the tools that reproduce the paper's analyses."""

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .errors import CheckpointError, UserError
from .fuse import fuse
from .models import ModelSpec, create_model, list_models

__all__ = [
    "CheckpointError",
    "ModelSpec",
    "UserError",
    "create_model",
    "fuse",
    "list_models",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]
