"""Typed configurations: a dataclass whose fields carry their help text, and the one way to turn such a class into
command-line flags and back. The training recipe (`TrainConfig`) and every analysis (`analysis/*.py`) are
configured this way, so a script's flags, a pipeline's call and a test's call are the same object.

    @dataclass
    class ProfileConfig:
        models: list[str] = knob(["deit_tiny"], "registered model names")
        batch: int = knob(16, "images per forward pass")

    config = parse_config(ProfileConfig, argv, "what the script does")   # --models ... --batch ...
    config = config_from_dict(ProfileConfig, {"batch": 32}, "fig2")    # from YAML: the same types, the same errors

`config_from_dict` is the one coercion for values that come as YAML (training configs, `--set key=value`, the
pipeline's presets): unknown keys are named with the nearest valid one, wrong types in one sentence.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from .errors import UserError

REQUIRED = dataclasses.MISSING


def knob(default: Any = REQUIRED, help: str = "", **flag: Any) -> Any:
    """A config field with its help; `flag` passes argparse options (choices, metavar, type) through."""
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
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


def unknown_key(key: str, valid: list[str], where: str) -> UserError:
    """`key` is not one of `valid`: one sentence naming the nearest valid key."""
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` (as YAML or a flag gives it) as the type `hint` names, or a UserError naming `where`. YAML reads
    1e-3 as text, so numbers may come as strings; a nested dataclass comes as a mapping."""
    hint, optional = unwrap_optional(hint)
    if value is None:
        if optional or hint is Any:
            return None
        raise UserError(f"{where} needs a value")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. `bool | str`: the first member the value fits
        for member in args:
            try:
                return coerce(value, member, where)
            except UserError:
                pass
    try:
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            return config_from_dict(hint, value, where)
        if hint is Any:
            return value
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint in (str, Path) and isinstance(value, (str, Path)):
            return hint(value)
        if (hint is list or origin is list) and isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if (hint is dict or origin is dict) and isinstance(value, dict):
            item = args[1] if args else Any
            return {k: coerce(v, item, f"{where}: {k}") for k, v in value.items()}
    except UserError:
        raise  # a nested value's own sentence
    except (TypeError, ValueError):
        pass
    raise UserError(f"{where} must be {_type_name(hint)}{' or null' if optional else ''}, got {value!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(member) for member in typing.get_args(hint))
    if typing.get_origin(hint) is list or hint is list:
        (item,) = typing.get_args(hint) or (float,)
        return f"a list of {getattr(item, '__name__', str(item))} values"
    if dataclasses.is_dataclass(hint):
        return "a mapping of keys to values"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        Path: "a path",
        dict: "a mapping",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def config_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """An instance of the dataclass `cls` from plain values (YAML): every key checked against the fields, every
    value coerced to its field's type; a missing required field, an unknown key or a wrong type is a UserError."""
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise unknown_key(key, list(fields), where)
    missing = [name for name, f in fields.items() if f.init and field_default(f) is REQUIRED and name not in values]
    if missing:
        raise UserError(f"{where} needs {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: coerce(value, hints[key], f"{where}: {key}") for key, value in values.items()})
