"""From Taylor pruning ratios to a new EfficientViT configuration (the paper's parameter reallocation, Sec. 3.3).

The paper reads Fig. 5 as: Q/K can be narrow, V should stay about as wide as the input, FFN needs less than 4x;
hence EfficientViT's QK dim 16, V width = input width, FFN ratio 2. This script does that reading on a pruning
run (results/taylor_pruning/<run>.csv):

  key_dim    the median Q/K width kept per head, rounded to a multiple of 4 (at least 4)
  v_ratio    the median kept V width over the block's input width, rounded to a quarter (0.25 .. 2)
  mlp_ratio  the median kept FFN width (per FFN layer) over the input width, rounded to a half (0.5 .. 4)

A DeiT or Swin pruning gives one value of each for the whole model (the paper's step). An EfficientViT pruning
(the next step: prune the model the paper designed) gives them per stage, the medians over each stage's blocks
(pruning_efficientvit.stage_settings), and the depth the pruning suggests: a block that kept less than
--min-kept of its prunable channels is dropped (at least one block per stage stays). Pruning never cuts the
residual width, so widths and heads are the base's.

Widths, depths and heads come from a base EfficientViT (--base: by default the pruned EfficientViT, else
efficientvit_m0); with --target-flops the stage widths are scaled (multiples of 8 x heads) until the fused model
has about that many FLOPs. The configuration is written as YAML (`model:` + `model_kwargs:`) that `create_model`
builds and that works as a training config fragment; params, FLOPs and measured CPU throughput are printed beside
M0..M5. `design_from_checkpoint` prunes a trained EfficientViT and designs its variant in one call (the pipeline's).
Example: python analysis/design_variant.py --pruning results/taylor_pruning/swin_tiny_ratio_0.4.csv
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

import efficientvit
from analysis import pruning_efficientvit, taylor_pruning
from efficientvit.bench.measure import interleaved_throughput
from efficientvit.checkpoint import read_checkpoint
from efficientvit.config import config_arguments, knob, parse_config
from efficientvit.errors import UserError, exit_status
from efficientvit.flops import count_flops, count_params
from efficientvit.models import ModelSpec, model_family
from efficientvit.models.efficientvit import CONFIGS
from efficientvit.results import write_results

REQUIRED = ("in_width", "heads", "qk_kept", "v_ratio", "ffn_ratio")


def clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def rounded(key_dim: float, v_ratio: float, mlp_ratio: float) -> dict[str, float]:
    """Kept widths as settings: key_dim to a multiple of 4 (at least 4), v_ratio to a quarter, mlp_ratio to a half."""
    return {
        "key_dim": int(max(4, round(key_dim / 4) * 4)),
        "v_ratio": clip(round(v_ratio * 4) / 4, 0.25, 2.0),
        "mlp_ratio": clip(round(mlp_ratio * 2) / 2, 0.5, 4.0),
    }


def attention_blocks(pruning: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in pruning]
    if missing:
        raise UserError(f"the pruning CSV lacks columns {', '.join(missing)}: is it from analysis/taylor_pruning.py?")
    blocks = pruning.dropna(subset=["qk_kept"])
    if blocks.empty:
        raise UserError("the pruning CSV has no attention blocks")
    return blocks


def reallocation(pruning: pd.DataFrame) -> dict[str, float]:
    """key_dim, v_ratio and mlp_ratio read off the kept widths of a pruning run."""
    blocks = attention_blocks(pruning)
    return rounded(
        statistics.median(blocks["qk_kept"] / blocks["heads"]),
        statistics.median(blocks["v_ratio"]),
        statistics.median(pruning["ffn_ratio"].dropna()),
    )


def is_efficientvit_pruning(pruning: pd.DataFrame) -> bool:
    return "model" in pruning and model_family(str(pruning["model"].iloc[0])) == "efficientvit"


def per_stage_settings(pruning: pd.DataFrame, stages: int, min_kept: float = 0.25) -> dict[str, list]:
    """Depth, key_dim, v_ratio and mlp_ratio per stage, read off an EfficientViT pruning of `stages` stages."""
    found = pruning_efficientvit.stage_settings(attention_blocks(pruning), min_kept)
    if len(found) != stages:
        raise UserError(f"the pruning has {len(found)} stages and the base EfficientViT {stages}: give its --base")
    settings = [rounded(s.key_dim, s.v_ratio, s.mlp_ratio) for s in found.itertuples()]
    return {"depth": [int(d) for d in found["depth"]]} | {k: [s[k] for s in settings] for k in settings[0]}


def scaled_widths(base: dict, scale: float) -> list[int]:
    return [max(8 * h, int(round(w * scale / (8 * h))) * 8 * h) for w, h in zip(base["embed_dim"], base["num_heads"])]


# what the variant does not take from the pruned model's arguments: its pruned widths, what a training sets (classes,
# input size), what the design decides (key_dim, v_ratio, mlp_ratio; patch_size is an argument of its own)
NOT_CARRIED = ("block_dims", "num_classes", "img_size", "key_dim", "v_ratio", "mlp_ratio", "patch_size")


def design(
    pruning: pd.DataFrame,
    base_name: str = "efficientvit_m0",
    *,
    target_flops: float | None = None,
    img_size: int = 224,
    patch_size: int = 16,
    min_kept: float = 0.25,
    base_kwargs: dict | None = None,
) -> dict:
    """Constructor arguments of the designed variant (patch_size: the stem's stride, 4 or 8 for small images):
    one key_dim, v_ratio and mlp_ratio from a DeiT or Swin pruning, per-stage lists and depths from an EfficientViT
    one (`min_kept`: see the module docstring). `base_kwargs`: the pruned EfficientViT's own arguments (widths,
    heads, knobs), over base_name's Table 1 configuration."""
    if base_name not in CONFIGS:
        raise UserError(f"--base must be one of {', '.join(CONFIGS)}, got {base_name!r}")
    carried = {k: v for k, v in (base_kwargs or {}).items() if k not in NOT_CARRIED}
    base = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in {**CONFIGS[base_name], **carried}.items()}
    settings = (
        per_stage_settings(pruning, len(base["depth"]), min_kept)
        if is_efficientvit_pruning(pruning)
        else reallocation(pruning)
    )
    kwargs = {**base, **settings, **({"patch_size": patch_size} if patch_size != 16 else {})}
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
    base: str | None = knob(
        None, "EfficientViT whose widths/depths/heads to start from (default: the pruned one, else efficientvit_m0)"
    )
    target_flops: float | None = knob(None, "scale the widths to about this many fused FLOPs")
    name: str | None = knob(None, "variant name (default <pruning run>_variant)")
    out_dir: Path = knob(Path("experiments/variants"), "where the YAML goes")
    img_size: int = knob(224, "input size of the comparison")
    patch_size: int | None = knob(
        None,
        "stem stride of the variant (16: the paper's; 4 for 28-32 px images, Fashion-MNIST; default: the pruned "
        "EfficientViT's, else 16)",
    )
    min_kept: float = knob(0.25, "EfficientViT prunings: drop blocks that kept less than this share of their channels")
    seconds: float = knob(0.5, "timing budget per model and round")
    compare: list[str] = knob(list(CONFIGS), "models to show beside the variant", metavar="MODEL")


