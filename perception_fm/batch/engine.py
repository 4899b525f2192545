"""Running the bags' tasks: in this process one after the other (`workers == 1`: no Ray at all), or as Ray tasks
on a local cluster started here (`address` None: the machine's cores, or `workers` of them) or on a running one
(`address`: "ray://host:10001" through Ray Client, or "auto"/"host:6379" from a cluster node).

Each Ray task asks for its bag's thread count in CPUs (`--threads-per-bag`, 1 by default) and, where the cluster has
GPUs, one GPU (Ray then sets CUDA_VISIBLE_DEVICES for it, so "cuda" in the graph config is that GPU). A task whose
worker process dies (killed, out of memory, a crashed node) is run again once (max_retries=1); an exception raised
by the task itself is not retried (a damaged bag fails the same way twice) and is reported with its message, while
the other bags go on. Bags already complete with the same inputs (perception_fm.batch.jobs.completed) are not run
again.

Progress goes to `stream` (stderr), one line per finished bag: bags done/total, frames/s over the run, ETA from
the frames still to do (counted from the bags' indexes beforehand)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from perception_fm.batch.jobs import BagJob, completed

TASK_RETRIES = 1  # a worker that dies gets its bag run once more


@dataclass
class Outcome:
    job: BagJob
    status: str  # "done" | "skipped" (complete from an earlier run) | "failed"
    record: dict | None = None  # the bag's metrics.json content
    error: str | None = None
    wall_s: float = 0.0

    @property
    def frames(self) -> int:
        return int((self.record or {}).get("frames", 0))


class Progress:
    def __init__(self, jobs: list[BagJob], stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total = len(jobs)
        self.remaining_frames = {job.name: job.expected_frames for job in jobs}
        self.done = 0
        self.frames = 0
        self.started = time.perf_counter()

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        self.frames += outcome.frames
        self.remaining_frames.pop(outcome.job.name, None)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.frames / elapsed
        left = sum(self.remaining_frames.values())
        if rate > 0 and left:
            eta = left / rate
        else:  # frames unknown: by bags
            eta = elapsed / self.done * (self.total - self.done)
        what = {"done": f"done ({outcome.frames} frames, {outcome.wall_s:.1f} s)",
                "skipped": "already complete, skipped",
                "failed": f"FAILED: {outcome.error}"}[outcome.status]
        self.stream.write(f"batch: [{self.done}/{self.total}] {outcome.job.name}: {what} | {rate:.1f} frames/s, "
                          f"ETA {eta:.0f} s\n")
        self.stream.flush()


def run_jobs(jobs: list[BagJob], task: Callable[[BagJob], dict], *, workers: int | None = None,
             address: str | None = None, on_outcome: Callable[[Outcome], None] | None = None,
             ray_temp_dir: str | None = None) -> list[Outcome]:
    """Run `task` for every job not already complete; outcomes in the jobs' order (not completion order)."""
    outcomes: dict[str, Outcome] = {}

    def report(outcome: Outcome) -> None:
        outcomes[outcome.job.name] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    todo = []
    for job in jobs:
        record = completed(job)
        if record is not None:
            report(Outcome(job, "skipped", record))
        else:
            todo.append(job)
    if todo:
        if workers == 1 and address is None:
            _run_serial(todo, task, report)
        else:
            _run_ray(todo, task, workers, address, report, ray_temp_dir)
    return [outcomes[job.name] for job in jobs]


def _run_serial(jobs: list[BagJob], task, report) -> None:
    for job in jobs:
        started = time.perf_counter()
        try:
            record = task(job)
        except Exception as error:  # noqa: BLE001 - one bag's failure is reported; the others go on
            report(Outcome(job, "failed", error=_describe(error), wall_s=time.perf_counter() - started))
            continue
        report(Outcome(job, "done", record, wall_s=time.perf_counter() - started))


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run_ray(jobs: list[BagJob], task, workers: int | None, address: str | None, report,
             temp_dir: str | None) -> None:
    try:
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError
    except ImportError:
        raise RuntimeError("running bags in parallel needs Ray: pip install 'perception_fm[batch]' (or run with "
                           "--workers 1)") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats notice or upload from a CLI run
    own_temp = None
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address is None:
        # a short private path: Ray's unix sockets live under it and must stay under ~100 characters
        own_temp = temp_dir or tempfile.mkdtemp(prefix="pfm-ray-")
        threads = max(job.threads for job in jobs)
        cpus = workers * threads if workers else max(os.cpu_count() or 1, threads)
        options.update(num_cpus=cpus, _temp_dir=own_temp)
    else:
        options.update(address=address)
    ray.init(**options)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        remote = ray.remote(task).options(num_cpus=jobs[0].threads, num_gpus=1 if gpus else 0, max_retries=TASK_RETRIES,
                                          retry_exceptions=False)
        started = time.perf_counter()
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                wall = time.perf_counter() - started  # the run's clock: tasks overlap
                try:
                    record = ray.get(ref)
                except RayTaskError as error:
                    cause = getattr(error, "cause", None)
                    report(Outcome(job, "failed", error=_describe(cause) if cause is not None
                                   else str(error).splitlines()[0], wall_s=wall))
                    continue
                except WorkerCrashedError as error:
                    report(Outcome(job, "failed", error=f"worker died {TASK_RETRIES + 1} times running it "
                                   f"({_describe(error)})", wall_s=wall))
                    continue
                except ray.exceptions.RayError as error:
                    report(Outcome(job, "failed", error=_describe(error), wall_s=wall))
                    continue
                report(Outcome(job, "done", record, wall_s=float(record.get("replay_wall_s", 0))
                               + float(record.get("eval_wall_s", 0))))
    finally:
        ray.shutdown()
        if own_temp is not None and temp_dir is None:
            shutil.rmtree(own_temp, ignore_errors=True)
