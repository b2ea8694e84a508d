import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from efficientvit import cli, runtime
from efficientvit import train as train_module
from efficientvit.checkpoint import read_checkpoint
from efficientvit.data import fashion_mnist
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError
from efficientvit.losses import DistillationLoss
from efficientvit.models import create_model
from efficientvit.train import (
    RunStatus,
    adaptive_clip_grad_,
    at_plateau,
    ema_update,
    param_groups,
    snapshot_path,
    status,
    train,
)
from efficientvit.train_config import make_config
from tests.helpers import top1_of_checkpoint

# A few steps of M0 at its smallest input: 3 classes, 24 training images in batches of 8.
TINY = dict(
    model="efficientvit_m0",
    img_size=64,
    epochs=2,
    batch_size=8,
    workers=1,
    warmup_epochs=1,
    ema_decay=0.9,
    repeated_aug=False,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth") / "d", classes=3, train=24, val=9, workers=1)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    """Two epochs without stopping; returns the run folder."""
    out = tmp_path_factory.mktemp("straight")
    train(make_config({**TINY, "data": str(data), "out": str(out)}))
    return out


def test_no_weight_decay_on_norms_biases_and_attention_bias_tables():
    model = create_model("efficientvit_m0", num_classes=3, img_size=64)
    decay, no_decay = param_groups(model, 0.025)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.025
    assert model.no_weight_decay() <= skipped and any("attention_biases" in n for n in skipped)
    assert all(p.ndim > 1 for p in decay["params"]) and all(names[id(p)] not in skipped for p in decay["params"])
    assert "patch_embed.conv1.bn.weight" in skipped and "head.linear.bias" in skipped
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_adaptive_gradient_clipping_caps_each_unit_relative_to_its_weights():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    layer.weight.grad = torch.tensor([[10.0, 0, 0, 0], [0, 0.01, 0, 0]])
    adaptive_clip_grad_(layer.parameters(), clip_factor=0.02)
    # row 0: |g| = 10 > 0.02 x |w| = 0.02, scaled to 0.02; row 1: |g| = 0.01 < 0.04, left alone
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.02, 0, 0, 0], [0, 0.01, 0, 0]]))


def test_checkpoint_and_metrics_after_every_epoch(straight_run):
    rows = list(csv.DictReader((straight_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == [
        "epoch",
        "lr",
        "train_loss",
        "val_top1",
        "val_top5",
        "val_loss",
        "ema_top1",
        "epoch_seconds",
        "train_img_s",
        "stopped",
    ]
    assert float(rows[1]["lr"]) == pytest.approx(1e-5)  # the cosine ends at min_lr
    checkpoint = read_checkpoint(straight_run / "checkpoint.pth")
    assert checkpoint["epoch"] == 2 and checkpoint["model_config"]["kwargs"] == {"num_classes": 3, "img_size": 64}
    assert {"optimizer", "scheduler", "ema", "rng", "config"} <= set(checkpoint)
    assert not [p for p in straight_run.iterdir() if p.name.endswith(".tmp")]


def test_until_an_epoch_then_resume_ends_with_bitwise_the_same_weights(data, straight_run, tmp_path):
    config = make_config({**TINY, "data": str(data), "out": str(tmp_path)})
    assert status(config) == RunStatus(epochs_done=0, finished=False)
    assert len(train(config, until=1)) == 1
    assert status(config) == RunStatus(epochs_done=1, finished=False)
    assert read_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 1
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train(config)
    train(config, resume=True)
    assert status(config) == RunStatus(epochs_done=2, finished=True)

    straight, resumed = (read_checkpoint(p / "checkpoint.pth") for p in (straight_run, tmp_path))
    for key in ("model", "ema"):
        assert straight[key].keys() == resumed[key].keys()
        assert all(torch.equal(straight[key][k], resumed[key][k]) for k in straight[key]), key

    def drop_time(rows):
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "train_img_s")} for r in rows]

    assert drop_time(straight["history"]) == drop_time(resumed["history"])


def test_resume_from_another_models_checkpoint_is_one_sentence(data, straight_run, tmp_path):
    config = make_config({**TINY, "model": "efficientvit_m1", "data": str(data), "out": str(tmp_path)})
    with pytest.raises(UserError, match=r"holds efficientvit_m0\(.*\) but this run builds efficientvit_m1"):
        train(config, resume=str(straight_run / "checkpoint.pth"))
    assert list(tmp_path.iterdir()) == []


def test_eval_command_reports_top1_of_a_checkpoint(data, straight_run, capsys):
    assert (
        cli.main(["eval", "--checkpoint", str(straight_run / "checkpoint.pth"), "--data", str(data), "--workers", "0"])
        == 0
    )
    assert "(9 images): top-1" in capsys.readouterr().out
    assert (
        cli.main(["eval", "--checkpoint", str(straight_run / "checkpoint.pth"), "--data", str(data / "missing")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_eval_compares_execution_modes_with_eager_fp32(data, straight_run, capsys):
    """Nine images in batches of 4 (the last one padded): each mode's top-1, its agreement with eager fp32's
    predictions and its largest logit difference, the bf16 one within bf16's precision."""
    checkpoint = str(straight_run / "checkpoint.pth")
    args = ["eval", "--checkpoint", checkpoint, "--data", str(data), "--workers", "0", "--batch-size", "4"]
    assert cli.main([*args, "--modes", "channels_last", "onnxruntime", "bf16"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["eager", "channels_last", "onnxruntime", "bf16"]
    assert rows["eager"][3] == "100.00%" and float(rows["eager"][4]) == 0.0
    assert float(rows["onnxruntime"][4]) < 1e-4 and rows["onnxruntime"][1] == rows["eager"][1]
    assert float(rows["bf16"][4]) < 0.1


def test_hard_distillation_from_a_teacher_checkpoint(data, straight_run, tmp_path):
    config = make_config(
        {
            **TINY,
            "epochs": 1,
            "warmup_epochs": 0,
            "data": str(data),
            "out": str(tmp_path),
            "teacher": str(straight_run / "checkpoint.pth"),
        }
    )
    history = train(config)
    assert len(history) == 1
    assert "head_dist.linear.weight" in read_checkpoint(tmp_path / "checkpoint.pth")["model"]


def test_distillation_losses_are_deits():
    torch.manual_seed(0)
    images, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    logits, logits_dist = torch.randn(4, 3), torch.randn(4, 3)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    teacher_logits = teacher(images).detach()
    ce = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(ce, teacher, "hard", alpha=0.25)(images, (logits, logits_dist), targets)
    expected = 0.75 * ce(logits, targets) + 0.25 * ce(logits_dist, teacher_logits.argmax(1))
    assert torch.allclose(hard, expected)
    tau = 3.0
    soft = DistillationLoss(ce, teacher, "soft", alpha=0.5, tau=tau)(images, (logits, logits_dist), targets)
    p_teacher = (teacher_logits / tau).softmax(1)
    kl = (p_teacher * (p_teacher.log() - (logits_dist / tau).log_softmax(1))).sum() * tau**2 / logits_dist.numel()
    assert torch.allclose(soft, 0.5 * ce(logits, targets) + 0.5 * kl, atol=1e-6)
    assert torch.equal(DistillationLoss(ce)(images, logits, targets), ce(logits, targets))


def test_soft_distillation_from_a_timm_teacher_by_name(data, tmp_path):
    timm = pytest.importorskip("timm")
    weights = tmp_path / "teacher.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    config = make_config(
        {
            **TINY,
            "epochs": 1,
            "warmup_epochs": 0,
            "data": str(data),
            "out": str(tmp_path / "r"),
            "teacher": "test_resnet",
            "teacher_weights": str(weights),
            "distillation": "soft",
        }
    )
    assert len(train(config)) == 1
    for teacher, extra, message in [
        ("test_resnet", {}, "needs teacher_weights"),
        ("no_such_net", {}, "neither a checkpoint file nor a timm model"),
        ("test_resnet", {"teacher_weights": str(weights), "num_classes": 5}, None),
    ]:
        if message is None:  # weights of another head size
            torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), weights)
            message = "do not fit timm's test_resnet with 3 classes"
            extra = {"teacher_weights": str(weights)}
        bad = make_config({**TINY, "data": str(data), "out": str(tmp_path / teacher), "teacher": teacher, **extra})
        with pytest.raises(UserError, match=message):
            train(bad)


