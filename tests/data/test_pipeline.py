import copy

import pytest
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import _LEVEL_DENOM
from torch.utils.data import DataLoader

from efficientvit.data.pipeline import (
    RepeatedAugmentationSampler,
    batch_mixing,
    check_bad_images,
    collate,
    eval_transform,
    image_folder,
    train_transform,
)
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth") / "d", classes=3, train=6, val=3, workers=1)


@pytest.mark.parametrize("size", [64, 96])
def test_transforms_follow_the_configured_image_size(data, size):
    train = image_folder(data, "train", train_transform(size))
    val = image_folder(data, "val", eval_transform(size), classes=train.classes)
    image, label = train[0]
    assert image.shape == (3, size, size) and image.dtype == torch.float32 and label == 0
    assert val[0][0].shape == (3, size, size)
    assert eval_transform(size).transforms[0].size == [int(size * 256 / 224)]


def test_the_training_augmentation_is_the_official_one():
    """Cream's (and DeiT's) build_transform, written out with its literal arguments: our recipe must be the same
    transform, RandAugment at magnitude 9 of timm's 10 (not 9 of torchvision's 31 bins)."""
    official = create_transform(
        224,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
    )
    ours = train_transform(224).transforms[-1]
    assert repr(ours) == repr(official)
    randaug = next(t for t in ours.transforms if type(t).__name__ == "RandAugment")
    assert randaug.num_layers == 2 and len(randaug.ops) == 15
    assert all((op.magnitude, op.magnitude_std) == (9, 0.5) for op in randaug.ops)
    assert {op.magnitude_max for op in randaug.ops} == {None} and _LEVEL_DENOM == 10  # out of timm's 10 levels
    assert "SolarizeIncreasing" in {op.name for op in randaug.ops}  # inc1: the increasing variants
    assert not any(type(t).__name__ == "ColorJitter" for t in ours.transforms)  # timm drops jitter under RandAugment


def test_without_auto_augment_the_recipe_jitters_colours_as_timm_does():
    steps = [type(t).__name__ for t in train_transform(64, auto_augment=None).transforms[-1].transforms]
    assert "ColorJitter" in steps and "RandAugment" not in steps
    plain = train_transform(64, auto_augment=None, color_jitter=None)
    steps = [type(t).__name__ for t in plain.transforms[-1].transforms]
    assert "ColorJitter" not in steps


def test_mixup_cutmix_turn_labels_into_soft_targets():
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    mixed, targets = batch_mixing(3)(images, labels)
    assert mixed.shape == images.shape and targets.shape == (4, 3)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert batch_mixing(3, mixup=0, cutmix=0) is None


def test_missing_data_directory_and_split(tmp_path, data):
    with pytest.raises(UserError, match="does not exist"):
        image_folder(tmp_path / "nowhere", "train", None)
    with pytest.raises(UserError, match="no 'test' split"):
        image_folder(data, "test", None)


def test_split_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="has no classes"):
        image_folder(tmp_path, "train", None)
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(UserError, match="has no classes"):
        image_folder(tmp_path, "train", None)


def test_splits_must_share_classes(tmp_path, data):
    train = image_folder(data, "train", None)
    with pytest.raises(UserError, match="same class folders"):
        image_folder(data, "val", None, classes=train.classes[:2])


def test_an_unreadable_image_is_named_or_skipped_and_counted(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
    good = make_synthetic(tmp_path / "src", classes=2, train=2, val=2, workers=1)
    for i, png in enumerate(sorted((good / "train").rglob("*.png"))):
        (tmp_path / "train" / "ab"[i] / "ok.png").write_bytes(png.read_bytes())
    broken = tmp_path / "train" / "b" / "broken.png"
    broken.write_bytes(b"not a png")
    loader = DataLoader(image_folder(tmp_path, "train", eval_transform(64)), batch_size=3, collate_fn=collate)
    images, targets, bad = next(iter(loader))
    assert images.shape == (2, 3, 64, 64) and targets.tolist() == [0, 1]
    with pytest.raises(UserError, match=str(broken)):
        check_bad_images(bad, skip_bad=False)
    assert check_bad_images(bad, skip_bad=True) == 1


def test_repeated_augmentation_sends_copies_to_different_processes():
    dataset = list(range(10))
    samplers = [RepeatedAugmentationSampler(dataset, num_replicas=3, rank=r, seed=1) for r in range(3)]
    for s in samplers:
        s.set_epoch(2)
    shares = [list(s) for s in samplers]
    assert all(len(share) == 4 for share in shares)  # ceil(10 / 3), as DistributedSampler
    assert [shares[r][0] for r in range(3)] == [shares[0][0]] * 3  # first image's 3 copies, one per process
    assert shares == [list(s) for s in samplers]
    samplers[0].set_epoch(3)
    assert list(samplers[0]) != shares[0]


def test_every_operation_of_the_official_augmentation_runs_at_the_top_of_its_range():
    """timm's PosterizeIncreasing asks Pillow for 0 bits at magnitude 10 (reached by 9 + 2 std); Pillow 13 refuses,
    so the project pins Pillow below it. Each op is forced to magnitude 10 here."""
    randaug = next(t for t in train_transform(32).transforms[-1].transforms if type(t).__name__ == "RandAugment")
    image = Image.new("RGB", (32, 32), (200, 120, 40))
    for op in randaug.ops:
        op = copy.copy(op)
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
        assert op(image).size == (32, 32), op.name


def test_short_epochs_walk_through_every_image_once_a_pass_and_split_across_processes():
    from efficientvit.data.pipeline import EpochChunkSampler

    sampler = EpochChunkSampler(10, 4, seed=3)
    epochs = []
    for epoch in range(5):  # 20 positions: two whole passes over 10 images, epochs straddling the passes
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    flat = sum(epochs, [])
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10)) and flat[:10] != flat[10:]
    sampler.set_epoch(2)
    assert list(sampler) == epochs[2]  # the order depends on (seed, epoch) only: a resumed run sees the same
    shares = [EpochChunkSampler(10, 4, num_replicas=2, rank=rank, seed=3) for rank in (0, 1)]
    for share in shares:
        share.set_epoch(1)
    assert sorted(list(shares[0]) + list(shares[1])) == sorted(epochs[1]) and len(shares[0]) == 2
