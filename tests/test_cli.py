import subprocess
import sys

from efficientvit.cli import main


def test_list_prints_every_variant(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"efficientvit_m{i}" in out for i in range(6))


def test_info_prints_parameters_flops_and_stages(capsys):
    assert main(["info", "efficientvit_m4"]) == 0
    out = capsys.readouterr().out
    assert "8,804,228" in out and "299.4 M BN fused" in out
    assert "4x4" in out  # stage 3 resolution and window at 224


def test_bad_input_is_one_sentence_and_exit_2():
    for args in (["info", "efficientvit_m9"], ["info", "efficientvit_m0", "--img-size", "32"]):
        proc = subprocess.run([sys.executable, "-m", "efficientvit.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr
