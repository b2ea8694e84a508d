"""Typed configurations: a dataclass whose fields carry their help text, and the one way to turn such a class into
command-line flags and back. The training recipe (`TrainConfig`) and every analysis (`analysis/*.py`) are
configured this way, so a script's flags, a pipeline's call and a test's call are the same object.

    @dataclass
    class ProfileConfig:
        models: list[str] = knob(["deit_tiny"], "registered model names")
        batch: int = knob(16, "images per forward pass")

    config = parse_config(ProfileConfig, argv, "what the script does")   # --models ... --batch ...
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

REQUIRED = dataclasses.MISSING


def knob(default: Any = REQUIRED, help: str = "", **flag: Any) -> Any:
    """A config field with its help; `flag` passes argparse options (choices, metavar, type) through."""
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None` and Optional[X]; (hint, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0], True
    return hint, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """One `--flag-name` per field of the dataclass `cls`, typed from its annotation, defaults shown in --help."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, _ = unwrap_optional(hints[field.name])
        options = dict(field.metadata.get("flag", {}))
        default = field_default(field)
        required = default is dataclasses.MISSING
        shown = "" if required or default in (None, False, [], "") else f" ({_show(default)})"
        options["help"] = field.metadata.get("help", "") + shown
        if hint is bool:
            options.setdefault("action", argparse.BooleanOptionalAction if default else "store_true")
        elif typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            options.setdefault("nargs", "*" if default == [] else "+")
            options.setdefault("type", item)
        elif hint in (int, float, str, Path):
            options.setdefault("type", hint)
        if required:
            options["required"] = True
        else:
            options["default"] = default
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, **options)
    return parser


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def parse_config(cls: type, argv: list[str] | None, description: str) -> Any:
    parser = argparse.ArgumentParser(description=description)
    return config_from_args(cls, add_config_arguments(parser, cls).parse_args(argv))


def config_arguments(config: Any) -> dict[str, Any]:
    """The config as plain values, for a JSON sidecar."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
