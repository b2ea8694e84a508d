"""The pipeline's trainings as jobs: a submitit job array on a SLURM cluster, or the same jobs as local processes
(submitit's local executor, which the tests use), so the cluster path runs on a laptop too.

    python analysis/reproduce.py --preset paper --data /data/imagenet --launcher slurm --partition gpu
    python analysis/reproduce.py --preset demo --launcher local

What runs where: the subnet search of Fig. 3 first, as one job (it times models: one machine must time them all);
then every training the figures register (each proxy run to the end of its schedule, each Fig. 3 point) as one job
array, each job one training in its own folder under the runs folder (a job writes no other job's files); then,
once all are done, the analyses in this process, which find every training finished and train nothing again.

Faults: a job preempted or out of time is requeued by submitit (`TrainingJob` is checkpointable) and its training
resumes from its last epoch's checkpoint, so no finished epoch is trained twice; a job that fails is submitted again
up to `retries` times, then named with its log. The jobs submitted are kept in <runs>/jobs/jobs.json: with
`--no-wait` the command returns once they are queued, and the same command run again waits for those still queued
or running (it submits nothing twice) and goes on to the analyses. A training that asks for several GPUs runs as
that many tasks of one job, each a process of PyTorch's DDP (the environment torchrun would give, from submitit's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from tqdm import tqdm

from analysis.pipeline import Context
from efficientvit.config import knob
from efficientvit.errors import UserError
from efficientvit.files import atomic_write_text
from efficientvit.runtime import require
from efficientvit.train import status, train
from efficientvit.train_config import TrainConfig

LAUNCHERS = ("local", "slurm")
LEDGER = "jobs.json"
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"}


@dataclass
class Launch:
    """Where and how the jobs run (a preset's `launch` section gives the defaults, the command line overrides)."""

    partition: str | None = knob(None, "SLURM partition (null: the cluster's default)")
    account: str | None = knob(None, "SLURM account to charge (null: yours)")
    gpus_per_job: int = knob(0, "GPUs per training job; above 1, the training runs distributed (DDP) across them")
    cpus_per_job: int = knob(2, "CPU cores per training job (its data loading and, without GPUs, its compute)")
    time_minutes: int = knob(240, "each job's time limit; a job that reaches it is requeued and resumes")
    parallelism: int = knob(64, "jobs of the array running at once")
    retries: int = knob(2, "times a failed job is submitted again before the run stops and names its log")

    def __post_init__(self):
        if min(self.cpus_per_job, self.time_minutes, self.parallelism) < 1 or self.gpus_per_job < 0 or self.retries < 0:
            raise UserError(
                "launch: cpus_per_job, time_minutes and parallelism must be at least 1, gpus_per_job and retries 0 or "
                f"more; got {self}"
            )


def launch_overrides_class() -> type:
    """The job settings as command-line options: each field of `Launch`, None (the preset's) unless given."""
    hints = typing.get_type_hints(Launch)
    return dataclasses.make_dataclass(
        "LaunchOverrides",
        [
            (f.name, hints[f.name] | None, knob(None, f.metadata["help"].split(" (null")[0]))
            for f in dataclasses.fields(Launch)
        ],
    )


class TrainingJob:
    """What one job runs: a training to the end of its schedule (or to epoch `until`), resuming from its checkpoint.
    Checkpointable: on preemption or timeout submitit asks for `checkpoint` and requeues the job, which resumes the
    same training."""

    def __call__(self, config: TrainConfig, threads: int, until: int | None = None) -> str:
        torch.set_num_threads(threads)
        environment = submitit().JobEnvironment()
        if environment.num_tasks > 1:  # one training across the job's GPUs: the variables torchrun would set
            submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        train(config, resume=True, until=until)
        return config.out

    def checkpoint(self, config: TrainConfig, threads: int, until: int | None = None):
        return submitit().helpers.DelayedSubmission(TrainingJob(), config, threads, until)


def search_job(ctx: Context, section) -> None:
    """The Fig. 3 subnet search, as a job of its own."""
    from analysis.figures import fig3

    fig3.search_subnets(ctx, section)


def submitit():
    return require("submitit", "--launcher", "pip install submitit (a dependency of efficientvit-lab)")


def executor(kind: str, folder: Path, launch: Launch):
    """submitit's executor for SLURM or local processes, with the job's resources."""
    tasks = max(1, launch.gpus_per_job)
    common = dict(
        timeout_min=launch.time_minutes,
        tasks_per_node=tasks,
        gpus_per_node=launch.gpus_per_job,
        nodes=1,
        cpus_per_task=max(1, launch.cpus_per_job // tasks),
    )
    if kind == "local":
        found = submitit().LocalExecutor(folder=folder)
        found.update_parameters(**{k: v for k, v in common.items() if k != "cpus_per_task"})
        return found
    found = submitit().AutoExecutor(folder=folder, cluster="slurm")
    found.update_parameters(
        **common,
        slurm_array_parallelism=launch.parallelism,
        **({"slurm_partition": launch.partition} if launch.partition else {}),
        **({"slurm_account": launch.account} if launch.account else {}),
    )
    return found


def read_ledger(folder: Path) -> dict[str, str]:
    path = folder / LEDGER
    return json.loads(path.read_text()) if path.exists() else {}


def record(folder: Path, jobs: dict[str, object]) -> None:
    """The job of every training submitted, by training, so a later command finds them instead of submitting."""
    ledger = read_ledger(folder) | {name: str(job.job_id) for name, job in jobs.items()}
    atomic_write_text(folder / LEDGER, json.dumps(ledger, indent=1, sort_keys=True))


def still_active(kind: str, folder: Path, job_id: str):
    """The SLURM job of an earlier command when it is still queued or running (None otherwise, and for local
    processes, which end with the command that started them)."""
    if kind != "slurm":
        return None
    job = submitit().SlurmJob(folder=folder, job_id=job_id)
    return job if job.state.split()[0] in ACTIVE else None


def wait(jobs: dict[str, object], what: str, queue: dict[str, TrainConfig] | None = None, top_up=None) -> dict:
    """Wait for every job, a progress bar over them and over the `queue` still to submit (`top_up(queue)` submits
    what fits and returns those jobs: local processes, `parallelism` at a time); the jobs that failed, by name."""
    failed, pending, queue = {}, dict(jobs), dict(queue or {})
    with tqdm(total=len(jobs) + len(queue), desc=what, unit="job") as bar:
        while pending or queue:
            if queue and top_up is not None:
                pending |= top_up(queue, len(pending))
            for name, job in list(pending.items()):
                if job.done():
                    pending.pop(name)
                    bar.update(1)
                    if job.exception() is not None:
                        failed[name] = job
            time.sleep(0.5 if pending else 0.0)
    return failed


def trainings_of(ctx: Context, only: set[str], along_training: bool = False) -> dict[str, TrainConfig]:
    """Every training the chosen figures register, by name (a figure that reads another's trains those too); only
    those of the figures read along training (the proxies) with `along_training`."""
    from analysis.figures import registered

    figures = {figure.key: figure for figure in registered()}
    wanted = set(only) | {needed for key in only if key in figures for needed in figures[key].reads}
    if along_training:
        wanted = {key for key in wanted if key in figures and figures[key].along_training}
    found = {}
    for key in wanted:
        figure, section = figures.get(key), getattr(ctx.preset, key, None)
        if figure is not None and figure.trainings is not None and section is not None:
            found |= figure.trainings(ctx, section)
    return found


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def ending_with_this_command(kind: str, submitted: list):
    """Local jobs are processes of this command: when it is interrupted (Ctrl-C, or SIGTERM, which submitit's jobs
    themselves ignore as SLURM jobs do) it ends those still running, so that none trains on, an orphan, beside a
    rerun that resumes the same training from its last epoch. SLURM jobs outlive the command by design
    (`--no-wait`)."""
    if kind != "local":
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    except BaseException:
        for job in submitted:
            end_local_job(job)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_local_job(job) -> None:
    """Kill a local job's controller and every process under it (its training, the data loaders). Not submitit's
    cancel: that sends SIGINT, which processes started in the background ignore, as do their children."""
    try:
        controller = psutil.Process(int(job.job_id))  # a local job's id is its controller's pid
    except psutil.NoSuchProcess:
        return
    for process in [*controller.children(recursive=True), controller]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def launch(
    kind: str, ctx: Context, only: set[str], settings: Launch, wait_for_them: bool = True, *, until: int | None = None
) -> bool:
    """Run the trainings as jobs (the subnet search first). True once every one is trained; False when `--no-wait`
    left them queued. With `until`, only the proxies, each to that epoch (no subnet search)."""
    if kind not in LAUNCHERS:
        raise UserError(f"--launcher takes {', '.join(LAUNCHERS)}, got {kind!r}")
    if kind == "local" and not wait_for_them:
        raise UserError("--no-wait needs --launcher slurm: local jobs are processes of this command")
    folder = ctx.runs / "jobs"
    run, submitted = executor(kind, folder, settings), []
    with ending_with_this_command(kind, submitted):
        if "fig3" in only and ctx.preset.fig3 is not None and until is None:
            # the search times models on one device, whatever a training job may take
            searcher = executor(kind, folder, dataclasses.replace(settings, gpus_per_job=min(1, settings.gpus_per_job)))
            search = searcher.submit(search_job, ctx, ctx.preset.fig3)
            submitted.append(search)
            if wait({"subnet search": search}, "subnet search"):
                raise UserError(f"the subnet search job failed: see {search.paths.stderr}")
        return launch_trainings(
            ctx, only, settings, kind=kind, run=run, submitted=submitted, wait_for_them=wait_for_them, until=until
        )


def launch_trainings(
    ctx: Context, only: set[str], settings: Launch, *, kind, run, submitted, wait_for_them, until
) -> bool:
    """`launch` once the subnet search is done: the trainings' job array (every job into `submitted`), waited for
    and retried."""
    folder = ctx.runs / "jobs"
    everything = trainings_of(ctx, only, along_training=until is not None)

    def to_do(config: TrainConfig) -> bool:
        done, finished = status(config)
        return not finished and (until is None or done < min(until, config.epochs))

    trainings = {name: config for name, config in everything.items() if to_do(config)}
    ledger, jobs = read_ledger(folder), {}
    for name in list(trainings):
        job = still_active(kind, folder, ledger[name]) if name in ledger else None
        if job is not None:  # submitted by an earlier command and still queued or running: waited for, not resubmitted
            jobs[name] = job
            trainings.pop(name)

    def top_up(queue: dict[str, TrainConfig], running: int) -> dict[str, object]:
        """SLURM: the whole queue as one array (its parallelism limits it); local: what fits beside the running."""
        room = len(queue) if kind == "slurm" else max(0, settings.parallelism - running)
        chosen = {name: queue.pop(name) for name in list(queue)[:room]}
        jobs = submit(run, folder, chosen, settings, until)
        submitted.extend(jobs.values())
        return jobs

    if not wait_for_them:
        jobs |= top_up(trainings, 0)
        ids = sorted({str(job.job_id).split("_")[0] for job in jobs.values()})
        print(
            f"{len(jobs)} training jobs queued (SLURM job {', '.join(ids) or '-'}; logs in {folder}); run the same "
            "command again to wait for them and analyse"
        )
        return False
    for attempt in range(settings.retries + 1):
        failed = wait(jobs, "trainings" if attempt == 0 else f"trainings, retry {attempt}", trainings, top_up)
        if not failed:
            return True
        if attempt < settings.retries:
            print(f"{len(failed)} jobs failed ({', '.join(failed)}); submitting them again", file=sys.stderr)
            jobs, trainings = {}, {name: everything[name] for name in failed}
    logs = "; ".join(f"{name}: {job.paths.stderr}" for name, job in failed.items())
    raise UserError(f"{len(failed)} training jobs failed after {settings.retries} retries, see their logs: {logs}")


def submit(
    run, folder: Path, trainings: dict[str, TrainConfig], settings: Launch, until: int | None = None
) -> dict[str, object]:
    """The trainings as one job array (each to epoch `until`, or to its end), recorded in the ledger."""
    if not trainings:
        return {}
    threads = max(1, settings.cpus_per_job // max(1, settings.gpus_per_job))
    names = list(trainings)
    submitted = run.map_array(
        TrainingJob(), [trainings[n] for n in names], [threads] * len(names), [until] * len(names)
    )
    jobs = dict(zip(names, submitted))
    record(folder, jobs)
    return jobs
