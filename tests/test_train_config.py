from pathlib import Path

import pytest

from efficientvit.errors import UserError
from efficientvit.models import create_model
from efficientvit.train_config import config_help, load_config

OUR_PRESETS = sorted(str(p) for p in (Path(__file__).parent.parent / "experiments").rglob("efficientvit_m*.yaml"))


def test_unknown_config_key_lists_valid_keys_and_suggests_the_closest():
    with pytest.raises(
        UserError,
        match=r"unknown key 'wieght_decay' in the training config \(did you mean 'weight_decay'\?\); "
        r"valid keys: model, model_kwargs, data",
    ):
        load_config(None, ["wieght_decay=0.05"])


def test_config_file_then_overrides_with_types_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: efficientvit_m1\nlr: 1e-3\nepochs: 10\nclip_grad: null\n")
    config = load_config(str(path), ["epochs=3", "model_kwargs={attention: split}"])
    assert (config.model, config.lr, config.epochs, config.clip_grad) == ("efficientvit_m1", 0.001, 3, None)
    assert config.model_kwargs == {"attention": "split"} and config.weight_decay == 0.025
    with pytest.raises(UserError, match="epochs must be an integer, got 'many'"):
        load_config(str(path), ["epochs=many"])
    with pytest.raises(UserError, match="clip_mode must be one of"):
        load_config(None, ["clip_mode=value"])


@pytest.mark.parametrize("preset", OUR_PRESETS)
def test_presets_are_valid_configs_of_registered_models(preset):
    config = load_config(preset)
    create_model(config.model, **config.model_kwargs)  # the name and knobs are known


def test_paper_presets_follow_the_official_recipe():
    config = load_config(str(Path(__file__).parent.parent / "experiments/paper/efficientvit_m4.yaml"))
    assert (config.epochs, config.batch_size * 8, config.lr, config.weight_decay, config.clip_grad) == (
        300,
        2048,
        1e-3,
        0.025,
        0.02,
    )
    assert (config.mixup, config.cutmix, config.auto_augment, config.reprob) == (0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25)


def test_ranges_and_choices_are_checked_after_the_types():
    with pytest.raises(UserError, match=r"crop_scale must be \[min, max\] with 0 < min <= max <= 1, got \[0.5, 0.2\]"):
        load_config(None, ["crop_scale=[0.5, 0.2]"])
    with pytest.raises(UserError, match=r"crop_scale.* must be .*, got .*'all'"):
        load_config(None, ["crop_scale=[0.5, all]"])
    with pytest.raises(UserError, match="epochs must be at least 1, got 0"):
        load_config(None, ["epochs=0"])
    with pytest.raises(UserError, match="--set takes key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(UserError, match="snapshots are epochs, counted from 1, got \\[0, 3\\]"):
        load_config(None, ["snapshots=[0, 3]"])
    with pytest.raises(UserError, match="plateau_epochs must be at least 1"):
        load_config(None, ["plateau_epochs=0"])


def test_compile_is_true_false_or_auto():
    assert [load_config(None, [f"compile={v}"]).compile for v in ("true", "false", "auto")] == [True, False, "auto"]
    with pytest.raises(UserError, match="compile must be true, false or auto, got 'sometimes'"):
        load_config(None, ["compile=sometimes"])
    with pytest.raises(UserError, match="compile must be true or false or text, got 3"):
        load_config(None, ["compile=3"])


def test_help_lists_every_key_with_its_default():
    text = config_help()
    assert "  lr (0.001)\n" in text and "  crop_scale ([0.08, 1.0])\n" in text and "  teacher (null)\n" in text
    assert "  snapshots ([])\n" in text and "  plateau (null)\n" in text and "  plateau_epochs (2)\n" in text
