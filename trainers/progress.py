"""The whole contract between a trainer and the server: config.json in, progress.jsonl out.

A trainer runs as `python -m trainers.<method> JOB_DIR`, its main() being `run(JOB_DIR, train)`:
`train` gets the resolved job (`load_config(JOB_DIR)`, a `trainers.contract.JobConfig`) and a
`Progress` to report through, writes its human log with `log()` (stdout and stderr go to
JOB_DIR/train.log) and returns 0 when done. SIGTERM means "save and stop": after
`install_sigterm_handler()` it only sets a flag that the training loop polls with
`stop_requested()` between steps.

Standard library only: this module is imported first thing in every trainer process, and the
server's tests import it too, so it must never drag in torch, litestar or veri_box.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers.contract import CONFIG_FILE, JobConfig, read_config  # noqa: F401 - the server finds both files here
from trainers.errors import TrainerError

PROGRESS_FILE = "progress.jsonl"

# Keys every record carries; a sample's own fields may not shadow them.
_RESERVED_SAMPLE_FIELDS = frozenset({"type", "step", "time"})


def load_config(job_dir: str | Path) -> JobConfig:
    """The fully resolved job the server wrote for this run."""
    return read_config(job_dir)


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def log(message: str) -> None:
    """One line of the human log (stdout is train.log), prefixed with the UTC time."""
    print(f"{_timestamp()} {message}", flush=True)


def _warn(message: str) -> None:
    print(f"{_timestamp()} warning: {message}", file=sys.stderr, flush=True)


# ---- SIGTERM: save and stop ------------------------------------------------------------------

_stop = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only set the flag: printing here could re-enter a write that the signal interrupted.
    _stop.set()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into a request to save and stop (call from the main thread, before loading models)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def stop_requested() -> bool:
    """True once SIGTERM arrived; poll between steps, save a checkpoint, then exit 0."""
    return _stop.is_set()


# ---- making values strict JSON ---------------------------------------------------------------


def _finite_float(value: Any) -> float | None:
    """The value as a float if it is a finite real number (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """Containers walked; NaN/inf become null (the server's JSON parser rejects them); numpy-style
    scalars become Python numbers. Anything else unknown is left for json's default=str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite_float(value)
    return value


class Progress:
    """Appends one JSON record per line to JOB_DIR/progress.jsonl.

    Each record goes out in a single write() on a file opened with O_APPEND and no user-space
    buffer, so the server tailing the file sees whole records only (a partial last line means
    a write in progress), a server crash loses nothing already reported, and several processes
    (e.g. ranks of one job) can append without tearing each other's lines.
    """

    def __init__(self, job_dir: str | Path):
        self.job_dir = Path(os.path.abspath(job_dir))
        self.path = self.job_dir / PROGRESS_FILE
        self._file = open(self.path, "ab", buffering=0)
        self._lock = threading.Lock()
        self._warned_keys: set[str] = set()

    # -- records ---------------------------------------------------------------------------

    def started(self, total_steps: int | None = None, **metadata: Any) -> None:
        """Training has begun (models loaded): the job is running."""
        self._write(
            {
                "type": "event",
                "event": "running",
                "total_steps": None if total_steps is None else int(total_steps),
                "metadata": metadata,
            }
        )

    def event(self, name: str, **metadata: Any) -> None:
        self._write({"type": "event", "event": str(name), "metadata": metadata})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Scalars of one step. Values that are not finite real numbers are dropped, with one
        warning per key on stderr; nothing is written when none survive."""
        kept = {}
        for key, value in values.items():
            key = str(key)
            number = _finite_float(value)
            if number is None:
                if key not in self._warned_keys:
                    self._warned_keys.add(key)
                    _warn(
                        f"metric {key!r} at step {step} is {value!r}, not a finite number: dropped "
                        "(warned once per key)"
                    )
                continue
            kept[key] = number
        if kept:
            self._write({"type": "metrics", "step": int(step), "values": kept})

    def sample(self, step: int, **fields: Any) -> None:
        """One rollout (prompt, completion, reward, rewards, advantage) or one generated video
        (prompt, video). Path values inside the job dir are stored relative to it."""
        clash = _RESERVED_SAMPLE_FIELDS & fields.keys()
        if clash:
            raise ValueError(f"sample fields may not be named {sorted(clash)}")
        for name, value in fields.items():
            if isinstance(value, os.PathLike):
                try:
                    fields[name] = self.relative_path(value)
                except ValueError:
                    fields[name] = os.fspath(value)
        self._write({"type": "sample", "step": int(step), **fields})

    def checkpoint(self, step: int, path: str | Path) -> None:
        """A checkpoint saved at `path`, which must lie inside the job dir."""
        self._write({"type": "checkpoint", "step": int(step), "path": self.relative_path(path)})

    def error(self, code: str, message: str) -> None:
        """Why the run is about to fail, before a non-zero exit."""
        self._write({"type": "error", "code": str(code), "message": str(message)})

    def completed(self, **metadata: Any) -> None:
        self._write({"type": "event", "event": "completed", "metadata": metadata})

    # -- plumbing --------------------------------------------------------------------------

    def relative_path(self, path: str | Path) -> str:
        """`path` relative to the job dir, in posix form. A relative `path` is taken from the
        current directory first, then from the job dir; outside the job dir is a ValueError."""
        path = Path(path)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, self.job_dir / path]
        for candidate in candidates:
            try:
                return Path(os.path.abspath(candidate)).relative_to(self.job_dir).as_posix()
            except ValueError:
                continue
        raise ValueError(f"{path} is not inside the job directory {self.job_dir}")

    def _write(self, record: dict) -> None:
        record = _plain(record)
        record["time"] = time.time()
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(line)
            while view:  # a regular file takes it whole; loop only in case the kernel says otherwise
                written = self._file.write(view)
                view = view[written:]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Silent:
    """The progress of a rank other than 0: its records would repeat rank 0's."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _reporting_rank() -> bool:
    # With several GPUs (accelerate launch / torchrun) every rank trains and rank 0 alone reports.
    return int(os.environ.get("RANK") or 0) == 0


# ---- the main() of every trainer ---------------------------------------------------------------


def run(job_dir: str | Path, train: Callable[[JobConfig, Progress], int]) -> int:
    """`train(config, progress)` for the job in `job_dir`, with SIGTERM as save-and-stop; a
    TrainerError becomes the job's error record and exit code 1. Returns the exit code."""
    install_sigterm_handler()
    config = load_config(job_dir)
    with Progress(job_dir) if _reporting_rank() else contextlib.nullcontext(_Silent()) as progress:
        try:
            return train(config, progress)
        except TrainerError as err:
            log(f"error ({err.code}): {err.message}")
            progress.error(err.code, err.message)
            return 1
