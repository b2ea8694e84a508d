"""Command-line flags derived from a typed config: the types, defaults, required fields and help come from the
dataclass, and a config built in code equals the one parsed from the same flags."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis import head_similarity
from efficientvit.config import knob, parse_config


@dataclass
class Example:
    data: str = knob(help="where the data is")
    images: int = knob(100, "how many")
    ratio: float | None = knob(None, "a budget")
    models: list[str] = knob(["a", "b"], "names")
    extra: list[str] = knob([], "more names")
    fast: bool = knob(False, "go fast")
    tidy: bool = knob(True, "clean up")
    out: Path = knob(Path("results"), "folder")
    kind: str = knob("x", "one of x, y", choices=("x", "y"))


def test_flags_come_typed_from_the_dataclass():
    config = parse_config(
        Example,
        [
            "--data",
            "d",
            "--images",
            "7",
            "--ratio",
            "0.5",
            "--models",
            "m",
            "--fast",
            "--no-tidy",
            "--out",
            "o",
            "--kind",
            "y",
        ],
        "",
    )
    assert config == Example("d", 7, 0.5, ["m"], [], True, False, Path("o"), "y")
    assert parse_config(Example, ["--data", "d"], "") == Example("d")


@pytest.mark.parametrize("argv", [[], ["--data", "d", "--images", "many"], ["--data", "d", "--kind", "z"]])
def test_a_missing_or_bad_flag_is_refused(argv):
    with pytest.raises(SystemExit):
        parse_config(Example, argv, "")


def test_an_analysis_script_takes_its_config_from_flags(capsys):
    parsed = head_similarity.parse_args(["--data", "fashion-mnist", "--model", "deit_tiny", "--images", "10"])
    assert parsed == head_similarity.SimilarityConfig(data="fashion-mnist", model="deit_tiny", images=10)
    with pytest.raises(SystemExit):
        head_similarity.parse_args(["--help"])
    assert "--model-config" in capsys.readouterr().out
