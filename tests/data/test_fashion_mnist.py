"""Fashion-MNIST: finding, checking and reading the IDX files, on the committed slice of the real data set."""

import gzip
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientvit import cli
from efficientvit.data import fashion_mnist
from efficientvit.data.sources import Augment, open_split
from efficientvit.errors import UserError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "fashion-mnist"  # 300 train + 100 test images


def read_idx(gz: Path, header: int) -> np.ndarray:
    """An independent reader: the gzip bytes after the header, as numpy sees them."""
    return np.frombuffer(gzip.decompress(gz.read_bytes())[header:], dtype=np.uint8)


@pytest.fixture
def prepared(tmp_path):
    return fashion_mnist.prepare(tmp_path / "fmnist", source=FIXTURE)


@pytest.fixture
def no_debian_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "not-installed")


def test_prepared_root_reads_the_same_pixels_and_labels_as_the_files(prepared):
    train = open_split(str(prepared), "train", 32)
    val = open_split(str(prepared), "val", 32)
    assert (len(train), len(val)) == (300, 100)
    assert train.classes[:2] == ["T-shirt/top", "Trouser"] and len(train.classes) == 10
    pixels = read_idx(FIXTURE / "train-images-idx3-ubyte.gz", 16).reshape(300, 28, 28)
    labels = read_idx(FIXTURE / "train-labels-idx1-ubyte.gz", 8)
    assert torch.equal(train.images[:, 0], torch.from_numpy(pixels.copy()))
    assert train.targets.tolist() == labels.tolist()
    assert len(open_split(str(prepared), "test", 32)) == 100  # the test split under its own name too


def test_eval_transform_pads_to_32_normalises_and_repeats_the_gray_channel(prepared):
    image, label = open_split(str(prepared), "val", 32)[0]
    raw = read_idx(FIXTURE / "t10k-images-idx3-ubyte.gz", 16)[:784].reshape(28, 28)
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - fashion_mnist.MEAN[0]) / fashion_mnist.STD[0]
    assert image.shape == (3, 32, 32) and label == read_idx(FIXTURE / "t10k-labels-idx1-ubyte.gz", 8)[0]
    assert torch.allclose(image[:, 2:30, 2:30], expected.expand(3, 28, 28), atol=1e-6)
    background = (0 - fashion_mnist.MEAN[0]) / fashion_mnist.STD[0]
    assert torch.allclose(image[:, :2], torch.full((3, 2, 32), background))
    assert open_split(str(prepared), "val", 64)[0][0].shape == (3, 64, 64)


def test_train_transform_augments_with_the_recipe_knobs(prepared):
    train = open_split(str(prepared), "train", 32, Augment(auto_augment=None, reprob=0.0, crop_scale=(0.5, 1.0)))
    first, second = train[0][0], train[0][0]
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)  # random crops and flips


def test_the_name_finds_the_debian_folder_and_prepares_the_default_root(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", FIXTURE)
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", tmp_path / "data" / "fashion-mnist")
    assert len(open_split("fashion-mnist", "train", 32)) == 300
    assert fashion_mnist.is_prepared(tmp_path / "data" / "fashion-mnist")


def test_nothing_anywhere_and_offline_is_one_sentence_and_writes_nothing(monkeypatch, tmp_path, no_debian_copy):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fashion_mnist.datasets.FashionMNIST, "download", offline)
    with pytest.raises(
        UserError,
        match=r"not found \(looked in .*not-installed and tried torchvision's download.*"
        r"apt-get install dataset-fashion-mnist",
    ):
        fashion_mnist.prepare(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no root, no hidden partial folder


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "is truncated"),
        (lambda data: data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:], "is corrupt"),
    ],
)
def test_a_damaged_file_is_named(tmp_path, damage, message):
    source = tmp_path / "source"
    shutil.copytree(FIXTURE, source)
    target = source / "train-images-idx3-ubyte.gz"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(UserError, match=f"{target}.*{message}"):
        fashion_mnist.prepare(tmp_path / "out", source=source)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


def test_a_file_that_is_not_fashion_mnist_is_named(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(FIXTURE, source)
    labels = source / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(20)))  # an images magic number in a labels file
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz is not Fashion-MNIST's .*header"):
        fashion_mnist.prepare(tmp_path / "out", source=source)


def test_a_source_folder_without_the_files_says_which_are_missing(tmp_path):
    with pytest.raises(UserError, match="does not hold the Fashion-MNIST files train-images-idx3-ubyte.gz, "):
        fashion_mnist.prepare(tmp_path / "out", source=tmp_path)


def test_unknown_split_is_refused(prepared):
    with pytest.raises(UserError, match="splits train and val"):
        open_split(str(prepared), "validation", 32)


def test_make_data_command(tmp_path, capsys):
    assert cli.main(["make-data", "fashion-mnist", "--out", str(tmp_path / "d"), "--source", str(FIXTURE)]) == 0
    assert "train on it with data:" in capsys.readouterr().out
    assert cli.main(["make-data", "fashion-mnist", "--out", str(tmp_path / "e"), "--source", str(tmp_path / "x")]) == 2
    assert "does not hold the Fashion-MNIST files" in capsys.readouterr().err


def test_two_jobs_preparing_the_same_folder_at_once_both_get_it(tmp_path, monkeypatch):
    """Parallel jobs (shards, a SLURM array) share the data folder: the one that renames its copy second finds
    the folder prepared by the first, and keeps it."""
    root, rename = tmp_path / "fmnist", fashion_mnist.os.rename

    def the_other_job_finishes_first(src, dst):
        monkeypatch.setattr(fashion_mnist.os, "rename", rename)
        fashion_mnist.prepare(root, source=FIXTURE)  # the other job, all the way
        rename(src, dst)  # ours: onto the folder the other job filled

    monkeypatch.setattr(fashion_mnist.os, "rename", the_other_job_finishes_first)
    assert fashion_mnist.prepare(root, source=FIXTURE) == root
    assert fashion_mnist.is_prepared(root) and [p.name for p in tmp_path.iterdir()] == ["fmnist"]  # no copy left
