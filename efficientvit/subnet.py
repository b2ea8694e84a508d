"""Throughput-matched subnets of DeiT and Swin (the paper's Fig. 3 method).

For a family, a target speed-up s and an MHSA proportion p, keep the full model's number of layers, make a share
p of them attention layers spread evenly through the network, and search the width (one scale for all stages,
heads kept, widths rounded to a multiple of 2 x heads) until the subnet's measured throughput is s times the full
model's on this device and input size. Speed-ups are ratios of interleaved measurements (see
`efficientvit.bench.interleaved_throughput`). Results are cached, so the same call is instant and returns the
same configuration the second time.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml

from .bench import interleaved_throughput
from .errors import UserError
from .models import create_model
from .models.layers import spread_layout

FAMILIES = ("deit_tiny", "swin_tiny")
TOLERANCE = 0.07
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "efficientvit-lab" / "subnets.json"


def round_width(width: float, heads: int) -> int:
    step = 2 * heads
    return max(step, int(round(width / step)) * step)


def subnet_kwargs(family: str, proportion: float, scale: float, base: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the subnet with MHSA share `proportion` and widths scaled by `scale`."""
    model = create_model(family, **base)
    if family.startswith("deit"):
        heads = model.layers[0].attn.num_heads if hasattr(model.layers[0], "attn") else base.get("num_heads", 3)
        n = len(model.layout)
        return {**base, "layout": spread_layout(n, round(proportion * n)),
                "embed_dim": round_width(model.num_features * scale, heads), "num_heads": heads}
    lengths = [len(s) for s in model.layout]
    flat = spread_layout(sum(lengths), round(proportion * sum(lengths)))
    stages, start = [], 0
    for length in lengths:
        stages.append(flat[start:start + length])
        start += length
    heads = [info["heads"] for info in model.stage_info]
    widths = [round_width(info["width"] * scale, h) for info, h in zip(model.stage_info, heads)]
    return {**base, "layout": stages, "embed_dim": widths, "num_heads": heads}


def measure_speedup(family: str, kwargs: dict[str, Any], base: dict[str, Any], rounds: int, seconds: float,
                    batch_size: int, device: str) -> tuple[float, float, float]:
    """(speed-up, subnet img/s, full model img/s), medians of interleaved rounds."""
    full, sub = (create_model(family, **args).eval().to(device) for args in (base, kwargs))
    full_runs, sub_runs = interleaved_throughput([full, sub], rounds=rounds, seconds=seconds, batch_size=batch_size,
                                                 warmup=1)
    ratio = statistics.median(s / f for s, f in zip(sub_runs, full_runs))
    return ratio, statistics.median(sub_runs), statistics.median(full_runs)


def find_subnet(family: str, speedup: float, proportion: float, img_size: int | None = None,
                base: dict[str, Any] | None = None, batch_size: int = 16, seconds: float = 0.3, rounds: int = 3,
                steps: int = 6, device: str = "cpu", cache: Path | None = DEFAULT_CACHE) -> dict[str, Any]:
    """Search the width scale whose subnet runs `speedup` times faster than the full model; returns a result dict
    with the configuration (`model`, `kwargs`), `speedup_measured`, throughputs and `met` (within 7%)."""
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    if not 0.0 <= proportion <= 1.0:
        raise UserError(f"MHSA proportion must be within [0, 1], got {proportion}")
    if speedup < 1.0:
        raise UserError(f"speed-up must be at least 1 (a subnet is faster than the full model), got {speedup}")
    base = {**(base or {}), **({"img_size": img_size} if img_size else {})}
    key = json.dumps(dict(family=family, speedup=speedup, proportion=proportion, base=base, batch=batch_size,
                          threads=torch.get_num_threads(), device=device), sort_keys=True)
    cached = read_cache(cache)
    if key in cached:
        return cached[key]

    low, high = 0.2, 1.6  # width scales; throughput falls as the scale grows
    best = None
    for _ in range(steps):
        scale = (low * high) ** 0.5
        kwargs = subnet_kwargs(family, proportion, scale, base)
        ratio, _, _ = measure_speedup(family, kwargs, base, rounds, seconds, batch_size, device)
        if best is None or abs(ratio / speedup - 1) < abs(best[1] / speedup - 1):
            best = (kwargs, ratio)
        if ratio < speedup:
            high = scale
        else:
            low = scale
    kwargs = best[0]
    # Re-measure the chosen subnet with more rounds: this is the figure reported.
    ratio, sub_tp, full_tp = measure_speedup(family, kwargs, base, 2 * rounds, seconds, batch_size, device)
    result = dict(model=family, kwargs=kwargs, speedup_target=speedup, speedup_measured=round(ratio, 3),
                  mhsa_proportion=proportion, throughput=round(sub_tp, 1), full_throughput=round(full_tp, 1),
                  met=abs(ratio / speedup - 1) <= TOLERANCE)
    write_cache(cache, {**cached, key: result})
    return result


def read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not Path(path).exists():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        return {}  # a damaged cache only costs a new measurement


def write_cache(path: Path | None, content: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path)


def save_model_config(result: dict[str, Any], path: Path) -> Path:
    """YAML that `load_model_config` (and `create_model`) builds: {model: name, model_kwargs: {...}}, the same
    keys as a training config, so the file also works as one's model part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = (f"# {result['model']} subnet: {result['speedup_target']}x target, measured "
               f"{result['speedup_measured']}x, MHSA proportion {result['mhsa_proportion']}\n")
    plain = json.loads(json.dumps({"model": result["model"], "model_kwargs": result["kwargs"]}))  # tuples -> lists
    tmp = path.with_suffix(".tmp")
    tmp.write_text(comment + yaml.safe_dump(plain, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_model_config(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(model name, constructor kwargs) from a YAML written by `save_model_config` or by hand."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model configuration {path} does not exist")
    content = yaml.safe_load(path.read_text()) or {}
    if "model" not in content:
        raise UserError(f"model configuration {path} has no `model:` entry naming a registered model")
    return content["model"], dict(content.get("model_kwargs") or {})
