import torch

from efficientvit import runtime
from efficientvit.models import create_model
from efficientvit.runtime import Speed, choose_speed, rate, time_calls
from efficientvit.train_config import make_config


def test_the_timing_loop_warms_up_then_times_at_least_one_call():
    calls = []
    times, elapsed = time_calls(lambda: calls.append(1), seconds=0.0, warmup=2)
    assert len(calls) == 3 and len(times) == 1 and 0 <= times[0] <= elapsed
    assert rate(lambda: None, 10, 0.01) > 10 / 0.01  # ten units per call, many calls in 10 ms


def test_precision_auto_picks_bf16_only_where_the_cpu_has_it_and_fp32_is_the_recipe(monkeypatch):
    cpu, batch = torch.device("cpu"), (2, 3, 32, 32)
    deit, m0 = create_model("deit_tiny", img_size=32, patch_size=4), create_model("efficientvit_m0", img_size=64)
    auto = make_config({"precision": "auto"})
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert choose_speed(auto, deit, cpu, batch, 10) == Speed(bf16=True, fused_optimizer=True)
    assert choose_speed(auto, m0, cpu, batch, 10) == Speed(bf16=True, channels_last=True, fused_optimizer=True)
    assert choose_speed(make_config({}), m0, cpu, batch, 10) == Speed(channels_last=True, fused_optimizer=True)
    assert choose_speed(make_config({"precision": "bf16", "fast": False}), m0, cpu, batch, 10) == Speed(bf16=True)
    assert choose_speed(make_config({"fast": False}), m0, cpu, batch, 10) == Speed()
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert choose_speed(auto, deit, cpu, batch, 10_000) == Speed(fused_optimizer=True)
    assert Speed().describe() == "plain fp32 eager"


def test_a_long_run_keeps_bf16_only_if_it_measured_faster(monkeypatch):
    cpu, batch = torch.device("cpu"), (2, 3, 32, 32)
    deit = create_model("deit_tiny", img_size=32, patch_size=4, embed_dim=24, layout="AF")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    for measured in (True, False):
        monkeypatch.setattr(runtime, "bf16_pays_off", lambda *args, answer=measured: answer)
        config = make_config({"precision": "auto"})
        assert choose_speed(config, deit, cpu, batch, runtime.TUNE_MIN_STEPS).bf16 is measured
    monkeypatch.undo()
    state = torch.get_rng_state()
    assert runtime.bf16_pays_off(deit, batch, channels_last=False) in (True, False)
    assert torch.equal(torch.get_rng_state(), state)  # the timing left the run's random stream alone
