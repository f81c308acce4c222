"""A short-lived child on a finished job (a merge, an evaluation), on CPU and sandboxed as a
trainer is, so it never waits for a GPU or takes one from a job.

One place for what merges.py and evaluations.py share: the sandboxed command line, running the
child with a wall-clock limit (its process group killed whole), and the tail of its output for an
error message.

A child never outlives the server. It runs under a small supervisor (SUPERVISOR, below) whose
stdin is a pipe only the server holds: when the server exits, however it exits (SIGTERM from a
service manager, a crash, SIGKILL), the pipe closes, and the supervisor sends SIGTERM to the
child's process group, then SIGKILL after the grace (--cancel-grace-s). No hook in the app's
lifespan is needed, and none could cover a SIGKILLed server. The evaluation or merge it ran is
then reported as interrupted by the next start (evaluation_interrupted, merge_interrupted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from trainers.contract import DatasetConfig, Devices, JobConfig

from . import executors, paths, sandbox
from .inventory import CPU
from .settings import Settings

TAIL = 2000
STOP_GRACE_S = 5.0  # the default of --cancel-grace-s

# argv: the grace in seconds, then the child's command line. It leads the process group the
# server started (start_new_session), so the child and its sandbox are in it; it ignores SIGTERM
# itself, so the group's SIGTERM reaches only them. Its exit code is the child's (128 + N for a
# signal N). Standard library only: it starts in a moment, on any box.
SUPERVISOR = """\
import os, signal, subprocess, sys, threading, time
grace, argv = float(sys.argv[1]), sys.argv[2:]
child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

def server_gone():
    while os.read(0, 4096):
        pass
    if child.poll() is None:
        os.killpg(0, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(0, signal.SIGKILL)

threading.Thread(target=server_gone, daemon=True).start()
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def command(settings: Settings, job: dict, module: str, work: Path) -> tuple[list[str], dict[str, str]]:
    """The child's command line and environment: the job directory read-only as its "dataset",
    the work folder its only writable one, the base model where the job found it (its folder,
    the HF cache, the built-in models)."""
    # Its share of the cores: CPU jobs may be training beside it.
    threads = max(1, (os.cpu_count() or 1) // max(settings.cpu_slots, 1))
    argv, env = executors.trainer_command(module, work, CPU, [], cpu_threads=threads)
    if sandbox.resolve(settings.sandbox) != sandbox.Mode.BWRAP:
        return argv, env
    config = JobConfig(
        job_id=job["id"],
        method=job["method"],
        trainer=module,
        base_model=job["base_model"],
        output_name=job["output_name"],
        dataset=DatasetConfig(
            id="", format="", columns=[], num_rows=0, path=str(paths.job_dir(settings.data_dir, job["id"]))
        ),
        reward_functions=[],
        environments=None,
        openreward=None,
        hyperparameters={},
        seed=None,
        devices=Devices(type=CPU, count=1, indices=[]),
        job_dir=str(work),
        output_dir=str(work),
        models_dir=str(paths.models_dir(settings.data_dir)),
        checkpoints_dir=str(work),
    )
    return executors.sandboxed_command(config, argv, env, sandbox.host(settings.data_dir, env))


def run(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    output: Path,
    wall_s: float,
    mode: str = "wb",
    grace_s: float = STOP_GRACE_S,
) -> int | None:
    """The child's exit code, or None when the wall-clock limit killed it. Its output (stdout and
    stderr) goes to `output`, opened with `mode`. Should this server exit first, the child gets
    SIGTERM, and SIGKILL `grace_s` later (SUPERVISOR)."""
    with open(output, mode) as out:
        # The pipe's write end stays in this process only (Popen closes other descriptors in
        # every child it starts, and pipes are close-on-exec): it closes when the server exits.
        child = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, str(grace_s), *argv],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            return child.wait(timeout=wall_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # its own group: the supervisor, the sandbox, the child
            except ProcessLookupError:
                pass
            child.wait()
            return None
        finally:
            child.stdin.close()  # type: ignore[union-attr]


def tail(path: Path, size: int = TAIL) -> str:
    """The last `size` bytes of a log, as text ("" if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
