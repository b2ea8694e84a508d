"""From Taylor pruning ratios to a new EfficientViT configuration (the paper's parameter reallocation, Sec. 3.3).

The paper reads Fig. 5 as: Q/K can be narrow, V should stay about as wide as the input, FFN needs less than 4x;
hence EfficientViT's QK dim 16, V width = input width, FFN ratio 2. This script does that reading on a pruning
run (results/taylor_pruning/<run>.csv):

  key_dim    the median Q/K width kept per head, rounded to a multiple of 4 (at least 4)
  v_ratio    the median kept V width over the block's input width, rounded to a quarter (0.25 .. 2)
  mlp_ratio  the median kept FFN width over the input width, rounded to a half (0.5 .. 4)

Widths, depths and heads come from a base EfficientViT (--base, default efficientvit_m0); with --target-flops
the stage widths are scaled (multiples of 8 x heads) until the fused model has about that many FLOPs.
The configuration is written as YAML (`model:` + `model_kwargs:`) that `create_model` builds and that works as a
training config fragment; params, FLOPs and measured CPU throughput are printed beside M0..M5.
Example: python analysis/design_variant.py --pruning results/taylor_pruning/swin_tiny_ratio_0.4.csv
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

import efficientvit
from efficientvit.bench.measure import interleaved_throughput
from efficientvit.config import knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.flops import count_flops, count_params
from efficientvit.models import ModelSpec
from efficientvit.models.efficientvit import CONFIGS

REQUIRED = ("in_width", "heads", "qk_kept", "v_ratio", "ffn_ratio")


def clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def reallocation(pruning: pd.DataFrame) -> dict[str, float]:
    """key_dim, v_ratio and mlp_ratio read off the kept widths of a pruning run."""
    missing = [c for c in REQUIRED if c not in pruning]
    if missing:
        raise UserError(f"the pruning CSV lacks columns {', '.join(missing)}: is it from analysis/taylor_pruning.py?")
    blocks = pruning.dropna(subset=["qk_kept"])
    if blocks.empty:
        raise UserError("the pruning CSV has no attention blocks")
    qk_per_head = statistics.median(blocks["qk_kept"] / blocks["heads"])
    return {
        "key_dim": int(max(4, round(qk_per_head / 4) * 4)),
        "v_ratio": clip(round(statistics.median(blocks["v_ratio"]) * 4) / 4, 0.25, 2.0),
        "mlp_ratio": clip(round(statistics.median(pruning["ffn_ratio"].dropna()) * 2) / 2, 0.5, 4.0),
    }


def scaled_widths(base: dict, scale: float) -> list[int]:
    return [max(8 * h, int(round(w * scale / (8 * h))) * 8 * h) for w, h in zip(base["embed_dim"], base["num_heads"])]


def design(
    pruning: pd.DataFrame,
    base_name: str = "efficientvit_m0",
    target_flops: float | None = None,
    img_size: int = 224,
    patch_size: int = 16,
) -> dict:
    """Constructor arguments of the designed variant (patch_size: the stem's stride, 4 or 8 for small images)."""
    if base_name not in CONFIGS:
        raise UserError(f"--base must be one of {', '.join(CONFIGS)}, got {base_name!r}")
    base = CONFIGS[base_name]
    kwargs = {
        "embed_dim": list(base["embed_dim"]),
        "depth": list(base["depth"]),
        "num_heads": list(base["num_heads"]),
        "q_kernels": list(base["q_kernels"]),
        **reallocation(pruning),
        **({"patch_size": patch_size} if patch_size != 16 else {}),
    }
    if target_flops:
        low, high = 0.25, 4.0
        for _ in range(8):  # FLOPs grow with the width scale: bisect it
            scale = (low * high) ** 0.5
            trial = {**kwargs, "embed_dim": scaled_widths(base, scale), "img_size": img_size}
            flops = count_flops(efficientvit.fuse(efficientvit.create_model(base_name, **trial)))
            low, high = (scale, high) if flops < target_flops else (low, scale)
        kwargs["embed_dim"] = scaled_widths(base, (low * high) ** 0.5)
    return {"model": base_name, "model_kwargs": kwargs}


def compare(variant: dict, name: str, img_size: int, seconds: float, others: list[str]) -> pd.DataFrame:
    """Params, fused FLOPs and interleaved CPU throughput (batch 16) of the variant beside `others` (M0..M5),
    all with the variant's stem."""
    stem = {k: v for k, v in variant["model_kwargs"].items() if k == "patch_size"}
    models = {n: efficientvit.create_model(n, img_size=img_size, **stem) for n in others}
    models[name] = efficientvit.create_model(variant["model"], img_size=img_size, **variant["model_kwargs"])
    fused = {n: efficientvit.fuse(m) for n, m in models.items()}
    runs = interleaved_throughput(list(fused.values()), rounds=3, seconds=seconds, batch_size=16)
    return pd.DataFrame(
        [
            dict(
                model=n,
                params=count_params(models[n]),
                mflops_fused=round(count_flops(f) / 1e6, 1),
                cpu_img_s=round(statistics.median(r), 1),
            )
            for (n, f), r in zip(fused.items(), runs)
        ]
    )


DESCRIPTION = "Turn Taylor pruning ratios into an EfficientViT configuration and compare it with M0..M5."


@dataclass
class VariantConfig:
    pruning: str = knob(help="CSV written by analysis/taylor_pruning.py")
    base: str = knob("efficientvit_m0", "EfficientViT whose widths/depths/heads to start from")
    target_flops: float | None = knob(None, "scale the widths to about this many fused FLOPs")
    name: str | None = knob(None, "variant name (default <pruning run>_variant)")
    out_dir: Path = knob(Path("experiments/variants"), "where the YAML goes")
    img_size: int = knob(224, "input size of the comparison")
    patch_size: int = knob(16, "stem stride of the variant (16: the paper's; 4 for 28-32 px images, Fashion-MNIST)")
    seconds: float = knob(0.5, "timing budget per model and round")
    compare: list[str] = knob(list(CONFIGS), "models to show beside the variant", metavar="MODEL")


def run(config: VariantConfig) -> ModelSpec:
    """Design the variant, write it as a model YAML, print it beside M0..M5; returns its spec."""
    path = Path(config.pruning)
    if not path.exists():
        raise UserError(f"pruning CSV {path} does not exist: run analysis/taylor_pruning.py first")
    variant = design(pd.read_csv(path), config.base, config.target_flops, config.img_size, config.patch_size)
    name = config.name or f"{path.stem}_variant"
    table = compare(variant, name, config.img_size, config.seconds, config.compare)
    spec = ModelSpec(variant["model"], variant["model_kwargs"])
    out = spec.to_yaml(
        config.out_dir / f"{name}.yaml",
        f"Designed by analysis/design_variant.py from {path} (Taylor pruning ratios).\n"
        "Build: create_model(model, **model_kwargs); train: merge into a training config.",
    )
    print(yaml.safe_dump(variant["model_kwargs"], sort_keys=False, default_flow_style=None).strip())
    print(f"\n{table.to_string(index=False)}\n(CPU, batch 16, {torch.get_num_threads()} threads, interleaved medians)")
    print(f"written to {out}")
    return spec


def parse_args(argv: list[str] | None = None) -> VariantConfig:
    return parse_config(VariantConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("design_variant", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
