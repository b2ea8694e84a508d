"""A pipeline preset (experiments/reproduce/<name>.yaml), parsed once into typed sections.

Each figure module defines its own section (`analysis/figures/*.py`, `Section`); a section that sets an analysis
tool's options reuses that tool's config dataclass, so every option has one default, the tool's. An unknown or
misspelt key is one sentence naming it and the nearest valid key, with the same coercion as training configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from analysis import mhsa_sweep
from analysis.figures import fig2, fig3, fig4, fig5, pareto, proxies
from efficientvit.config import config_from_dict, knob
from efficientvit.data import fashion_mnist
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError
from efficientvit.models import create_model

PRESETS = Path("experiments/reproduce")


@dataclass
class Data:
    path: str = knob("fashion-mnist", "fashion-mnist, or an ImageFolder root with train/ and val/")
    synthetic: dict | None = knob(None, "generate shapes at `path` (make_synthetic's arguments): tests")


@dataclass
class Preset:
    runs: Path = knob(help="folder of the trainings and pruned models (checkpoints: never committed)")
    data: Data = knob(Data(), "the data every figure reads")
    device: str = knob("cpu", "where analyses run: cpu, cuda or auto")
    minutes: dict[str, float] = knob({}, "expected minutes per stage, for the progress line's estimate")
    proxies: proxies.Section | None = knob(None, "the proxies Figs. 4 and 5 analyse")
    fig2: fig2.Section | None = knob(None, "Figure 2: memory-bound operations")
    fig3: fig3.Section | None = knob(None, "Figure 3: MHSA proportion of throughput-matched subnets")
    fig4: fig4.Section | None = knob(None, "Figure 4: head similarity")
    fig5: fig5.Section | None = knob(None, "Figure 5: Taylor pruning and the designed variant")
    pareto: pareto.Section | None = knob(None, "the designed variant trained and timed against its peers")


def load_preset(name: str) -> Preset:
    """A preset by name (experiments/reproduce/<name>.yaml) or path."""
    path = Path(name) if name.endswith(".yaml") else PRESETS / f"{name}.yaml"
    if not path.is_file() and not PRESETS.is_dir():
        raise UserError(f"no {PRESETS}/ here: run from the repository root (the presets name files relative to it)")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}: choose one of {known}, or give a YAML path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"preset {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    return config_from_dict(Preset, values, f"preset {path.name}")


def recipe_digest(preset: Preset) -> str:
    """A fingerprint of everything a preset asks for except its progress estimates: a finished stage is kept
    only under the recipe it ran (any change to the preset runs every stage again, each resuming what it can)."""
    settings = {k: v for k, v in dataclasses.asdict(preset).items() if k != "minutes"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_preset(preset: Preset) -> None:
    """Fail in a second, not after twenty minutes: every model the preset trains builds and runs a batch, every
    proxy a figure reads is trained, every family Fig. 3 sweeps is defined."""
    needed = {name: section.proxies for name, section in (("fig4", preset.fig4), ("fig5", preset.fig5)) if section}
    if needed and preset.proxies is None:
        raise UserError(f"{', '.join(needed)} read proxies, and the preset has no `proxies` section")
    if preset.proxies is not None:
        proxies.check(preset.proxies, preset.runs, needed)
    if preset.pareto is not None and preset.fig5 is None:
        raise UserError("the pareto stage trains the variant Fig. 5 designs, and the preset has no fig5")
    if preset.fig3 is not None:
        sweep = mhsa_sweep.read_sweep_config(preset.fig3.config)
        for family in preset.fig3.sweep.get("families", []):
            if family not in sweep["families"]:
                raise UserError(f"fig3 sweeps {family!r}, which {preset.fig3.config} does not define")
            create_model(family, **sweep["families"][family])


def prepare_data(data: Data) -> str:
    """The preset's data: Fashion-MNIST prepared, the shapes generated, or an ImageFolder root checked."""
    if fashion_mnist.refers_to_fashion_mnist(data.path):
        return data.path if data.path == fashion_mnist.NAME else str(fashion_mnist.prepare(data.path, download=False))
    if (Path(data.path) / "train").is_dir() and (Path(data.path) / "val").is_dir():
        return data.path
    if data.synthetic is None:
        raise UserError(
            f"data directory {data.path} does not exist; point `data.path` (or --data) at fashion-mnist or "
            "an ImageFolder root with train/ and val/"
        )
    return str(make_synthetic(data.path, **data.synthetic))
