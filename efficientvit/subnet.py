"""Throughput-matched subnets of DeiT and Swin (the paper's Fig. 3 method).

For a family, a target speed-up s and an MHSA proportion p, keep the full model's number of layers, make a share
p of them attention layers spread evenly through the network, and search the width (one scale for all stages,
heads kept, widths rounded to a multiple of 2 x heads) until the subnet's measured throughput is s times the full
model's on this device and input size. Speed-ups are ratios of interleaved measurements (see
`efficientvit.bench.measure.interleaved_throughput`). Results are cached, so the same call is instant and returns the
same configuration the second time.

Throughput is not monotone in width: GEMM kernels run faster at some widths than at slightly smaller ones (a
DeiT proxy with 90 channels is slower than with 96 on this project's CPU). So a bisection only finds the region;
the neighbouring widths are then timed side by side and the one closest to the target wins. A winner more than
5% off the target starts a second, wider search (three times the neighbours, twice the timing). Widths move in
steps of 2 x heads channels (6 for a 96-wide DeiT proxy, about 12% of its throughput per step), which can jump over
a 5% window; then the FFN's hidden width is the fine knob: the winner's expansion ratio is shrunk (too slow) or
grown (too fast) in steps of 1/16 and the closest is kept. A subnet still off after that (e.g. one with no FFN
layer to tune) is returned with `met: False`, for the sweep and the report to mark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .bench.measure import interleaved_throughput
from .config import knob
from .errors import UserError
from .files import atomic_write_text
from .flops import count_flops
from .models import ModelSpec, create_model
from .models.layout import format_layout, mhsa_proportion, spread_layout
from .runtime import resolve_device

FAMILIES = ("deit_tiny", "swin_tiny")
TOLERANCE = 0.05  # a subnet within 5% of the target speed-up meets it
SEARCH_VERSION = 4  # part of the cache key: a changed search or budget does not return old answers


@dataclass(frozen=True)
class SearchBudget:
    """How long the width search times its candidates: `steps` bisection steps, each candidate timed in `rounds`
    interleaved rounds of `seconds` at batch `batch_size`; and the timing cache it reads and fills (`cache`, default
    `default_cache()`). Checked when made; `label` names it in file names and logs."""

    batch_size: int = knob(16, "images per timed batch")
    seconds: float = knob(0.3, "time budget of one measurement")
    rounds: int = knob(3, "interleaved rounds per comparison (the final ones use more)")
    steps: int = knob(6, "bisection steps on the width scale")
    cache: str | None = knob(None, "timing cache file (default $XDG_CACHE_HOME/efficientvit-lab/subnets.json)")

    def __post_init__(self):
        if min(self.batch_size, self.rounds, self.steps) < 1 or self.seconds <= 0:
            raise UserError(
                f"a subnet search needs batch_size, rounds and steps of at least 1 and seconds above 0, got {self}"
            )

    @property
    def label(self) -> str:
        return f"b{self.batch_size}_{self.seconds:g}s_{self.rounds}r_{self.steps}steps"


def default_cache() -> Path:
    """The user's subnet cache, $XDG_CACHE_HOME/efficientvit-lab/subnets.json (read when called, so a test or a
    job can point it elsewhere)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "efficientvit-lab" / "subnets.json"


def round_width(width: float, heads: int) -> int:
    step = 2 * heads
    return max(step, int(round(width / step)) * step)


