"""The A/F layout grammar: a model's layers as `A` (attention) and `F` (FFN) layers, the paper's MHSA proportion,
and how the layouts of DeiT (one string) and Swin (one string per stage) are read, written and matched with timm's
transformer blocks."""

from __future__ import annotations

from ..errors import UserError


def parse_layout(layout: str, where: str = "layout") -> str:
    """A layout is a string of layers: `A` (attention) or `F` (FFN), e.g. DeiT-T is "AF" * 12."""
    layout = layout.upper()
    if not layout:
        raise UserError(f"{where} is empty: give at least one layer, A (attention) or F (FFN)")
    if set(layout) - {"A", "F"}:
        raise UserError(f"{where} {layout!r} may only contain A (attention) and F (FFN)")
    return layout


def layer_dims_for(layout: str, layer_dims: list | None, where: str = "layer_dims") -> list:
    """Per-layer widths after pruning: [qk_dim, v_dim] per head for an A layer, the hidden width for an F layer,
    None to keep the design's; checked against the layout."""
    if layer_dims is None:
        return [None] * len(layout)
    if len(layer_dims) != len(layout):
        raise UserError(f"{where} has {len(layer_dims)} entries for {len(layout)} layers ({layout})")
    for kind, dims in zip(layout, layer_dims):
        if dims is not None and (kind == "A") != isinstance(dims, (list, tuple)):
            raise UserError(f"{where}: an A layer takes [qk_dim, v_dim], an F layer one hidden width; got {dims}")
    return list(layer_dims)


def per_stage(values: list, lengths: list[int] | tuple[int, ...]) -> list[list]:
    """`values`, one per block or layer of the whole model (drop-path rates, pruned widths), split into the
    consecutive runs of each stage's length."""
    remaining = iter(values)
    return [[next(remaining) for _ in range(n)] for n in lengths]


def timm_block_to_layer(block: int, part: str) -> tuple[int, str]:
    """timm's transformer block b (norm1, attn, norm2, mlp) is our A layer 2b (norm, attn) and F layer 2b+1
    (norm, mlp)."""
    second = part in ("norm2", "mlp")
    return 2 * block + second, "norm" if part.startswith("norm") else part


def layer_to_timm_block(layer: int, part: str) -> tuple[int, str]:
    block, second = divmod(layer, 2)
    return block, {"norm": "norm2" if second else "norm1"}.get(part, part)


def mhsa_proportion(layouts: str | list[str]) -> float:
    """Share of layers that are attention layers (the x-axis of the paper's Fig. 3)."""
    text = "".join(layouts) if not isinstance(layouts, str) else layouts
    return text.count("A") / len(text)


def spread_layout(n_layers: int, n_attention: int) -> str:
    """A layout of `n_layers` with `n_attention` A layers spread evenly through it (Fig. 3's subnets)."""
    if not 0 <= n_attention <= n_layers:
        raise UserError(f"cannot place {n_attention} attention layers among {n_layers}")
    slots = {int((i + 0.5) * n_layers / n_attention) for i in range(n_attention)} if n_attention else set()
    return "".join("A" if i in slots else "F" for i in range(n_layers))


def parse_stage_layouts(layout: str | list[str] | tuple[str, ...]) -> list[str]:
    """Per-stage layouts as a list, or one string with stages separated by commas ("AFAF,AFAF,...")."""
    stages = layout.split(",") if isinstance(layout, str) else list(layout)
    return [parse_layout(s.strip(), f"layout of stage {i + 1}") for i, s in enumerate(stages)]


def format_layout(layout: str | list[str] | tuple[str, ...]) -> str:
    """One string for tables and logs: DeiT's as it is, Swin's stages joined by commas ("AFAF,AFAF,...")."""
    return layout if isinstance(layout, str) else ",".join(layout)
