"""The released preset's minutes per stage, measured offline on made weights of full size (the released models'
architectures with random weights: the same compute as the real ones) and a generated ImageFolder of ImageNet's
1,000 classes (JPEGs of ImageNet's typical size, resized by the weights' own transform).

    python benchmarks/released_minutes.py --images 100    # writes benchmarks/released_minutes.{csv,md}

It runs `analysis/reproduce.py --preset released --images N` as a user would, on a hub cache in a temporary folder
(HF_HUB_OFFLINE=1), and reads each stage's minutes from the run's manifest. What each stage's time grows with:
the proxies stage takes every model's top-1 on all of val/ (`--val-per-class`: ImageNet's val/ is 50 per class);
Figs. 4 and 5 draw `--images`, except Fig. 5's fine-tuning between pruning rounds (`step_finetune` steps of a
batch: fixed) and the variant designer's timing (fixed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pandas as pd
import yaml
from PIL import Image

from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.results import atomic_write_text, markdown_table, write_results
from efficientvit.runtime import resolve_device

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the tests' weight maker: timm's models, every tensor off its initialisation
from tests.helpers import pretrained_in_hub_cache  # noqa: E402


@dataclass
class ReleasedMinutesConfig:
    images: int = knob(100, "images every analysis draws (reproduce --images)")
    val_per_class: int = knob(1, "generated val/ images per class (top-1 is taken on all of them)")
    train_per_class: int = knob(1, "generated train/ images per class (Fig. 5 scores and fine-tunes on train/)")
    device: str = knob("auto", "where the preset runs: cpu, cuda or auto", choices=("cpu", "cuda", "auto"))
    out: Path = knob(HERE / "released_minutes", "writes <out>.csv, <out>.json and <out>.md")


def imagenet_folder(root: Path, per_class: dict[str, int]) -> Path:
    """root/<split>/<class>/<i>.jpg for ImageNet's 1,000 classes: 500x375 JPEGs, each class its own colour."""
    for split, count in per_class.items():
        for c in range(1000):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                colour = (c % 256, (7 * c + 31 * i) % 256, (13 * c) % 256)
                Image.new("RGB", (500, 375), colour).save(folder / f"{i}.jpg", quality=90)
    return root


def measure(config: ReleasedMinutesConfig) -> pd.DataFrame:
    preset = yaml.safe_load((ROOT / "experiments/reproduce/released.yaml").read_text())
    device = str(resolve_device(config.device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "hub"
        huggingface_hub.constants.HF_HUB_CACHE = str(cache)  # where pretrained_in_hub_cache lays the weights
        for model in preset["proxies"]["models"].values():
            pretrained_in_hub_cache(model["checkpoint"])
        data = imagenet_folder(tmp / "imagenet", {"train": config.train_per_class, "val": config.val_per_class})
        preset.update(device=device, runs=str(tmp / "runs"))
        (tmp / "released.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
        out = tmp / "results"
        command = [sys.executable, "analysis/reproduce.py", "--preset", str(tmp / "released.yaml")]
        command += ["--data", str(data), "--out", str(out), "--images", str(config.images)]
        env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
            raise UserError("the released preset stopped before its end (its own message is above)")
        timing = json.loads((out / "manifest.json").read_text())["timing"]
    return pd.DataFrame(
        {
            "stage": stage,
            "minutes": round(t["seconds"] / 60, 1),
            "images": config.images,
            "val_images": 1000 * config.val_per_class,
            "device": ", ".join(t["devices"]),
        }
        for stage, t in timing.items()
    )


def run(config: ReleasedMinutesConfig) -> pd.DataFrame:
    table = measure(config)
    write_results(table, config.out, config_arguments(config))
    command = f"python benchmarks/released_minutes.py --images {config.images} --device {config.device}"
    where = ", ".join(sorted(set(table["device"])))
    text = "\n".join(
        [
            "# The released preset's minutes per stage",
            "",
            f"`{command}` ({where}): made weights of full size, a generated ImageFolder of 1,000 classes "
            f"({1000 * config.val_per_class} val/ images), every analysis drawing {config.images} images.",
            "",
            *markdown_table(table),
            "",
        ]
    )
    atomic_write_text(config.out.with_suffix(".md"), text)
    print(text)
    return table


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ReleasedMinutesConfig, argv, __doc__.splitlines()[0])
    return exit_status("benchmarks/released_minutes.py", run, config)


if __name__ == "__main__":
    sys.exit(main())
