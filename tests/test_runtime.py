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


def test_the_fastest_mode_pays_for_its_compilation_only_on_a_long_run():
    eager, compiled = Speed(), Speed(compile=True)
    rates, setup = {eager: 4.0, compiled: 8.0}, {compiled: 60.0}
    assert runtime.fastest(rates, setup, 400) == eager  # 100 s against 60 + 50 s
    assert runtime.fastest(rates, setup, 600) == compiled  # 150 s against 60 + 75 s
    assert runtime.fastest({eager: 4.0, compiled: 3.0}, {}, 10**6) == eager
    bf16 = Speed(bf16=True)
    assert runtime.fastest({eager: 4.0, bf16: 4.1}, {}, 10**6) == eager  # 2.5% faster is within a trial's noise
    assert runtime.fastest({eager: 4.0, bf16: 4.4}, {}, 10**6) == bf16  # 10% is not


def choice(monkeypatch, steps: int, measured: dict[tuple[bool, bool], float]) -> tuple[Speed, list[list[Speed]]]:
    """The mode choose_speed picks for a run of `steps` steps (precision and compile auto) when the trial measures
    `measured` steps/s for each (bf16, compile), compiling in 60 s; and the modes it timed, trial by trial."""
    timed = []

    def trial(model, batch_shape, speeds, device):
        timed.append(speeds)
        rates = {s: measured[s.bf16, s.compile] for s in speeds}
        return rates, {s: 60.0 if s.compile else 0.0 for s in speeds}

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(runtime, "time_training_steps", trial)
    deit = create_model("deit_tiny", img_size=32, patch_size=4, embed_dim=24, layout="AF")
    config = make_config({"precision": "auto", "compile": "auto"})
    return choose_speed(config, deit, torch.device("cpu"), (2, 3, 32, 32), steps), timed


def test_a_short_run_never_compiles_and_keeps_the_faster_precision(monkeypatch):
    # the DeiT proxy's shape of rates: bf16 slower eager, compiled bf16 the fastest
    rates = {(False, False): 4.0, (True, False): 3.5, (False, True): 4.5, (True, True): 9.0}
    speed, timed = choice(monkeypatch, 500, rates)  # about 2 minutes eager
    assert speed == Speed(fused_optimizer=True) and timed == [
        [Speed(fused_optimizer=True), Speed(bf16=True, fused_optimizer=True)]
    ]
    assert choice(monkeypatch, 10, rates) == (Speed(bf16=True, fused_optimizer=True), [])  # too short to time


def test_a_long_run_compiles_where_the_compiled_step_is_measured_faster(monkeypatch):
    rates = {(False, False): 4.0, (True, False): 3.5, (False, True): 4.5, (True, True): 9.0}
    speed, timed = choice(monkeypatch, 10_000, rates)  # about 40 minutes eager
    assert speed == Speed(bf16=True, fused_optimizer=True, compile=True)
    assert [[(s.bf16, s.compile) for s in trial] for trial in timed] == [
        [(False, False), (True, False)],
        [(False, True), (True, True)],
    ]
    slower = {**rates, (False, True): 3.0, (True, True): 3.9}  # compiled, but slower: the compilation is lost
    assert choice(monkeypatch, 10_000, slower)[0] == Speed(fused_optimizer=True)


def test_timing_training_steps_leaves_the_model_and_the_random_stream_alone():
    deit = create_model("deit_tiny", img_size=32, patch_size=4, embed_dim=24, layout="AF")
    weights = {k: v.clone() for k, v in deit.state_dict().items()}
    state = torch.get_rng_state()
    speeds = [Speed(), Speed(bf16=True)]
    steps_per_s, setup = runtime.time_training_steps(deit, (2, 3, 32, 32), speeds, torch.device("cpu"))
    assert list(steps_per_s) == speeds and all(r > 0 for r in steps_per_s.values())
    assert all(s >= 0 for s in setup.values())
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(weights[k], v) for k, v in deit.state_dict().items())
    assert all(p.grad is None for p in deit.parameters())
