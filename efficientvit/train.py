"""The official EfficientViT training recipe, for any registered model, on one device or many under torchrun.

    efficientvit train --config experiments/cpu/efficientvit_m0.yaml [--set epochs=5] [--resume]
    torchrun --nproc_per_node 8 -m efficientvit.train --config experiments/paper/efficientvit_m4.yaml

`train` is one straight line: config, data, model, optimizer, resume, loop, checkpoint. Its configuration is
`TrainConfig` (train_config.py), the evaluation every epoch `efficientvit.evaluation`. The recipe (Liu et al.
2023, after DeiT): AdamW at 1e-3 per 512 images of global batch, weight decay 0.025 except on norms, biases and
attention-bias tables; 5 warm-up epochs from 1e-6, then cosine down to 1e-5; label smoothing 0.1; MixUp 0.8 /
CutMix 1.0; timm's RandAugment rand-m9-mstd0.5-inc1; random erasing 0.25; repeated augmentation; EMA of the
weights (decay 0.99996); adaptive gradient clipping at 0.02; float32 with a gradient scaler (which skips a step
whose gradients are not finite); optional DeiT distillation, hard or soft, from a teacher. The learning rate
is stepped every iteration (the official code steps it per epoch; per iteration gives the same curve at ImageNet
scale and a smooth warm-up on short CPU runs).

Every epoch ends with a checkpoint (<out>/checkpoint.pth) and a metrics table (<out>/metrics.csv), both written
atomically by rank 0. Resuming is exact: the sample order and the DataLoader workers' seeds of each epoch derive
from (seed, epoch, rank) and the checkpoint holds every other random state, so on the CPU a run stopped after
any epoch and resumed ends with the same weights, bit for bit, as one that never stopped.

Budgets: `snapshots: [1, 3, 10]` also saves the weights after those epochs (<out>/snapshots/epoch_<E>.pth, our
checkpoint format: `model_from_checkpoint` rebuilds it), the same run at three budgets of one schedule; `plateau`
stops the run where validation top-1 stops rising (`at_plateau`) and snapshots that epoch; `train(..., until=E)`
stops after epoch E so a caller can analyse snapshot E, then resume; `status(config)` says how far a run is
without training.

Speed: `fast` (on by default) runs the fused AdamW kernel and channels-last for the convolutional models (the
same maths). `precision: auto` adds bf16 autocast where the device computes bf16 natively, `compile: auto`
torch.compile; where a choice is open, a run long enough to repay it first times a few training steps of its model
in each open mode and keeps the one that finishes the run first, compile time included
(`efficientvit.runtime.choose_speed`: runs of minutes never compile). The checkpoint records the choice, so a
resumed run computes the same way.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint, unwrap
from .data.pipeline import EpochChunkSampler, RepeatedAugmentationSampler, batch_mixing, check_bad_images, collate
from .data.sources import Augment, fixed_subset, open_split
from .errors import UserError, exit_status
from .evaluation import evaluate
from .files import atomic_write_text
from .hub import is_pretrained
from .losses import DistillationLoss
from .models import ModelSpec, create_model
from .runtime import Speed, choose_speed
from .train_config import TrainConfig, config_help, load_config

HELP = "train a model with the official recipe (also under torchrun)"
DESCRIPTION = (
    "Train with the official EfficientViT recipe. Writes <out>/checkpoint.pth "
    "and <out>/metrics.csv after every epoch. For many processes: "
    "torchrun --nproc_per_node N -m efficientvit.train --config ..."
)
METRICS = (
    "epoch",
    "lr",
    "train_loss",
    "val_top1",
    "val_top5",
    "val_loss",
    "ema_top1",
    "epoch_seconds",
    "train_img_s",
    "stopped",  # True on the epoch the plateau rule stopped the run
)
CURVE = ("epoch", "lr", "train_loss")  # curve.csv: the training loss every CURVE_STEPS steps, epoch as a fraction
CURVE_STEPS = 20


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on weight matrices and kernels: not on norms, biases (1-d) or no_weight_decay() names."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit (row of a matrix, output channel of a kernel); whole-tensor norm for vectors."""
    if x.ndim <= 1:
        return x.norm()
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters, clip_factor: float = 0.02, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021, NFNets): scale each unit's gradient down to at most
    clip_factor x the unit's weight norm (weights below eps count as eps, so zero-init units can still move)."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p).clamp(min=eps).mul(clip_factor)
        grad_norm = unitwise_norm(p.grad)
        scale = (max_norm / grad_norm.clamp(min=1e-6)).clamp(max=1.0)
        p.grad.mul_(scale)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def build_teacher(config: TrainConfig, num_classes: int) -> nn.Module:
    """The teacher: a checkpoint of ours, pretrained weights by name (efficientvit.hub, e.g.
    timm/deit_base_patch16_224.fb_in1k), or a timm model (the paper's RegNetY-160 is `regnety_160`) with its
    trained weights from `teacher_weights`."""
    if Path(config.teacher).is_file() or (is_pretrained(config.teacher) and not config.teacher_weights):
        teacher = model_from_checkpoint(config.teacher)
    elif timm.is_model(config.teacher):
        if not config.teacher_weights:
            raise UserError(
                f"teacher {config.teacher} needs teacher_weights: a file with its trained weights "
                "(nothing is downloaded)"
            )
        teacher = timm.create_model(config.teacher, pretrained=False, num_classes=num_classes)
        state, _ = unwrap(read_checkpoint(config.teacher_weights))
        try:
            teacher.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(
                f"teacher_weights {config.teacher_weights} do not fit timm's {config.teacher} with "
                f"{num_classes} classes ({str(e).splitlines()[1].strip()[:200]})"
            ) from None
    else:
        raise UserError(
            f"teacher {config.teacher!r} is neither a checkpoint file nor a timm model name, nor a pretrained name "
            "(`efficientvit list --pretrained`)"
        )
    if teacher.num_classes != num_classes:
        raise UserError(f"teacher {config.teacher} predicts {teacher.num_classes} classes, the data has {num_classes}")
    return teacher


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