def subnet_kwargs(family: str, proportion: float, scale: float, base: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the subnet with MHSA share `proportion` and widths scaled by `scale`."""
    model = create_model(family, **base)
    if family.startswith("deit"):
        heads = model.layers[0].attn.num_heads if hasattr(model.layers[0], "attn") else base.get("num_heads", 3)
        n = len(model.layout)
        return {
            **base,
            "layout": spread_layout(n, round(proportion * n)),
            "embed_dim": round_width(model.num_features * scale, heads),
            "num_heads": heads,
        }
    lengths = [len(s) for s in model.layout]
    flat = spread_layout(sum(lengths), round(proportion * sum(lengths)))
    stages, start = [], 0
    for length in lengths:
        stages.append(flat[start : start + length])
        start += length
    heads = [info["heads"] for info in model.stage_info]
    widths = [round_width(info["width"] * scale, h) for info, h in zip(model.stage_info, heads)]
    return {**base, "layout": stages, "embed_dim": widths, "num_heads": heads}


def measure_speedups(
    family: str,
    candidates: list[dict[str, Any]],
    base: dict[str, Any],
    rounds: int,
    seconds: float,
    batch_size: int,
    device: str,
) -> list[tuple[float, float, float]]:
    """(speed-up, subnet img/s, full model img/s) of every candidate, all timed in the same interleaved rounds
    as the full model; medians over rounds."""
    full = create_model(family, **base).eval().to(device)
    subs = [create_model(family, **kwargs).eval().to(device) for kwargs in candidates]
    full_runs, *sub_runs = interleaved_throughput(
        [full, *subs], rounds=rounds, seconds=seconds, batch_size=batch_size, warmup=3
    )
    return [
        (
            statistics.median(s / f for s, f in zip(runs, full_runs)),
            statistics.median(runs),
            statistics.median(full_runs),
        )
        for runs in sub_runs
    ]


def layer_costs(
    family: str, base: dict[str, Any], device: str = "cpu", budget: SearchBudget = SearchBudget()
) -> dict[str, float]:
    """What an attention layer costs against an FFN layer here: the full model's layout made all attention and all
    FFN (same depth and widths), timed in interleaved rounds; `attention_over_ffn_time` is the all-FFN model's
    throughput over the all-attention one's (about the per-layer cost ratio, the stem and head being small), and
    `attention_over_ffn_flops` the same ratio of FLOPs. Subnets matched in throughput trade layers at this rate."""
    kinds = {
        kind: subnet_kwargs(family, proportion, 1.0, base) for kind, proportion in (("attention", 1.0), ("ffn", 0.0))
    }
    models = {kind: create_model(family, **kwargs).eval().to(device) for kind, kwargs in kinds.items()}
    runs = interleaved_throughput(
        list(models.values()), rounds=budget.rounds, seconds=budget.seconds, batch_size=budget.batch_size, warmup=3
    )
    speed = {kind: statistics.median(r) for kind, r in zip(models, runs)}
    flops = {kind: count_flops(model.cpu()) for kind, model in models.items()}
    return {
        "attention_img_s": round(speed["attention"], 1),
        "ffn_img_s": round(speed["ffn"], 1),
        "attention_over_ffn_time": round(speed["ffn"] / speed["attention"], 3),
        "attention_over_ffn_flops": round(flops["attention"] / flops["ffn"], 3),
    }


def neighbours(family: str, proportion: float, scale: float, base: dict[str, Any], count: int) -> list[dict]:
    """The subnet at `scale` and the next `count` distinct subnets (rounded widths) above and below it."""
    found = [subnet_kwargs(family, proportion, scale, base)]
    for factor in (1.02, 1 / 1.02):
        step, new = scale, 0
        while new < count and 0.05 < step < 3:
            step *= factor
            kwargs = subnet_kwargs(family, proportion, step, base)
            if kwargs not in found:
                found.append(kwargs)
                new += 1
    return found


def finer_ffn(kwargs: dict[str, Any], too_slow: bool, count: int = 8) -> list[dict[str, Any]]:
    """The subnet with its FFN expansion ratio shrunk (when too slow) or grown (too fast) by 1/16 of it per step,
    `count` steps: the fine knob between two width steps."""
    ratio = kwargs.get("mlp_ratio", 4.0)
    sign = -1 if too_slow else 1
    return [{**kwargs, "mlp_ratio": round(ratio * (1 + sign * k / 16), 4)} for k in range(1, count + 1)]


def find_subnet(
    family: str,
    speedup: float,
    proportion: float,
    *,
    base: dict[str, Any] | None = None,
    budget: SearchBudget = SearchBudget(),
    device: str = "cpu",
    use_cache: bool = True,
    search: bool = True,
) -> dict[str, Any]:
    """Search the width scale whose subnet runs `speedup` times faster than the full model; returns a result dict
    with the configuration (`model`, `kwargs`), `speedup_measured`, throughputs, the layout's actual MHSA
    proportion (`mhsa_proportion_actual`: whole layers) and `met` (within 5% of the target).

    `budget.steps` bisection steps on the width scale, then the subnets of the two nearest rounded widths on either
    side are timed together with `2 x rounds` rounds (six and `4 x rounds` if that misses the target, then the
    FFN expansion steps of `finer_ffn` if it still misses); the closest to the target is re-timed for the
    figure. With `search=False` the answer must come from the cache (a training job of a sweep never times: timings of
    processes sharing a machine would disturb each other). The cache (`budget.cache`) is not read or written with
    `use_cache=False`. `base`: the full model's constructor arguments (img_size among them)."""
    batch_size, seconds, rounds, steps = budget.batch_size, budget.seconds, budget.rounds, budget.steps
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    if not 0.0 <= proportion <= 1.0:
        raise UserError(f"MHSA proportion must be within [0, 1], got {proportion}")
    if speedup < 1.0:
        raise UserError(f"speed-up must be at least 1 (a subnet is faster than the full model), got {speedup}")
    base = dict(base or {})
    timing = [SEARCH_VERSION, seconds, rounds, steps]
    key = json.dumps(
        dict(
            family=family,
            speedup=speedup,
            proportion=proportion,
            base=base,
            batch=batch_size,
            threads=torch.get_num_threads(),
            device=device,
            search=timing,
        ),
        sort_keys=True,
    )
    cache = (Path(budget.cache) if budget.cache else default_cache()) if use_cache else None
    cached = read_cache(cache)
    if key in cached:
        return cached[key]
    if not search:
        raise UserError(
            f"no cached {family} subnet for {speedup}x at MHSA proportion {proportion} in {cache}: search the subnets "
            "first, once, on the machine that times them (--subnets-only), and share that cache"
        )

    def timed(candidates, n_rounds):
        return measure_speedups(family, candidates, base, n_rounds, seconds, batch_size, device)

    low, high = 0.2, 1.6  # width scales; throughput falls (roughly) as the scale grows
    for _ in range(steps):
        scale = (low * high) ** 0.5
        ((ratio, _, _),) = timed([subnet_kwargs(family, proportion, scale, base)], rounds)
        if ratio < speedup:
            high = scale
        else:
            low = scale

    def closest(candidates: list[dict], n_rounds: int) -> tuple[dict, tuple[float, float, float]]:
        """The candidate closest to the target, re-timed on its own (this is the figure reported)."""
        measured = timed(candidates, n_rounds)
        kwargs = min(zip(candidates, measured), key=lambda pair: abs(pair[1][0] / speedup - 1))[0]
        return kwargs, timed([kwargs], n_rounds)[0]

    def missed(ratio: float) -> bool:
        return abs(ratio / speedup - 1) > TOLERANCE

    scale = (low * high) ** 0.5
    kwargs, (ratio, sub_tp, full_tp) = closest(neighbours(family, proportion, scale, base, 2), 2 * rounds)
    if missed(ratio):
        kwargs, (ratio, sub_tp, full_tp) = closest(neighbours(family, proportion, scale, base, 6), 4 * rounds)
    if missed(ratio) and "F" in format_layout(kwargs["layout"]):
        kwargs, (ratio, sub_tp, full_tp) = closest([kwargs, *finer_ffn(kwargs, ratio < speedup)], 4 * rounds)
    result = dict(
        model=family,
        kwargs=kwargs,
        speedup_target=speedup,
        speedup_measured=round(ratio, 3),
        mhsa_proportion=proportion,
        mhsa_proportion_actual=round(mhsa_proportion(kwargs["layout"]), 4),
        throughput=round(sub_tp, 1),
        full_throughput=round(full_tp, 1),
        met=not missed(ratio),
    )
    write_cache(cache, {**read_cache(cache), key: result})  # read again: another process may have added some
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
    atomic_write_text(path, json.dumps(content, indent=1))


def save_subnet(result: dict[str, Any], path: Path) -> Path:
    """The subnet as a model YAML (`ModelSpec.to_yaml`: the model part of a training config)."""
    comment = (
        f"{result['model']} subnet: {result['speedup_target']}x target, measured "
        f"{result['speedup_measured']}x, MHSA proportion {result['mhsa_proportion']}"
    )
    return ModelSpec(result["model"], result["kwargs"]).to_yaml(path, comment)


HELP = "a throughput-matched DeiT/Swin subnet with a given MHSA proportion (Fig. 3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Keep the full model's number of layers, make a share --mhsa of them attention "
        "layers (spread evenly), and search the width until the subnet runs --speedup "
        "times faster than the full model on this device (interleaved timing). Writes "
        "the configuration as YAML; results are cached."
    )
    parser.add_argument("--family", required=True, choices=FAMILIES, help="the full model to shrink")
    parser.add_argument("--speedup", type=float, required=True, help="target speed-up over the full model, e.g. 1.25")
    parser.add_argument("--mhsa", type=float, required=True, help="share of attention layers, 0 to 1")
    parser.add_argument("--img-size", type=int, help="input size (default 224)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time the models")
    parser.add_argument("--out", help="YAML to write (default runs/subnets/<family>_<speedup>x_mhsa<p>.yaml)")
    parser.add_argument(
        "--cache", type=Path, help="timing cache (default $XDG_CACHE_HOME/efficientvit-lab/subnets.json)"
    )
    parser.add_argument("--no-cache", action="store_true", help="measure again even if the cache has this call")


def run(args: argparse.Namespace) -> None:
    result = find_subnet(
        args.family,
        args.speedup,
        args.mhsa,
        base={"img_size": args.img_size} if args.img_size else {},
        budget=SearchBudget(cache=args.cache and str(args.cache)),
        device=resolve_device(args.device).type,
        use_cache=not args.no_cache,
    )
    out = args.out or f"runs/subnets/{args.family}_{args.speedup}x_mhsa{args.mhsa}.yaml"
    path = save_subnet(result, out)
    print(f"{args.family} subnet for {args.speedup}x, MHSA proportion {args.mhsa}:")
    for key, value in result["kwargs"].items():
        print(f"  {key}: {value}")
    print(
        f"achieved speed-up {result['speedup_measured']}x ({result['throughput']} vs "
        f"{result['full_throughput']} img/s, batch 16, {args.device})"
    )
    if not result["met"]:
        print(
            f"the target {args.speedup}x cannot be met within 5% at this MHSA proportion; "
            "this is the nearest configuration found"
        )
    print(f"configuration written to {path}")
