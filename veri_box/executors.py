"""Where a trainer runs. The runner decides what runs and when (placement, statuses,
ingestion); an executor starts a trainer somewhere, follows it, signals it and brings its
files home. Every executor leaves the trainer's progress.jsonl and train.log in the local job
directory (written there, or mirrored by byte offset), so everything after it is one code path.

Three implement it: the local process (here), a Slurm job (slurm.py) and a rented cloud
instance over SSH (remote.py). Every method is called from the runner's tick, so each returns
within seconds; long work (a launch, an upload) runs in the executor's own threads.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from trainers.contract import JobConfig

from . import paths, sandbox
from .inventory import CPU
from .settings import Settings

log = logging.getLogger("veri_box.executors")


class Executor(Protocol):
    def start(self, job: dict, config: JobConfig) -> dict:
        """Start the trainer of a placed job; returns the job fields that identify it across
        server restarts (e.g. pid). Raises OSError if it could not be started."""

    def poll(self, job: dict) -> tuple[bool, int | None]:
        """(still running, exit code where known)."""

    def read_progress(self, job: dict, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of the job's progress.jsonl from `offset` (b"" if none yet)."""

    def cancel(self, job: dict, force: bool = False) -> bool:
        """Ask the trainer to save and stop (SIGTERM semantics), or with `force` kill it."""

    def collect(self, job: dict) -> Path:
        """The job's final output directory, on this machine."""

    def reattach(self, job: dict) -> bool:
        """After a server restart: whether the trainer is still running (and now followed)."""

    def release(self, job: dict) -> None:
        """The job has ended: nothing of it may keep running or keep holding resources."""

    def failure(self, job: dict) -> tuple[str, str] | None:
        """(error code, message) when the executor knows why the trainer could not run or was
        lost (an instance gone, a Slurm time limit...); the runner uses it when the trainer
        reported no error of its own."""

    def cost(self, job: dict, seconds: float) -> float | None:
        """What the job cost in USD, `seconds` being its trainer's wall time."""


def device_cost(prices: dict[str, float], job: dict, seconds: float) -> float:
    """--price-per-hour of the job's GPU type x its count x the time: the cost of a device
    the lab owns (this box's, or its cluster's)."""
    gpu = job["gpu"] or job["gpu_requested"]
    return round(seconds / 3600 * prices.get(gpu["type"], 0.0) * gpu["count"], 6)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone or a
    zombie. With the pid it identifies one process: pids are reused, start times are not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def trainer_command(
    module: str, job_dir: Path, kind: str, indices: list[int], cpu_threads: int = 0, one_process: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a trainer: the server's own interpreter, one
    process per GPU through accelerate when there are several (unless `one_process`: a serving
    process that uses all its GPUs itself), only its devices visible, and
    no downloads from a hub at run time. A cpu job gets its share of the cores: torch
    processes that each take every core slow one another down several times over. Its
    OpenMP threads sleep rather than spin while they wait: with any other busy process on
    the box, spinning made each step of a small model about 50 times slower (and a cancelled
    trainer then could not finish its step and save within the grace period)."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "" if kind == CPU else ",".join(map(str, indices)),
    }
    if kind == CPU and cpu_threads:
        env["OMP_NUM_THREADS"] = str(cpu_threads)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = [sys.executable, "-m", module, str(job_dir)]
    if kind != CPU and len(indices) > 1 and not one_process:
        launch = ["-m", "accelerate.commands.launch", "--num_processes", str(len(indices)), "--num_machines", "1"]
        command = [sys.executable, *launch, "-m", module, str(job_dir)]
    return command, env


# The process group leader of a sandboxed trainer: a shell that ignores SIGTERM and waits for
# bwrap. The runner's SIGTERM to the group then reaches the trainer (to save and stop) and not
# bwrap, which would die of it and take the trainer with it (--die-with-parent) before it
# saved; and bwrap's parent is this shell, not the server, so a server restart leaves trainers
# running. SIGKILL to the group ends the shell, bwrap and the trainer at once.
SIGTERM_SHIELD = ["/bin/sh", "-c", 'trap "" TERM; "$@"; exit $?', "veri-box-sandbox"]


