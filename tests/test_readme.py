"""Every command the README shows parses as written: the subcommand or script exists and takes those flags (the
commands are parsed, not run; placeholders such as /data/imagenet stay placeholders)."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from efficientvit import cli
from efficientvit import train as train_module

README = Path(__file__).parents[1] / "README.md"
COMMAND = re.compile(r"(?:^|`)((?:\.venv/bin/)?(?:python|efficientvit|torchrun) [^`#\n]+)", re.M)


def readme_commands() -> list[str]:
    text = README.read_text()
    found = [c.strip() for c in COMMAND.findall(text)]
    return [c for c in dict.fromkeys(found) if not c.startswith(("python -m pytest",))]


def parse(command: str) -> argparse.Namespace:
    words = [w for w in shlex.split(command.replace("[", "").replace("]", "")) if w]
    words[0] = words[0].removeprefix(".venv/bin/")
    if words[0] == "efficientvit":
        return cli.build_parser().parse_args(words[1:])
    if words[0] == "torchrun":
        module = words[words.index("-m") + 1]
        assert module == "efficientvit.train", command
        return train_module.add_arguments(argparse.ArgumentParser()).parse_args(words[words.index("-m") + 2 :])
    script = words[1]
    assert words[0] == "python" and script.endswith(".py") and (README.parent / script).is_file(), command
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    return module.parse_args(words[2:])


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert len(commands) >= 15 and any(c.startswith("python analysis/reproduce.py") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses_as_written(command):
    parse(command)


def test_a_wrong_flag_is_caught():
    with pytest.raises(SystemExit):
        parse("efficientvit info efficientvit_m4 --no-such-flag")