@dataclass
class Data:
    """The training and validation loaders of one process, and what the loop needs to reseed them each epoch."""

    train_set: Dataset
    sampler: Sampler
    train_loader: DataLoader
    loader_generator: torch.Generator  # reseeded every epoch: it seeds the workers' augmentations
    val_loader: DataLoader
    num_classes: int


def load_data(config: TrainConfig, rank: int, world: int, device: torch.device) -> Data:
    """Training batches drop the ragged end (as the official code); evaluation sees every image once, each
    process a strided share, so the summed counts are exact."""
    augment = Augment(config.auto_augment, config.reprob, tuple(config.crop_scale), config.color_jitter)
    train_set = open_split(config.data, "train", config.img_size, augment)
    val_set = open_split(config.data, "val", config.img_size, classes=train_set.classes)
    num_classes = len(train_set.classes)
    train_set = fixed_subset(train_set, config.train_images, config.seed)
    if config.epoch_images is not None:
        sampler = EpochChunkSampler(len(train_set), config.epoch_images, world, rank, config.seed)
    elif config.repeated_aug:
        sampler = RepeatedAugmentationSampler(train_set, world, rank, config.seed)
    else:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=config.seed)
    if len(sampler) < config.batch_size:
        raise UserError(
            f"the training split has {len(train_set)} images, fewer than one batch of {config.batch_size} "
            f"per process; lower batch_size"
        )
    generator = torch.Generator()
    train_loader = DataLoader(
        train_set,
        config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        generator=generator,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(
        Subset(val_set, range(rank, len(val_set), world)),
        config.batch_size,
        num_workers=config.workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    return Data(train_set, sampler, train_loader, generator, val_loader, num_classes)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model to train: a registered one, or an `init` checkpoint of ours (e.g. a pruned model) or pretrained
    name (efficientvit.hub), which brings its own architecture and weights; trained on other classes than the
    checkpoint's, it starts with a fresh classifier."""
    extras = {
        **({"drop_path_rate": config.drop_path} if config.drop_path > 0 else {}),
        **({"distillation": True} if config.teacher else {}),
    }
    if not config.init:
        return create_model(
            config.model, num_classes=num_classes, img_size=config.img_size, **config.model_kwargs, **extras
        )
    return model_from_checkpoint(config.init, img_size=config.img_size, num_classes=num_classes, **extras)


def build_optimizer(config: TrainConfig, model: nn.Module, speed: Speed, steps: int, world: int):
    """AdamW at lr x global batch / 512, a linear warm-up from warmup_lr, then cosine to min_lr, per step."""
    lr = config.lr * config.batch_size * world / 512
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=lr, fused=speed.fused_optimizer or None)
    warmup_steps = round(config.warmup_epochs * steps)
    scheduler = cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * steps - warmup_steps), eta_min=config.min_lr
    )
    if warmup_steps:
        warmup = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=min(1.0, config.warmup_lr / lr), total_iters=warmup_steps
        )
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
    return optimizer, scheduler