def pruned_spec(pruning: Path) -> ModelSpec | None:
    """The pruned model's spec, from the checkpoint the pruning's sidecar names (None when it is gone)."""
    sidecar = pruning.with_suffix(".json")
    checkpoint = json.loads(sidecar.read_text()).get("checkpoint") if sidecar.exists() else None
    if not checkpoint or not Path(checkpoint).exists():
        return None
    return ModelSpec.from_dict(read_checkpoint(checkpoint)["model_config"])


def run(config: VariantConfig) -> ModelSpec:
    """Design the variant, write it as a model YAML and its comparison with M0..M5 beside it (<name>_compare.csv),
    print both; returns its spec."""
    path = Path(config.pruning)
    if not path.exists():
        raise UserError(f"pruning CSV {path} does not exist: run analysis/taylor_pruning.py first")
    pruning = pd.read_csv(path)
    own = is_efficientvit_pruning(pruning)
    base = config.base or (str(pruning["model"].iloc[0]) if own else "efficientvit_m0")
    pruned = pruned_spec(path) if own else None
    patch_size = config.patch_size or (pruned.kwargs.get("patch_size", 16) if pruned else 16)
    base_kwargs = pruned.kwargs if pruned and pruned.name == base else None  # an explicit other --base: its own
    variant = design(
        pruning,
        base,
        target_flops=config.target_flops,
        img_size=config.img_size,
        patch_size=patch_size,
        min_kept=config.min_kept,
        base_kwargs=base_kwargs,
    )
    name = config.name or f"{path.stem}_variant"
    table = compare(variant, name, config.img_size, config.seconds, config.compare)
    spec = ModelSpec(variant["model"], variant["model_kwargs"])
    out = spec.to_yaml(
        config.out_dir / f"{name}.yaml",
        f"Designed by analysis/design_variant.py from {path} (Taylor pruning ratios).\n"
        "Build: create_model(model, **model_kwargs); train: merge into a training config.",
    )
    threads = torch.get_num_threads()
    write_results(table, config.out_dir / f"{name}_compare.csv", {**config_arguments(config), "threads": threads})
    print(yaml.safe_dump(variant["model_kwargs"], sort_keys=False, default_flow_style=None).strip())
    print(f"\n{table.to_string(index=False)}\n(CPU, batch 16, {threads} threads, interleaved medians)")
    print(f"written to {out}")
    return spec


