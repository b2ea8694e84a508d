import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import memory_profile

TINY = dict(embed_dim=32, num_heads=2, patch_size=8)


def write_config(path: Path, layout: str) -> str:
    path.write_text(yaml.safe_dump({"model": "deit_tiny", "model_kwargs": {**TINY, "layout": layout}}))
    return str(path)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    out = tmp / "run.csv"
    code = memory_profile.main([
        "--models", "efficientvit_m0", "--subnet-config", write_config(tmp / "a.yaml", "AAAA"),
        write_config(tmp / "f.yaml", "FFFF"), "--batch", "2", "--img-size", "64", "--iters", "3", "--out", str(out),
    ])
    assert code == 0
    return out


def test_categories_cover_all_profiled_time(profiled):
    frame = pd.read_csv(profiled)
    assert list(frame.columns) == memory_profile.COLUMNS
    assert set(frame["category"]) <= set(memory_profile.CATEGORIES)
    for _, group in frame.groupby(["model", "layout"]):
        assert group["share"].sum() == pytest.approx(1.0)
    assert set(frame.loc[frame["model"] == "efficientvit_m0", "scope"]) >= {"attention", "ffn", "patch_merging"}


def test_attention_layers_spend_more_on_reshape_and_copy_than_ffn_layers(profiled):
    frame = pd.read_csv(profiled)
    moving = frame[frame["category"].isin(["reshape", "copy"])].groupby("layout")["share"].sum()
    assert moving["AAAA"] > moving["FFFF"]


def test_memory_bound_rows_have_low_arithmetic_intensity(profiled):
    frame = pd.read_csv(profiled)
    sidecar = json.loads(profiled.with_suffix(".json").read_text())
    balance = sidecar["machine_balance"]["balance_flops_per_byte"]
    measured = frame.dropna(subset=["arithmetic_intensity"])
    assert (measured.loc[measured["memory_bound"], "arithmetic_intensity"] < balance).all()
    assert (measured.loc[measured["category"] == "matmul", "arithmetic_intensity"].max()) > 1.0
    assert sidecar["arguments"]["batch"] == 2 and sidecar["environment"]["torch"]


def test_resume_skips_profiled_models(profiled, capsys):
    before = pd.read_csv(profiled)
    assert memory_profile.main(["--models", "efficientvit_m0", "--batch", "2", "--img-size", "64",
                                "--out", str(profiled)]) == 0
    assert pd.read_csv(profiled).equals(before)


@pytest.mark.parametrize("args,message", [
    (["--models", "vit_huge"], "unknown model"),
    (["--show", "shuffles"], "unknown category"),
    (["--layout", "AF", "--models", "efficientvit_m0"], "applies to DeiT and Swin"),
])
def test_bad_input_is_one_sentence(args, message, capsys):
    assert memory_profile.main(args) == 2
    assert message in capsys.readouterr().err


def test_help_runs_as_a_script():
    proc = subprocess.run([sys.executable, "analysis/memory_profile.py", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and "--subnet-config" in proc.stdout