@dataclass
class State:
    """Everything a checkpoint holds besides the configuration: the training resumes from exactly this."""

    model: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    speed: Speed
    epoch: int = 0
    history: list = field(default_factory=list)
    curve: list = field(default_factory=list)
    stopped: bool = False  # at the plateau: no more epochs, even when resumed (unless without the rule)


def resume_path(out: Path, resume: bool | str, main: bool) -> Path | None:
    checkpoint = out / "checkpoint.pth"
    if isinstance(resume, str):
        return Path(resume)
    if not resume and checkpoint.exists():
        raise UserError(f"{out} already holds a checkpoint; continue it with --resume, or set another out")
    if resume and not checkpoint.exists():
        if main:
            print(f"nothing to resume in {out}: starting from scratch")
        return None
    return checkpoint if resume else None


def restore(state: State, checkpoint: dict, path: Path, rank: int) -> None:
    held = ModelSpec.from_dict(checkpoint["model_config"])
    if held != state.model.spec:
        raise UserError(
            f"cannot resume from {path}: it holds {held.describe()} but this run builds "
            f"{state.model.spec.describe()}; resume with the config it was trained with, or set another out"
        )
    load_checkpoint(state.model, checkpoint)
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if state.ema is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    if "scaler" in checkpoint:
        state.scaler.load_state_dict(checkpoint["scaler"])
    state.epoch, state.history, state.curve = checkpoint["epoch"], checkpoint["history"], checkpoint.get("curve", [])
    state.stopped = checkpoint.get("stopped", False)
    if rank < len(checkpoint["rng"]):
        set_rng_state(checkpoint["rng"][rank])


def train_one_epoch(
    config: TrainConfig,
    state: State,
    forward: nn.Module,
    criterion: DistillationLoss,
    data: Data,
    epoch: int,
    device: torch.device,
    main: bool,
) -> torch.Tensor:
    """One pass over the training loader; returns (loss x images, images, skipped) summed over this process, and
    appends to the curve every CURVE_STEPS steps (on the first process)."""
    speed, steps = state.speed, len(data.train_loader)
    mixing = batch_mixing(data.num_classes, config.mixup, config.cutmix)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed.bf16)
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    forward.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    last = [0.0, 0.0]  # sums at the last curve point
    bar = tqdm(
        data.train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not main, dynamic_ncols=True
    )
    for step, (images, targets, bad) in enumerate(bar):
        sums[2] += check_bad_images(bad, config.skip_bad)
        if images is None:
            continue
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        if mixing is not None:
            images, targets = mixing(images, targets)
        with autocast:
            loss = criterion(images, forward(images), targets)
        optimizer_step(config, state, loss)
        sums[0] += loss.detach() * len(images)
        sums[1] += len(images)
        if main and (step + 1) % CURVE_STEPS == 0:  # reading the loss waits for the device: not every step
            totals = sums[:2].tolist()
            lr, mean_loss = state.optimizer.param_groups[0]["lr"], (totals[0] - last[0]) / (totals[1] - last[1])
            state.curve.append({"epoch": round(epoch + (step + 1) / steps, 4), "lr": lr, "train_loss": mean_loss})
            last = totals
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.1e}", refresh=False)
    return sums


