"""A pipeline preset (experiments/reproduce/<name>.yaml), parsed once into typed sections.

Each registered figure (`analysis.figures.MODULES`) brings its own section (its module's `Section`); a section that
sets an analysis tool's options holds that tool's settings (`analysis.pipeline.settings_of`), so every option has
one default, the tool's; training keys are checked as they are read (`efficientvit.train_config.check_overrides`).
An unknown or misspelt key is one sentence naming it and the nearest valid key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from analysis.figures import registered
from analysis.launcher import Launch
from efficientvit.config import config_from_dict, knob
from efficientvit.data import fashion_mnist
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError
from efficientvit.runtime import resolve_device
from efficientvit.train_config import read_yaml


def draw_images(preset, images: int):
    """The preset with every analysis that draws images drawing `images` of them (`reproduce --images`)."""
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    for figure in registered():
        section = getattr(preset, figure.key)
        if figure.draw is not None and section is not None:
            setattr(preset, figure.key, figure.draw(section, images))
    return preset


PRESETS = Path("experiments/reproduce")


@dataclass
class Data:
    path: str = knob("fashion-mnist", "fashion-mnist, or an ImageFolder root with train/ and val/")
    synthetic: dict | None = knob(None, "generate shapes at `path` (make_synthetic's arguments): tests")


def preset_class() -> type:
    """The preset's dataclass: the run's own keys, then one optional section per registered figure."""
    run = [
        ("runs", Path, knob(help="folder of the trainings and pruned models (checkpoints: never committed)")),
        ("data", Data, knob(Data(), "the data every figure reads")),
        ("device", str, knob("cpu", "where analyses run: cpu, cuda or auto")),
        ("minutes", dict[str, float], knob({}, "expected minutes per stage, for the progress line's estimate")),
        ("launch", Launch, knob(Launch(), "the jobs of --launcher: partition, GPUs and CPUs per job, time limit")),
    ]
    sections = [(figure.key, figure.section | None, knob(None, figure.help)) for figure in registered()]
    return dataclasses.make_dataclass("Preset", run + sections)


Preset = preset_class()


def load_preset(name: str):
    """A preset by name (experiments/reproduce/<name>.yaml) or path, every section checked as it is read."""
    path = Path(name) if name.endswith(".yaml") else PRESETS / f"{name}.yaml"
    if not path.is_file() and not PRESETS.is_dir():
        raise UserError(f"no {PRESETS}/ here: run from the repository root (the presets name files relative to it)")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}: choose one of {known}, or give a YAML path")
    return config_from_dict(preset_class(), read_yaml(path, "preset"), f"preset {path.name}")


RUN_KEYS = ("runs", "data", "device")  # what every stage depends on besides its own section and those it reads


def recipe_digest(preset, figure) -> str:
    """A fingerprint of what a figure's stage asks for: the run's data, device and runs folder, the figure's own
    section and the sections it reads (its progress estimate and the jobs' resources left out). A finished stage is
    kept only under the recipe it ran: a change to a section runs again the stages that depend on it, each resuming
    what it can, and keeps the others (a long run's finished tables survive a change to a later figure)."""
    keys = (*RUN_KEYS, figure.key, *figure.reads)
    settings = {k: v for k, v in dataclasses.asdict(preset).items() if k in keys}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_preset(preset) -> None:
    """Fail in a second, not after twenty minutes: every section a figure reads is there, and each figure's own
    checks pass (every model the preset trains builds and runs a batch, every proxy a figure reads is trained,
    every family Fig. 3 sweeps is defined, every training recipe makes a config)."""
    resolve_device(preset.device)  # cuda asked of a machine without one: one sentence, before any work
    for figure in registered():
        if getattr(preset, figure.key) is None:
            continue
        for needed in figure.reads:
            if getattr(preset, needed) is None:
                raise UserError(f"{figure.key} reads the `{needed}` section, and the preset has none")
        if figure.check is not None:
            figure.check(preset)


def prepare_data(data: Data) -> str:
    """The preset's data: Fashion-MNIST prepared, the shapes generated, or an ImageFolder root checked."""
    if data.path == fashion_mnist.NAME:  # the trainings (and their jobs) resolve the name: prepared once, here
        fashion_mnist.prepare(fashion_mnist.DEFAULT_ROOT)
        return data.path
    if fashion_mnist.refers_to_fashion_mnist(data.path):
        return str(fashion_mnist.prepare(data.path, download=False))
    if (Path(data.path) / "train").is_dir() and (Path(data.path) / "val").is_dir():
        return data.path
    if data.synthetic is None:
        raise UserError(
            f"data directory {data.path} does not exist; point `data.path` (or --data) at fashion-mnist or "
            "an ImageFolder root with train/ and val/"
        )
    return str(make_synthetic(data.path, **data.synthetic))