def sandboxed_command(
    config: JobConfig, command: list[str], env: dict[str, str], host: sandbox.Host
) -> tuple[list[str], dict[str, str]]:
    """The trainer's command line and environment inside the bubblewrap sandbox."""
    prefix, env = sandbox.command(config, env, host)
    return [*SIGTERM_SHIELD, *prefix, *command], env


def _exit_code(code: int | None) -> int | None:
    """bwrap (and the shell) report a trainer killed by signal N as exit code 128 + N: read it
    back as the -N a plain child would have given, so the runner can name the signal."""
    return -(code - 128) if code is not None and 128 < code < 128 + 65 else code


class LocalExecutor:
    """A trainer as a child process of this server, in its own session and process group, its
    stdout and stderr appended to train.log, inside the bubblewrap sandbox unless the box runs
    without one (sandbox.py). It is identified by pid and process start time, so a restarted
    server finds it again; only our own children have exit codes."""

    one_process = False  # see trainer_command

    def __init__(self, settings: Settings):
        self.data_dir = settings.data_dir
        self.prices = settings.prices()
        self.cpu_threads = max(1, (os.cpu_count() or 1) // max(settings.cpu_slots, 1))
        self.sandbox = sandbox.resolve(settings.sandbox)
        self._children: dict[str, subprocess.Popen] = {}
        self._sandboxed: set[str] = set()

    def _log_path(self, job: dict, config: JobConfig) -> Path:
        """Where the child's stdout and stderr go (a deployment's executor puts it elsewhere)."""
        return paths.train_log(self.data_dir, job["id"])

    def start(self, job: dict, config: JobConfig) -> dict:
        job_dir = Path(config.job_dir)
        command, env = trainer_command(
            config.trainer or "",
            job_dir,
            config.devices.type,
            config.devices.indices,
            self.cpu_threads,
            self.one_process,
        )
        if self.sandbox == sandbox.Mode.BWRAP:
            building = sandbox.model_to_build(config)
            # Mount points: the models folder, and the one folder the job may build a model in.
            Path(building or config.models_dir).mkdir(parents=True, exist_ok=True)
            command, env = sandboxed_command(config, command, env, sandbox.host(self.data_dir, env))
            self._sandboxed.add(job["id"])
        with open(self._log_path(job, config), "ab") as log_file:
            child = subprocess.Popen(
                command,
                cwd=job_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[job["id"]] = child
        return {"pid": child.pid, "pid_started": process_start_time(child.pid)}

    def poll(self, job: dict) -> tuple[bool, int | None]:
        child = self._children.get(job["id"])
        if child is not None:
            code = child.poll()
            return code is None, _exit_code(code) if job["id"] in self._sandboxed else code
        return self._alive(job), None

    def read_progress(self, job: dict, offset: int, limit: int) -> bytes:
        try:
            with paths.progress_file(self.data_dir, job["id"]).open("rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""

    def cancel(self, job: dict, force: bool = False) -> bool:
        return self._signal_group(job, signal.SIGKILL if force else signal.SIGTERM)

    def collect(self, job: dict) -> Path:
        return paths.output_dir(self.data_dir, job["id"])

    def reattach(self, job: dict) -> bool:
        return self._alive(job)

    def release(self, job: dict) -> None:
        self._signal_group(job, signal.SIGKILL)  # no stray workers outlive their job
        self._children.pop(job["id"], None)
        self._sandboxed.discard(job["id"])

    def failure(self, job: dict) -> tuple[str, str] | None:
        return None  # the runner reads a local trainer's end from its exit code and log

    def cost(self, job: dict, seconds: float) -> float:
        return device_cost(self.prices, job, seconds)

    def _alive(self, job: dict) -> bool:
        return bool(job["pid"]) and process_start_time(job["pid"]) == job["pid_started"]

    def _signal_group(self, job: dict, sig: int) -> bool:
        """Signal the trainer's whole process group (data loaders, accelerate workers...), unless
        its pid now belongs to another process. While any member of the group lives, the kernel
        does not hand its id to a new process, so a dead leader's group is still ours."""
        pid = job["pid"]
        if not pid:
            return False
        started = process_start_time(pid)
        if started is not None and started != job["pid_started"]:
            return False
        try:
            os.killpg(pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False