def optimizer_step(config: TrainConfig, state: State, loss: torch.Tensor) -> None:
    """Backward (through the gradient scaler), clipping, the optimizer and schedule steps, the EMA update."""
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if config.clip_grad is not None:
        state.scaler.unscale_(state.optimizer)
        if config.clip_mode == "agc":
            adaptive_clip_grad_(state.model.parameters(), config.clip_grad)
        else:
            nn.utils.clip_grad_norm_(state.model.parameters(), config.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


def at_plateau(top1: list[float], gain: float | None, window: int) -> bool:
    """The plateau rule: True when the best top-1 of the last `window` epochs exceeds the best of all the epochs
    before them by less than `gain` points. Never while there is no epoch before the window, nor when `gain` is
    None. With gain 0.3 and window 2: 80.0, 85.0, 85.2, 85.1 stops after the fourth epoch (85.2 - 85.0 < 0.3)."""
    if gain is None or len(top1) <= window:
        return False
    return max(top1[-window:]) - max(top1[:-window]) < gain


def snapshot_path(out: str | os.PathLike, epoch: int) -> Path:
    """Where a run writes its snapshot of `epoch` (TrainConfig.snapshots, and the plateau's stop)."""
    return Path(out) / "snapshots" / f"epoch_{epoch}.pth"


def save_epoch(config: TrainConfig, state: State, world: int, main: bool) -> None:
    """Checkpoint (every process's random state gathered into it), the epoch's snapshot when one is due, then
    metrics.csv and curve.csv, by the first process. metrics.csv comes last: an epoch it lists is on disk
    (`status` reads it)."""
    rngs = [None] * world
    if world > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if not main:
        return
    out = Path(config.out)
    save_checkpoint(
        out / "checkpoint.pth",
        state.model,
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        ema=state.ema.state_dict() if state.ema is not None else None,
        scaler=state.scaler.state_dict(),
        epoch=state.epoch,
        history=state.history,
        curve=state.curve,
        stopped=state.stopped,
        rng=rngs,
        speed=dataclasses.asdict(state.speed),
        config=dataclasses.asdict(config),
    )
    if state.epoch in config.snapshots or state.stopped:
        save_checkpoint(snapshot_path(out, state.epoch), state.model, epoch=state.epoch, metrics=state.history[-1])
    write_table(out / "metrics.csv", state.history, METRICS)
    write_table(out / "curve.csv", state.curve, CURVE)


class RunStatus(NamedTuple):
    epochs_done: int
    finished: bool  # all of config.epochs done, or stopped at the plateau (rule still on): training changes nothing


def status(config: TrainConfig) -> RunStatus:
    """Where the run in `config.out` stands, without training or loading anything but its metrics.csv (which each
    epoch writes after its checkpoint and snapshot, so every epoch it lists is on disk)."""
    path = Path(config.out) / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    if not rows:
        return RunStatus(0, False)
    done = int(rows[-1]["epoch"])
    stopped = rows[-1].get("stopped") == "True" and config.plateau is not None
    return RunStatus(done, done >= config.epochs or stopped)


def train(config: TrainConfig, resume: bool | str = False, until: int | None = None) -> list[dict]:
    """Train as configured; returns the metrics of every epoch done so far. `resume`: True for <out>/checkpoint.pth,
    or a path. `until`: stop after that epoch (checkpointed as every epoch), to be continued later with `resume`;
    the schedule stays `epochs` long, and the resumed run ends as one that never stopped."""
    if until is not None and until < 1:
        raise UserError(f"until is an epoch, counted from 1, got {until}")
    rank, world, device = setup_distributed()
    try:
        return train_process(config, resume, until, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train_process(
    config: TrainConfig, resume: bool | str, until: int | None, rank: int, world: int, device: torch.device
) -> list[dict]:
    main, out = rank == 0, Path(config.out)
    checkpoint_path = resume_path(out, resume, main)
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    run = setup_run(config, checkpoint, rank, world, device)
    state = run.state
    if checkpoint is not None:
        restore(state, checkpoint, checkpoint_path, rank)
        # a plateau stop binds while the rule does: resumed without it (plateau null), the run trains on to `epochs`
        state.stopped = state.stopped and config.plateau is not None
        if main:
            print(f"resumed {checkpoint_path} after epoch {state.epoch}" + (" (at its plateau)" * state.stopped))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        per_epoch = f", {config.epoch_images:,} per epoch" if config.epoch_images else ""
        print(
            f"training {state.model.spec.describe()} on {len(run.data.train_set):,} images{per_epoch} "
            f"({state.speed.describe()})",
            flush=True,
        )
    end = min(config.epochs, until or config.epochs)
    while state.epoch < end and not state.stopped:
        run_epoch(config, run, device, rank, world)
    return state.history


@dataclass
class Run:
    """One process's training, set up: its state, the forward it trains through, the loss and the data."""

    state: State
    forward: nn.Module
    criterion: DistillationLoss
    data: Data


def ema_update(decay: float, warmup: bool):
    """`AveragedModel`'s per-step update: a fixed `decay`, or with `warmup` one that grows from 0.18 at the
    second step to `decay`. A fixed 0.999 keeps 37% of the random initialisation after 1,000 steps, and an
    average of weights and BatchNorm statistics that far apart is no model (it predicts one class)."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    def update(ema_params, params, num_averaged):
        step = int(num_averaged)  # steps averaged so far: saved with the EMA, so a resumed run goes on from it
        get_ema_multi_avg_fn(min(decay, (1 + step) / (10 + step)))(ema_params, params, num_averaged)

    return update


def setup_run(config: TrainConfig, checkpoint: dict | None, rank: int, world: int, device: torch.device) -> Run:
    """Seeds, data, model (and teacher, EMA), the mode it runs in (the checkpoint's, or chosen), optimizer, loss."""
    torch.manual_seed(config.seed + rank)
    random.seed(config.seed + rank)
    data = load_data(config, rank, world, device)
    model = build_model(config, data.num_classes).to(device)
    teacher = (
        build_teacher(config, data.num_classes).to(device).eval().requires_grad_(False) if config.teacher else None
    )
    ema = (
        AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay, config.ema_warmup), use_buffers=True)
        if config.ema_decay is not None
        else None
    )
    speed = training_speed(config, model, device, checkpoint, len(data.train_loader), world)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(ddp_model) if speed.compile else ddp_model
    optimizer, scheduler = build_optimizer(config, model, speed, len(data.train_loader), world)
    scaler = torch.amp.GradScaler(device.type, enabled=not speed.bf16)  # the official fp32 recipe's loss scaler
    state = State(model, ema, optimizer, scheduler, scaler, speed)
    # label smoothing also smooths MixUp's soft targets
    criterion = DistillationLoss(
        nn.CrossEntropyLoss(label_smoothing=config.smoothing),
        teacher,
        config.distillation,
        config.distillation_alpha,
        config.distillation_tau,
    )
    return Run(state, forward, criterion, data)


def run_epoch(config: TrainConfig, run: Run, device: torch.device, rank: int, world: int) -> None:
    """Train one epoch, evaluate, apply the plateau rule, save, report."""
    state, data, epoch, main = run.state, run.data, run.state.epoch, rank == 0
    started = time.perf_counter()
    data.sampler.set_epoch(epoch)
    data.loader_generator.manual_seed(epoch_seed(config.seed, epoch, rank))
    sums = train_one_epoch(config, state, run.forward, run.criterion, data, epoch, device, main)
    train_seconds = time.perf_counter() - started
    if world > 1:
        dist.all_reduce(sums)
    val = evaluate(state.model, data.val_loader, device, config.skip_bad, world > 1)
    ema_val = (
        evaluate(state.ema.module, data.val_loader, device, config.skip_bad, world > 1)
        if state.ema is not None
        else None
    )
    top1 = [row["val_top1"] for row in state.history] + [val["top1"]]
    state.epoch, state.stopped = epoch + 1, at_plateau(top1, config.plateau, config.plateau_epochs)
    state.history.append(
        {
            "epoch": epoch + 1,
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_loss": sums[0].item() / sums[1].item(),
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_loss": val["loss"],
            "ema_top1": ema_val["top1"] if ema_val else None,
            "epoch_seconds": time.perf_counter() - started,
            "train_img_s": sums[1].item() / train_seconds,
            "stopped": state.stopped,
        }
    )
    save_epoch(config, state, world, main)
    if main:
        report_epoch(config, state.history[-1], val, ema_val, int(sums[2].item()) + val["skipped"])


def training_speed(
    config: TrainConfig, model: nn.Module, device: torch.device, checkpoint: dict | None, steps: int, world: int
) -> Speed:
    """A resumed run keeps its mode (the same numbers); a new one chooses; every process runs rank 0's choice."""
    if checkpoint is not None and "speed" in checkpoint:
        speed = Speed(**checkpoint["speed"])
    else:
        speed = choose_speed(
            config, model, device, (config.batch_size, 3, config.img_size, config.img_size), config.epochs * steps
        )
    if world > 1:
        chosen = [speed]
        dist.broadcast_object_list(chosen, src=0)
        speed = chosen[0]
    return speed


def report_epoch(config: TrainConfig, row: dict, val: dict, ema_val: dict | None, skipped: int) -> None:
    print(
        f"epoch {row['epoch']}/{config.epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.3f}  "
        f"val top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}  loss {val['loss']:.3f}"
        + (f"  EMA top-1 {ema_val['top1']:.2f}" if ema_val else "")
        + (f"  skipped {skipped} unreadable images" if skipped else "")
        + f"  ({row['epoch_seconds']:.0f} s)"
        + (
            f"\nstopped at the plateau: under {config.plateau} points gained in {config.plateau_epochs} epochs"
            * row["stopped"]
        ),
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = config_help()
    parser.add_argument("--config", metavar="YAML", help="configuration file (see experiments/); keys listed below")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, VALUE read as YAML (repeatable): --set epochs=3 "
        "--set model_kwargs='{attention: split}'",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (without one: <out>/checkpoint.pth, or start afresh if "
        "there is none yet); the run ends as if it had never stopped",
    )
    parser.add_argument(
        "--until",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch (the schedule stays `epochs` long); continue later with --resume",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    train(load_config(args.config, args.set), args.resume, args.until)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m efficientvit.train"))
    return exit_status("efficientvit train", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
