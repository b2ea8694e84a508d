import os

import huggingface_hub.constants
import pytest
import torch

# `make test` runs two pytest-xdist workers, each on one of the machine's two cores; alone, a run takes both.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(items):
    """The slow tests first (the order is otherwise kept): the two workers then share them from the start and end
    together, instead of one running a minutes-long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never write into the user's cache (the subnet timings): $XDG_CACHE_HOME points at a temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _offline_hubs(tmp_path_factory, monkeypatch):
    """Tests never download, nor read the user's caches: the Hugging Face hub is offline (HF_HUB_OFFLINE, which
    also keeps efficientvit.hub from torch.hub's downloads), and its cache and torch.hub's are temporary folders.
    huggingface_hub reads its settings once, at import: they are set on its constants and, for subprocesses, in
    the environment."""
    hf_cache, torch_home = tmp_path_factory.mktemp("hf_hub"), tmp_path_factory.mktemp("torch_home")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    for variable, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", str(hf_cache)), ("TORCH_HOME", str(torch_home))):
        monkeypatch.setenv(variable, value)
