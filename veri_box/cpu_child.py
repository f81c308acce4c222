"""A short-lived child on a finished job (a merge, an evaluation), on CPU and sandboxed as a
trainer is, so it never waits for a GPU or takes one from a job.

One place for what merges.py and evaluations.py share: the sandboxed command line, running the
child with a wall-clock limit (its process group killed whole), and the tail of its output for an
error message.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from trainers.contract import DatasetConfig, Devices, JobConfig

from . import executors, paths, sandbox
from .inventory import CPU
from .settings import Settings

TAIL = 2000


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


def run(argv: list[str], env: dict[str, str], cwd: Path, output: Path, wall_s: float, mode: str = "wb") -> int | None:
    """The child's exit code, or None when the wall-clock limit killed it. Its output (stdout and
    stderr) goes to `output`, opened with `mode`."""
    with open(output, mode) as out:
        child = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            return child.wait(timeout=wall_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # its own group: the sandbox's shell, bwrap, the child
            except ProcessLookupError:
                pass
            child.wait()
            return None


def tail(path: Path, size: int = TAIL) -> str:
    """The last `size` bytes of a log, as text ("" if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