def design_from_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    ratio: float,
    out_dir: Path,
    *,
    runs_dir: Path = Path("runs/pruned"),
    name: str | None = None,
    pruning: dict | None = None,
    variant: dict | None = None,
) -> Path:
    """Prune a trained EfficientViT checkpoint (analysis/taylor_pruning.py: Taylor scores, per-head ranking,
    iterative; `pruning` sets other PruneConfig keys) by `ratio` of its prunable channels on `data`, design the next
    variant from it and return the variant's model YAML. Writes out_dir/taylor_pruning/<name>.csv (+ .json, the
    per-stage figure), runs_dir/<name>.pth (the pruned model) and out_dir/variants/<name>_variant.yaml; `variant`
    sets VariantConfig keys (default: the variant timed beside the base at the checkpoint's input size). Files that
    exist are kept (a rerun resumes). name: default <checkpoint's folder>_ratio_<ratio>."""
    name = name or f"{Path(checkpoint).parent.name or Path(checkpoint).stem}_ratio_{ratio:g}"
    table = out_dir / "taylor_pruning" / f"{name}.csv"
    if not table.exists():
        settings = {**(pruning or {}), "data": str(data), "checkpoint": str(checkpoint), "ratio": ratio}
        prune_config = taylor_pruning.PruneConfig(
            **settings, run=name, out_dir=table.parent, save=Path(runs_dir) / f"{name}.pth"
        )
        taylor_pruning.run(prune_config)
    path = out_dir / "variants" / f"{name}_variant.yaml"
    if not path.exists():
        spec = ModelSpec.from_dict(read_checkpoint(checkpoint)["model_config"])
        img_size = spec.build().img_size[0]
        settings = {"img_size": img_size, "compare": [spec.name], **(variant or {})}
        run(VariantConfig(**settings, pruning=str(table), out_dir=path.parent, name=path.stem))
    return path


def parse_args(argv: list[str] | None = None) -> VariantConfig:
    return parse_config(VariantConfig, argv, DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    return exit_status("design_variant", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