def test_the_recipe_trains_in_fp32_with_a_gradient_scaler(data, straight_run):
    checkpoint = read_checkpoint(straight_run / "checkpoint.pth")
    assert checkpoint["speed"]["bf16"] is False and checkpoint["scaler"]["scale"] > 1  # enabled, as the official


@pytest.mark.slow
def test_two_processes_under_torchrun(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = {
        **TINY,
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 4,
        "workers": 0,
        "repeated_aug": True,
        "data": str(data),
        "out": str(tmp_path),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "efficientvit.train"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(tmp_path / "checkpoint.pth")
    assert checkpoint["epoch"] == 1 and len(checkpoint["rng"]) == 2
    # 24 images, 2 processes x 3 steps of 4: lr scaled by the global batch of 8
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3 * 8 / 512)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    # each process evaluated a share of the images: the summed counts are those of one full pass
    assert len(rows) == 1
    assert float(rows[0]["val_top1"]) == pytest.approx(top1_of_checkpoint(tmp_path / "checkpoint.pth", data, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "config.yaml", "curve.csv", "metrics.csv"]


FASHION = Path(__file__).parent / "fixtures" / "fashion-mnist"  # 300 train + 100 test images
TINY_DEIT = dict(
    model="deit_tiny",
    model_kwargs=dict(patch_size=4, embed_dim=24, num_heads=3, layout="AF"),
    img_size=32,
    epochs=1,
    batch_size=50,
    workers=0,
    warmup_epochs=0.5,
    repeated_aug=False,
    mixup=0.0,
    cutmix=0.0,
    auto_augment=None,
    reprob=0.0,
    ema_decay=None,
)


def test_fashion_mnist_by_name_in_a_config(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", FASHION)
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", tmp_path / "data")
    config = make_config({**TINY_DEIT, "data": "fashion-mnist", "train_images": 200, "out": str(tmp_path / "r")})
    history = train(config)
    assert "on 200 images" in capsys.readouterr().out
    assert len(history) == 1
    top1 = top1_of_checkpoint(tmp_path / "r" / "checkpoint.pth", str(tmp_path / "data"), 32)
    assert history[0]["val_top1"] == pytest.approx(top1)
    # four steps of 50 images took train_seconds, part of the epoch's time
    assert 200 / history[0]["train_img_s"] <= history[0]["epoch_seconds"]


def test_training_curve_is_written_every_20_steps(tmp_path):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    train(make_config({**TINY_DEIT, "batch_size": 5, "epochs": 2, "data": str(prepared), "out": str(tmp_path / "r")}))
    curve = list(csv.DictReader((tmp_path / "r" / "curve.csv").open()))
    assert [float(r["epoch"]) for r in curve] == pytest.approx([k * 20 / 60 for k in range(1, 7)], abs=1e-4)
    metrics = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    for epoch, row in enumerate(metrics):  # 3 points of 20 equal batches per epoch average to the epoch's loss
        points = [float(r["train_loss"]) for r in curve[3 * epoch : 3 * epoch + 3]]
        assert sum(points) / 3 == pytest.approx(float(row["train_loss"]), rel=1e-5)


def test_a_model_whose_stem_does_not_fit_fashion_mnist_says_which_knob(tmp_path):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    config = make_config(
        {**TINY_DEIT, "model": "efficientvit_m0", "model_kwargs": {}, "data": str(prepared), "out": str(tmp_path / "r")}
    )
    with pytest.raises(ValueError, match="total stride 64 .*set patch_size=8"):
        train(config)


def test_without_native_bf16_the_run_falls_back_to_fp32(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    seen = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("enabled", True))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(train_module.torch, "autocast", spy)
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    train(make_config({**TINY_DEIT, "data": str(prepared), "out": str(tmp_path / "r"), "precision": "auto"}))
    assert seen == [False] and "(fused AdamW)" in capsys.readouterr().out


def test_the_plateau_rule_compares_the_last_epochs_best_with_the_best_before():
    history = [80.0, 85.0, 85.2, 85.1]
    assert not at_plateau(history[:2], 0.3, 2)  # nothing before the window yet
    assert not at_plateau(history[:3], 0.3, 2)  # 85.2 over 80.0
    assert at_plateau(history, 0.3, 2)  # 85.2 over 85.0: 0.2 < 0.3
    assert not at_plateau(history, 0.1, 2) and not at_plateau(history, None, 2)
    assert at_plateau(history, 0.3, 1)  # 85.1 over 85.2: a drop is no gain
    assert not at_plateau([70.0, 60.0, 75.0], 0.3, 1)  # the best before, not the last before


def test_snapshots_at_the_listed_epochs_rebuild_their_model(tmp_path):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    out = tmp_path / "r"
    config = make_config({**TINY_DEIT, "epochs": 3, "snapshots": [1, 3, 10], "data": str(prepared), "out": str(out)})
    history = train(config)
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_1.pth", "epoch_3.pth"]
    final = read_checkpoint(out / "checkpoint.pth")
    for epoch in (1, 3):
        snapshot = read_checkpoint(snapshot_path(out, epoch))
        assert snapshot["epoch"] == epoch and snapshot["metrics"] == history[epoch - 1]
        assert "optimizer" not in snapshot
        assert top1_of_checkpoint(snapshot_path(out, epoch), str(prepared), 32) == pytest.approx(
            history[epoch - 1]["val_top1"]
        )
    last = read_checkpoint(snapshot_path(out, 3))["model"]
    assert all(torch.equal(last[k], final["model"][k]) for k in last)


def test_a_run_at_its_plateau_stops_snapshots_and_stays_stopped(tmp_path, capsys):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    out = tmp_path / "r"
    # a gain of 100 points is never reached: the rule stops the run after its second epoch
    settings = {**TINY_DEIT, "epochs": 4, "plateau": 100.0, "plateau_epochs": 1, "data": str(prepared)}
    config = make_config({**settings, "out": str(out)})
    assert [row["stopped"] for row in train(config)] == [False, True]
    assert "stopped at the plateau" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["stopped"] for r in rows] == ["False", "True"]
    assert read_checkpoint(out / "checkpoint.pth")["stopped"] is True
    assert read_checkpoint(snapshot_path(out, 2))["epoch"] == 2
    assert status(config) == RunStatus(epochs_done=2, finished=True)
    assert len(train(config, resume=True)) == 2  # resumed, it trains no further
    assert "at its plateau" in capsys.readouterr().out
    without_rule = make_config({**settings, "plateau": None, "out": str(out)})  # the stop binds while the rule does
    assert status(without_rule) == RunStatus(epochs_done=2, finished=False)
    assert [row["epoch"] for row in train(without_rule, resume=True)] == [1, 2, 3, 4]
    assert status(without_rule) == RunStatus(epochs_done=4, finished=True)
    unstopped = make_config({**settings, "plateau": None, "out": str(tmp_path / "u")})
    assert status(unstopped) == RunStatus(0, False) and len(train(unstopped, until=2)) == 2
    assert status(unstopped) == RunStatus(2, False)


def test_a_resumed_run_keeps_the_mode_it_started_in(tmp_path, monkeypatch, capsys):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    settings = {**TINY_DEIT, "epochs": 2, "data": str(prepared), "out": str(tmp_path / "r")}
    train(make_config({**settings, "precision": "bf16"}), until=1)

    def no_new_choice(*args):
        raise AssertionError("a resumed run chose its mode again")

    monkeypatch.setattr(train_module, "choose_speed", no_new_choice)
    train(make_config({**settings, "precision": "fp32", "compile": "auto"}), resume=True)
    assert read_checkpoint(tmp_path / "r" / "checkpoint.pth")["speed"] == {
        "bf16": True,
        "channels_last": False,
        "fused_optimizer": True,
        "compile": False,
    }
    assert capsys.readouterr().out.count("(bf16 autocast, fused AdamW)") == 2


def test_short_epochs_train_epoch_images_per_epoch_and_refuse_repeated_augmentation(tmp_path, capsys):
    prepared = fashion_mnist.prepare(tmp_path / "fmnist", source=FASHION)
    values = {**TINY_DEIT, "epoch_images": 100, "batch_size": 25, "data": str(prepared), "out": str(tmp_path / "r")}
    history = train(make_config(values))
    assert len(history) == 1 and "100 per epoch" in capsys.readouterr().out
    with pytest.raises(UserError, match="epoch_images and repeated_aug"):
        make_config({**values, "repeated_aug": True})


def test_ema_warmup_forgets_the_start_that_a_fixed_decay_keeps():
    """Against the average written out in float64: with warm-up the decay at step t is min(d, (1 + t) / (10 + t)),
    without it d throughout; after 1,000 steps towards a constant the fixed 0.999 still holds e^-1 of the start."""
    start, target = torch.zeros(3), torch.ones(3)
    for warmup in (False, True):
        model = nn.Linear(3, 1, bias=False)
        nn.init.zeros_(model.weight)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update(0.999, warmup), use_buffers=True)
        ema.update_parameters(model)  # the first update copies the start
        expected = start.double()
        with torch.no_grad():
            model.weight.copy_(target)
        for t in range(1, 1001):
            ema.update_parameters(model)
            decay = min(0.999, (1 + t) / (10 + t)) if warmup else 0.999
            expected = decay * expected + (1 - decay) * target.double()
        got = ema.module.weight.detach().double().flatten()
        assert torch.allclose(got, expected, atol=1e-5)
        assert (got < 0.64).all() if not warmup else (got > 0.99).all()
