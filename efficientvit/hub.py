"""Pretrained weights by name, wherever a checkpoint is taken: timm's releases on the Hugging Face hub and the
official (Cream) release of EfficientViT, each building the model it is for and carrying the evaluation transform
published with the weights.

Names (`names()` lists them all, `efficientvit list --pretrained` prints them):
  timm/<arch>.<tag>          the Hugging Face repository timm loads the weights from, e.g.
                             timm/deit_tiny_patch16_224.fb_in1k; also written hf-hub:timm/<arch>.<tag> (as
                             timm.create_model takes it), <arch>.<tag>, or <arch> alone for timm's default tag
  cream/efficientvit_m<i>    the paper's own release (github.com/microsoft/Cream, EfficientViT/classification),
                             M0-M5: the files its README links, in the official key layout
<arch> is one of the timm architectures in TIMM_ARCHS, the one table of which of our registered models each is.

Weights come through the libraries' own download and cache, so a cache a user already has is reused: timm's
through huggingface_hub (HF_HOME / HF_HUB_CACHE), the official files through torch.hub (TORCH_HOME/hub/checkpoints).
HF_HUB_OFFLINE=1 keeps both offline: only the caches are read. Both libraries download to a temporary file and
move it in place when complete; huggingface_hub also checks the length, torch.hub does not, so an official file in
the cache that does not load is removed (`official_weights`).
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import safetensors.torch
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from .errors import CheckpointError, UserError
from .models.spec import ModelSpec

# timm's architecture -> our registered model computing the same function on the same weights
TIMM_ARCHS = {
    "deit_tiny_patch16_224": "deit_tiny",
    "deit_small_patch16_224": "deit_small",
    "deit_base_patch16_224": "deit_base",
    "deit_base_patch16_384": "deit_base",
    "swin_tiny_patch4_window7_224": "swin_tiny",
    "swin_small_patch4_window7_224": "swin_small",
    **{f"efficientvit_m{i}": f"efficientvit_m{i}" for i in range(6)},
}
TIMM, HF_HUB, OFFICIAL = "timm/", "hf-hub:", "cream/"
OFFICIAL_MODELS = tuple(f"efficientvit_m{i}" for i in range(6))
OFFICIAL_URL = "https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/{}.pth"
HUB_WEIGHTS = "model.safetensors"  # every timm/ repository of the architectures above holds its weights so
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".pkl")


@dataclass(frozen=True)
class Pretrained:
    """What a name stands for: our model at the weights' input size and classes, and timm's pretrained config of
    the weights (input_size, crop_pct, interpolation, mean, std: the transform their authors evaluate with)."""

    name: str  # canonical: timm/<arch>.<tag> or cream/efficientvit_m<i>
    spec: ModelSpec
    pretrained_cfg: dict[str, Any]

    @property
    def label(self) -> str:
        """<arch>.<tag> for file names and tables (the official release's tag: cream)."""
        return self.name.removeprefix(TIMM) if self.name.startswith(TIMM) else f"{self.spec.name}.cream"

    def check_model(self, name: str) -> None:
        """One sentence when a model named by the user (--model, the model loaded into) is not the one the
        weights are for."""
        if name != self.spec.name:
            raise UserError(
                f"{self.name} holds {self.spec.name} weights, not {name}'s: give {self.spec.name} as the model, or "
                "leave --model out (a pretrained name builds its own model)"
            )

    def weights(self) -> dict[str, Any]:
        """The checkpoint, from the cache or downloaded into it: timm's state dict, or the official {'model': ...}."""
        return official_weights(self) if self.name.startswith(OFFICIAL) else hub_weights(self)


def is_name(checkpoint: Any) -> bool:
    """Whether a checkpoint argument is a pretrained name rather than a file: a string that is no existing file and
    is written in a hub form (timm/, hf-hub:, cream/) or has neither a folder nor a weights file's suffix. So a
    mistyped name gets the nearest names (`resolve`) and a missing file still says it does not exist."""
    if not isinstance(checkpoint, str) or Path(checkpoint).exists():
        return False
    if checkpoint.startswith((TIMM, HF_HUB, OFFICIAL)):
        return True
    return "/" not in checkpoint and os.sep not in checkpoint and not checkpoint.lower().endswith(WEIGHT_SUFFIXES)


@functools.cache
def timm():
    """timm, imported on first use: it costs seconds at start-up, and most commands read no pretrained name."""
    import timm as module

    return module


@functools.cache
def timm_names() -> frozenset[str]:
    """timm's pretrained names (<arch>.<tag>) of the architectures in TIMM_ARCHS."""
    return frozenset(name for arch in TIMM_ARCHS for name in timm().list_pretrained(f"{arch}.*"))


def names() -> list[str]:
    """Every pretrained name, in its canonical form."""
    return [TIMM + name for name in sorted(timm_names())] + [OFFICIAL + model for model in OFFICIAL_MODELS]


def resolve(name: str) -> Pretrained:
    """The weights a name stands for; an unknown name is one sentence with the nearest valid ones."""
    if name.startswith(OFFICIAL):
        if name.removeprefix(OFFICIAL) in OFFICIAL_MODELS:
            return official(name.removeprefix(OFFICIAL))
    else:
        bare = name.removeprefix(HF_HUB).removeprefix(TIMM)
        if bare in TIMM_ARCHS:  # timm's default tag, as timm.create_model(arch, pretrained=True)
            bare = f"{bare}.{timm().models.get_pretrained_cfg(bare).tag}"
        if bare in timm_names():
            return from_timm(bare)
    raise UserError(unknown(name))


def is_pretrained(name: str) -> bool:
    """Whether `name` is a pretrained name that `resolve` knows."""
    try:
        resolve(name)
    except UserError:
        return False
    return True


def unknown(name: str) -> str:
    repo = name.removeprefix(HF_HUB).removeprefix(TIMM).removeprefix(OFFICIAL)
    bare = repo.split("/")[-1]
    everything = {n.removeprefix(TIMM).removeprefix(OFFICIAL): n for n in names()}
    nearest = [everything[n] for n in difflib.get_close_matches(bare, everything, n=3, cutoff=0)]
    arch = bare.split(".")[0]
    if "/" in repo:
        known = "only timm's own Hugging Face repositories (timm/...) and the official release (cream/...) are known; "
    else:
        known = f"timm's {arch} has no counterpart among our models; " if timm().is_model(arch) else ""
    return (
        f"no checkpoint file or pretrained name {name!r}: {known}the nearest pretrained names are "
        f"{', '.join(nearest)} (`efficientvit list --pretrained` lists them all)"
    )


def model_spec(model: str, pretrained_cfg: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        model, {"num_classes": pretrained_cfg["num_classes"], "img_size": pretrained_cfg["input_size"][-1]}
    )


def from_timm(name: str) -> Pretrained:
    pretrained_cfg = timm().models.get_pretrained_cfg(name).to_dict()
    return Pretrained(
        TIMM + name, model_spec(TIMM_ARCHS[pretrained_cfg["architecture"]], pretrained_cfg), pretrained_cfg
    )


def official(model: str) -> Pretrained:
    # timm's port of these very weights publishes the official evaluation transform (Cream's build_transform:
    # resize by 256/224, centre crop, bicubic, ImageNet mean and std): its config, with the official file's address
    ported = timm().models.get_pretrained_cfg(f"{model}.r224_in1k").to_dict()
    pretrained_cfg = {**ported, "url": OFFICIAL_URL.format(model), "hf_hub_id": None, "tag": "cream"}
    return Pretrained(OFFICIAL + model, model_spec(model, pretrained_cfg), pretrained_cfg)


def way_out(pretrained: Pretrained, file: str) -> str:
    return f"or pass --checkpoint PATH of {file} with --model {pretrained.spec.name}"


def why_not_downloaded(error: Exception | None = None) -> str:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 forbids downloading it"
    return f"it could not be downloaded ({first_line(error)})"


def first_line(error: Exception | None) -> str:
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0][:200] if text else type(error).__name__


