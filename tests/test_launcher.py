"""The trainings as jobs (analysis/launcher.py) through submitit's local executor: the same code path as on a SLURM
cluster, run as local processes."""

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from analysis import launcher
from analysis.reproduce import main as reproduce_main
from analysis.reproduce import reproduce
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError
from efficientvit.train_config import make_config
from tests.test_reproduce import TINY_DEIT, TRAIN, preset  # noqa: F401  (the micro preset, a fixture)

TIMING = ["train_img_s", "train_minutes", "train_seconds", "throughput", "checkpoint"]  # how fast, not what


@pytest.fixture
def one_thread():
    """Jobs run on `cpus_per_job` threads: the in-process run compared with them runs on as many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def elsewhere(preset_path, tmp_path, name):
    """The preset with its own runs folder (the subnet cache and the data stay shared)."""
    values = yaml.safe_load(preset_path.read_text())
    values["runs"] = str(tmp_path / f"runs_{name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_local_jobs_train_what_the_process_would_and_the_analyses_then_train_nothing(
    preset,  # noqa: F811
    tmp_path,
    one_thread,
    monkeypatch,
):
    monkeypatch.setattr("analysis.reproduce.draw_figures", lambda out: None)  # the tables, not the notebooks
    in_process = reproduce(str(elsewhere(preset, tmp_path, "here")), tmp_path / "here", ["fig4"])
    assert in_process is not None
    jobs_preset = elsewhere(preset, tmp_path, "jobs")
    args = ["--preset", str(jobs_preset), "--out", str(tmp_path / "jobs"), "--only", "fig4"]
    assert reproduce_main([*args, "--launcher", "local", "--cpus-per-job", "1", "--parallelism", "2"]) == 0
    runs = tmp_path / "runs_jobs"
    assert len(list((runs / "jobs").glob("*_log.out"))) == 2  # the two proxies, one job each, side by side
    assert set(json.loads((runs / "jobs" / "jobs.json").read_text())) == {"deit_full", "deit_split"}
    for table in ("proxies/summary.csv", "head_similarity/deit_full_e2_attention_summary.csv"):
        here = pd.read_csv(tmp_path / "here" / table).drop(columns=TIMING, errors="ignore")
        there = pd.read_csv(tmp_path / "jobs" / table).drop(columns=TIMING, errors="ignore")
        pd.testing.assert_frame_equal(here, there, check_exact=True)
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("checkpoint.pth")}
    assert reproduce_main([*args, "--launcher", "local"]) == 0  # all trained: no job, nothing trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def running_task(job, seconds: float = 30.0) -> int:
    """The pid of a local job's task: the local job's process is submitit's controller, the job runs in its child."""
    controller, started = job._process.pid, time.perf_counter()
    while not (children := Path(f"/proc/{controller}/task/{controller}/children").read_text().split()):
        assert time.perf_counter() - started < seconds and not job.done(), "the job's task never started"
        time.sleep(0.02)
    return int(children[0])


def signal_the_task(job) -> None:
    """SIGUSR2 to the job's task, as SLURM signals a job it preempts or that reaches its time limit."""
    os.kill(running_task(job), signal.SIGUSR2)


@pytest.mark.slow
def test_a_job_killed_mid_training_is_requeued_and_resumes_without_training_an_epoch_twice(tmp_path):
    data = make_synthetic(tmp_path / "data", classes=4, train=512, val=16, size=64, seed=0)
    kwargs = {**TINY_DEIT, "embed_dim": 48, "patch_size": 8}
    config = make_config({"model": "deit_tiny", "model_kwargs": kwargs, **TRAIN, "epochs": 5, "data": str(data)})
    config.out = str(tmp_path / "run")
    executor = launcher.executor("local", tmp_path / "jobs", launcher.Launch(cpus_per_job=1))
    job = executor.submit(launcher.TrainingJob(), config, 1, 4)  # to epoch 4 of 5 (`reproduce --until`)
    metrics = tmp_path / "run" / "metrics.csv"
    started = time.perf_counter()
    while not (metrics.exists() and len(pd.read_csv(metrics)) >= 1):  # the first epoch is done and checkpointed
        assert time.perf_counter() - started < 120 and not job.done(), "the job never finished an epoch"
        time.sleep(0.02)
    first = pd.read_csv(metrics).iloc[0].fillna(-1).to_dict()
    signal_the_task(job)
    assert job.result() == config.out
    log = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "preempted" in log and "Requeued" in log  # submitit requeued it ...
    assert "resumed" in log and "after epoch" in log  # ... and the training went on from its checkpoint
    done = pd.read_csv(metrics)
    assert list(done["epoch"]) == [1, 2, 3, 4]  # every epoch once, and the requeued job still stops at epoch 4
    # the first epoch, trained before the interrupt, is not trained again
    assert done.iloc[0].fillna(-1).to_dict() == first


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
def test_an_interrupted_command_cancels_its_local_jobs(tmp_path, interrupt):
    """Local jobs are the command's processes: interrupted, it ends them (submitit's jobs ignore SIGTERM, as SLURM
    jobs do), so no training goes on as an orphan beside the rerun that resumes it."""
    executor, submitted = launcher.executor("local", tmp_path / "jobs", launcher.Launch(cpus_per_job=1)), []
    with pytest.raises(KeyboardInterrupt if interrupt == "ctrl-c" else SystemExit):
        with launcher.ending_with_this_command("local", submitted):
            submitted.append(executor.submit(time.sleep, 600))  # a job that would outlive the test
            task = running_task(submitted[0])
            if interrupt == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives first
    started = time.perf_counter()
    while Path(f"/proc/{task}").exists() and "Z" not in Path(f"/proc/{task}/stat").read_text().split()[2]:
        assert time.perf_counter() - started < 10, "the job's task still runs after its command was interrupted"
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's own handling is back


def test_job_settings_are_checked_and_need_a_launcher(preset, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="launch: cpus_per_job"):
        launcher.Launch(cpus_per_job=0)
    args = ["--preset", str(preset), "--out", str(tmp_path / "out"), "--only", "fig4"]
    assert reproduce_main([*args, "--partition", "gpu"]) == 2  # a job setting without --launcher: one sentence
    with pytest.raises(UserError, match="--no-wait needs --launcher slurm"):
        reproduce(str(preset), tmp_path / "out", ["fig4"], launcher="local", wait=False)