def hub_weights(pretrained: Pretrained) -> dict[str, torch.Tensor]:
    """timm's weights through huggingface_hub's cache (downloaded there first when allowed and absent)."""
    repo = pretrained.pretrained_cfg["hf_hub_id"]
    filename = pretrained.pretrained_cfg.get("hf_hub_filename") or HUB_WEIGHTS
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    try:
        path = huggingface_hub.hf_hub_download(repo, filename)
    except LocalEntryNotFoundError as e:  # offline, or the hub unreachable, and not in the cache
        raise UserError(
            f"{pretrained.name} is not in the Hugging Face cache {cache} and {why_not_downloaded(e)}: "
            f"put it there (`hf download {repo} {filename}` where the hub is reachable, then copy that cache's "
            f"folder models--{repo.replace('/', '--')} into {cache}), {way_out(pretrained, filename)}"
        ) from None
    except Exception as e:  # a download fails in many ways (HTTP status, connection cut, size check); one sentence
        raise UserError(
            f"could not download {filename} of {repo} ({first_line(e)}); huggingface_hub keeps nothing partial: "
            f"run again, {way_out(pretrained, filename)}"
        ) from None
    try:
        return safetensors.torch.load_file(path)
    except Exception as e:  # safetensors rejects a damaged file in several ways
        raise CheckpointError(f"could not read {path}, {pretrained.name}'s cached weights ({first_line(e)})") from None


def official_weights(pretrained: Pretrained) -> dict[str, Any]:
    """The official release's file through torch.hub's cache, where torch.hub.load_state_dict_from_url keeps it."""
    url = pretrained.pretrained_cfg["url"]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.exists():
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise UserError(
                f"{pretrained.name} is not in torch.hub's cache and {why_not_downloaded()}: put {url} at {path}, "
                f"{way_out(pretrained, 'that file')}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path))  # into a temporary file, moved in place at the end
        except Exception as e:  # urllib's errors and the file system's
            raise UserError(
                f"could not download {url} to {path} ({first_line(e)}): run again, or put the file there by hand, "
                f"{way_out(pretrained, 'that file')}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load fails in many ways on a damaged file; all mean the same here
        # torch.hub moves a download the server ended early into place (it does not compare the length received
        # with the announced one): a cached file that does not load is such a one, never to be trusted again
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path} (from {url}) was incomplete or damaged and has been removed: run again to download it anew"
        ) from None
