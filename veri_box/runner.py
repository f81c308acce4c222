"""The runner: places queued jobs on free devices, starts their trainers, follows them, and
records how they end. It is the only code that changes a job's status once it is queued.

Everything it needs to resume lives in SQLite and the job directory (pid and its start time,
the offset read so far in progress.jsonl), so a restarted server re-attaches to trainers that
are still alive and fails the ones that are gone, and a clean shutdown leaves them running.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import artifacts, openreward
from .datasets import dataset_dir
from .devices import CPU, Inventory
from .settings import Settings
from .store import Store, now

log = logging.getLogger("veri_box.runner")

ACTIVE_STATUSES = ("queued", "provisioning", "running")
PLACED_STATUSES = ("provisioning", "running")
READ_PER_TICK = 4 * 1024 * 1024  # keeps a tick short; a drain reads on to the end
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "HIP out of memory")
OOM_HINT = (
    "Lower global_batch_size or max_response_length (batch_size or num_frames for video), "
    "or train a LoRA (lora_rank) on a 4-bit base model (load_in_4bit)."
)


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
    module: str, job_dir: Path, kind: str, indices: list[int], cpu_threads: int = 0
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a trainer: the server's own interpreter, one
    process per GPU through accelerate when there are several, only its devices visible, and
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
    if kind != CPU and len(indices) > 1:
        launch = ["-m", "accelerate.commands.launch", "--num_processes", str(len(indices)), "--num_machines", "1"]
        command = [sys.executable, *launch, "-m", module, str(job_dir)]
    return command, env


def _module_exists(module: str | None) -> bool:
    """Whether `python -m module` can start, without importing it (trainers' heavy imports
    stay in their own processes)."""
    try:
        return module is not None and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _iso(unix: Any) -> str:
    if isinstance(unix, int | float) and math.isfinite(unix):
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return now()


def _seconds_between(start: str | None, end: str) -> float | None:
    if not start:
        return None
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return max((parse(end) - parse(start)).total_seconds(), 0.0)


def _signal_group(job: dict, sig: int) -> bool:
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


def _openreward_config(integration: dict) -> dict:
    """The key and the service's URLs resolved here, once, so the trainer talks to exactly the
    service the submit-time check asked."""
    ends = openreward.endpoints(integration["base_url"])
    return {
        "api_key": integration["api_key"],
        "base_url": integration["base_url"],
        "session_url": ends.session_url,
        "api_url": ends.api_url,
    }


class Runner:
    def __init__(self, store: Store, settings: Settings, inventory: Inventory):
        self.store = store
        self.settings = settings
        self.inventory = inventory
        self.modules = settings.trainer_modules()
        self.prices = settings.prices()
        self._children: dict[str, subprocess.Popen] = {}
        self._tick = threading.Lock()

    # -- entry points --------------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: re-attach to trainers still alive, fail those that are gone."""
        with self._tick:
            for job in self.store.jobs_holding_devices():
                if job["pid"] and process_start_time(job["pid"]) == job["pid_started"]:
                    # Its backlog of progress is read by the ticks, not before the server answers.
                    log.info("re-attached to %s (pid %s)", job["id"], job["pid"])
                    continue
                job = self._ingest(job, drain=True)
                # A trainer that reported completion before it went finished its job, server or not.
                self._finish(job, exit_code=None, abandoned=job["trainer_state"] != "completed")

    def tick(self) -> None:
        """One pass of supervision and placement; the scheduler calls it about once a second."""
        with self._tick:
            for job in self.store.jobs_holding_devices():
                try:
                    self._supervise(job)
                except Exception:  # one broken job must not stop the others being supervised
                    log.exception("supervising %s failed", job["id"])
            self._place()

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job that has not finished (None if it had). The job reads `cancelled` at
        once; its trainer gets SIGTERM now and SIGKILL after the grace period, and its devices
        are released when no process of it remains."""
        stamp = now()
        job = self.store.transition_job(job_id, "cancelled", allowed_from=ACTIVE_STATUSES, completed_at=stamp)
        if job and job["pid"]:
            self._terminate(job)
        return job

    # -- placement ---------------------------------------------------------------------------

    def _place(self) -> None:
        """FIFO within each device type; a job that does not fit holds back later jobs of its
        type only, never those waiting for other types."""
        held: dict[str, set[int]] = {}
        for job in self.store.jobs_holding_devices():
            if job["gpu"]:
                held.setdefault(job["gpu"]["type"], set()).update(job["devices"])
        blocked: set[str] = set()
        for job in self.store.jobs_with_status("queued"):
            kind, count = job["gpu_requested"]["type"], job["gpu_requested"]["count"]
            device = self.inventory.types.get(kind)
            if device is None or count > device.count:
                self._fail_queued(
                    job,
                    "gpu_unavailable",
                    f"This box no longer has {count} '{kind}' device(s); it has: {self.inventory.describe()}.",
                )
                continue
            if kind in blocked:
                continue
            free = [i for i in device.indices if i not in held.get(kind, set())]
            if len(free) < count:
                blocked.add(kind)
                continue
            chosen = free[:count]
            held.setdefault(kind, set()).update(chosen)
            self._start(job, chosen)

    def _fail_queued(self, job: dict, code: str, message: str) -> None:
        self.store.transition_job(
            job["id"], "failed", allowed_from=["queued"], error_code=code, error_message=message, completed_at=now()
        )

    def _start(self, job: dict, indices: list[int]) -> None:
        job_dir = artifacts.job_dir(self.settings.data_dir, job["id"])
        kind = job["gpu_requested"]["type"]
        module = self.modules.get(job["method"])
        if not _module_exists(module):
            self._fail_queued(
                job,
                "trainer_unavailable",
                f"This box has no trainer for method {job['method']}: module {module} is not installed "
                "(see veri-box serve --trainers).",
            )
            return
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            config = self._write_config(job, indices, job_dir)
        except (OSError, KeyError) as err:
            self._fail_queued(job, "job_setup_failed", f"Could not prepare the job directory: {err}.")
            return
        placed = self.store.transition_job(
            job["id"],
            "provisioning",
            allowed_from=["queued"],
            event="submitted",
            event_metadata={"device_type": kind, "devices": indices},
            devices=indices,
            gpu={"type": kind, "count": len(indices)},
            provider="local",
        )
        if placed is None:  # cancelled while being prepared
            return
        cpu_threads = max(1, (os.cpu_count() or 1) // max(self.settings.cpu_slots, 1))
        command, env = trainer_command(module, job_dir, kind, indices, cpu_threads)
        try:
            with open(job_dir / "train.log", "ab") as log_file:
                child = subprocess.Popen(
                    command,
                    cwd=job_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            self._finish(self.store.get_job(job["id"]), exit_code=None, start_error=str(err))
            return
        self._children[job["id"]] = child
        self.store.update_job(job["id"], pid=child.pid, pid_started=process_start_time(child.pid))
        log.info("started %s on %s %s: %s (pid %s)", job["id"], kind, indices, config["trainer"], child.pid)

    def _write_config(self, job: dict, indices: list[int], job_dir: Path) -> dict:
        """The fully resolved job, so a trainer needs nothing but this file."""
        dataset = self.store.get_dataset(job["dataset_id"])
        if dataset is None:
            raise KeyError(f"dataset {job['dataset_id']} is gone")
        rewards = []
        rf_dir = job_dir / "reward_functions"
        for entry in job["reward_functions"]:
            rf = self.store.get_reward_function(entry["id"])
            if rf is None:
                raise KeyError(f"reward function {entry['id']} is gone")
            rf_dir.mkdir(exist_ok=True)
            # The job keeps its own copy: the reward function may be deleted once the job ends.
            copy = shutil.copyfile(self.settings.data_dir / rf["path"], rf_dir / f"{rf['id']}.py")
            rewards.append(
                {
                    "id": rf["id"],
                    "name": rf["name"],
                    "entrypoint": rf["entrypoint"],
                    "path": str(copy),
                    "weight": entry["weight"],
                }
            )
        integration = self.store.get_integration("openreward") if job["environments"] else None
        config = {
            "job_id": job["id"],
            "method": job["method"],
            "trainer": self.modules.get(job["method"]),
            "base_model": job["base_model"],
            "output_name": job["output_name"],
            "dataset": {
                "id": dataset["id"],
                "format": dataset["format"],
                "columns": dataset["columns"],
                "num_rows": dataset["num_rows"],
                "path": str(dataset_dir(self.settings.data_dir, dataset["id"]) / dataset["path"]),
            },
            "reward_functions": rewards,
            "environments": job["environments"],
            "openreward": _openreward_config(integration) if integration else None,
            "hyperparameters": job["hyperparameters"],
            "seed": job["hyperparameters"].get("seed"),
            "devices": {"type": job["gpu_requested"]["type"], "count": len(indices), "indices": indices},
            "job_dir": str(job_dir),
            "output_dir": str(job_dir / artifacts.OUTPUT_DIR),
            "models_dir": str(self.settings.data_dir / "models"),  # where built-in tiny models are built
            "checkpoints_dir": str(job_dir / "checkpoints"),
        }
        tmp = job_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(job_dir / "config.json")
        return config

    # -- supervision -------------------------------------------------------------------------

    def _terminate(self, job: dict) -> None:
        if _signal_group(job, signal.SIGTERM):
            log.info("sent SIGTERM to %s (pid %s)", job["id"], job["pid"])
        self.store.update_job(job["id"], terminated_at=now())

    def _supervise(self, job: dict) -> None:
        job = self._ingest(job)
        if job["status"] == "cancelled":
            if job["pid"] and not job["terminated_at"]:
                self._terminate(job)
            elif job["terminated_at"] and _seconds_between(job["terminated_at"], now()) >= self.settings.cancel_grace_s:
                _signal_group(job, signal.SIGKILL)
        running, exit_code = self._poll(job)
        if running:
            return
        self._finish(self._ingest(job, drain=True), exit_code)

    def _poll(self, job: dict) -> tuple[bool, int | None]:
        """(still running, exit code if we know it). Only our own children have exit codes;
        re-attached trainers are judged by what they reported."""
        child = self._children.get(job["id"])
        if child is not None:
            code = child.poll()
            return code is None, code
        if job["pid"] and process_start_time(job["pid"]) == job["pid_started"]:
            return True, None
        return False, None

    def _ingest(self, job: dict, drain: bool = False) -> dict:
        """Read progress.jsonl from the stored offset into SQLite; returns the fresh job row.
        A tick reads a bounded stretch; `drain` reads to the end (the trainer has stopped)."""
        path = artifacts.job_dir(self.settings.data_dir, job["id"]) / "progress.jsonl"
        while True:
            offset = job["progress_offset"]
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read(READ_PER_TICK)
            except FileNotFoundError:
                return job
            end = data.rfind(b"\n")
            if end < 0:
                return job
            batch = _Batch()
            for line in data[: end + 1].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    log.warning("%s: skipped a progress line that is not JSON: %r", job["id"], line[:200])
                    continue
                if isinstance(record, dict):
                    batch.add(record)
            self.store.ingest_progress(
                job["id"],
                offset + end + 1,
                points=batch.points,
                samples=batch.samples,
                checkpoints=batch.checkpoints,
                events=batch.events,
                fields=batch.fields,
                running=batch.running,
            )
            job = self.store.get_job(job["id"])  # type: ignore[assignment]
            if not drain or len(data) < READ_PER_TICK:
                return job

    # -- the end of a job ----------------------------------------------------------------------

    def _finish(
        self, job: dict, exit_code: int | None, abandoned: bool = False, start_error: str | None = None
    ) -> None:
        _signal_group(job, signal.SIGKILL)  # no stray workers outlive their job
        self._children.pop(job["id"], None)
        outcome, fields = self._outcome(job, exit_code, abandoned, start_error)
        stamp = now()
        # A cancelled job ended when it was cancelled, however long its trainer took to stop.
        end = job["completed_at"] if job["status"] == "cancelled" and job["completed_at"] else stamp
        duration = _seconds_between(job["started_at"], end)
        released = {
            "devices": None,
            "pid": None,
            "duration_seconds": duration,
            "cost_usd": None if duration is None else self._cost(job, duration),
        }
        ended = outcome and self.store.transition_job(
            job["id"],
            outcome,
            allowed_from=PLACED_STATUSES,
            event_metadata=fields.pop("event", {}),
            completed_at=stamp,
            **fields,
            **released,
        )
        if not ended:  # cancelled, now or while we looked: the cancel already set its status
            self.store.update_job(job["id"], **released)

    def _outcome(
        self, job: dict, exit_code: int | None, abandoned: bool, start_error: str | None
    ) -> tuple[str | None, dict]:
        """How a placed job ended: (status, fields to set), or (None, {}) if it was cancelled."""
        if job["status"] == "cancelled":
            return None, {}
        reported = job["reported_error"]
        succeeded = exit_code == 0 or (exit_code is None and not abandoned and job["trainer_state"] == "completed")
        if succeeded and not reported:
            problem = self._package(job)
            if problem is None:
                return "completed", {}
            reported = {"code": "trainer_crashed", "message": problem}
        if reported:
            code, message = reported["code"], reported["message"]
        elif start_error:
            code, message = "trainer_crashed", f"The trainer could not be started: {start_error}"
        elif abandoned:
            code = "abandoned"
            message = (
                f"The server restarted and the trainer process (pid {job['pid']}) was gone."
                if job["pid"]
                else "The server restarted before the trainer started."
            )
        else:
            code, message = self._diagnose(job, exit_code)
        return "failed", {"error_code": code, "error_message": message, "event": {"code": code}}

    def _cost(self, job: dict, seconds: float) -> float:
        gpu = job["gpu"] or job["gpu_requested"]
        return round(seconds / 3600 * self.prices.get(gpu["type"], 0.0) * gpu["count"], 6)

    def _diagnose(self, job: dict, exit_code: int | None) -> tuple[str, str]:
        tail = _log_tail(artifacts.job_dir(self.settings.data_dir, job["id"]) / "train.log")
        if any(marker in tail for marker in OOM_MARKERS):
            return "out_of_memory", f"The GPU ran out of memory. {OOM_HINT}"
        if exit_code is not None and exit_code < 0:
            name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
            how = f"was killed by {name}" + (" (often the kernel's out-of-memory killer)" if name == "SIGKILL" else "")
        elif exit_code is not None:
            how = f"exited with code {exit_code}"
        else:
            how = "ended without reporting completion"
        last = "\n".join(tail.splitlines()[-20:])
        return (
            "trainer_crashed",
            f"The trainer {how}. Last lines of its log:\n{last}" if last else f"The trainer {how}.",
        )

    def _package(self, job: dict) -> str | None:
        """The final output directory as model.tar.gz; None, or what is wrong with it."""
        job_dir = artifacts.job_dir(self.settings.data_dir, job["id"])
        output = job_dir / artifacts.OUTPUT_DIR
        if not output.is_dir() or not any(p.is_file() for p in output.rglob("*")):
            return f"The trainer exited successfully but wrote no model to {output}."
        tmp = job_dir / (artifacts.MODEL_ARCHIVE + ".tmp")
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:  # weights barely compress: favour speed
            for path in sorted(output.rglob("*")):
                tar.add(path, arcname=path.relative_to(output).as_posix(), recursive=False)
        tmp.replace(job_dir / artifacts.MODEL_ARCHIVE)
        return None


class _Batch:
    """The records of one read of progress.jsonl, sorted into what the store keeps."""

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, float]]] = []
        self.samples: list[dict] = []
        self.checkpoints: list[tuple[int, str, str]] = []
        self.events: list[tuple[str, dict, str]] = []
        self.fields: dict[str, Any] = {}
        self.running: dict | None = None

    def add(self, record: dict) -> None:
        kind, stamp = record.get("type"), _iso(record.get("time"))
        step = record.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) else None
        if kind == "metrics" and step is not None and isinstance(record.get("values"), dict):
            values = {
                str(k): float(v)
                for k, v in record["values"].items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
            if values:
                self.points.append((step, values))
                self.fields["current_step"] = max(step, self.fields.get("current_step") or 0)
                if "loss" in values:
                    self.fields["current_loss"] = values["loss"]
        elif kind == "sample" and step is not None:
            self.samples.append({k: v for k, v in record.items() if k not in ("type", "time")})
        elif kind == "checkpoint" and step is not None and isinstance(record.get("path"), str):
            self.checkpoints.append((step, record["path"], stamp))
            self.events.append(("checkpoint_saved", {"step": step, "path": record["path"]}, stamp))
        elif kind == "error":
            error = {"code": str(record.get("code") or "trainer_crashed"), "message": str(record.get("message") or "")}
            self.fields["reported_error"] = error
        elif kind == "event" and isinstance(record.get("event"), str):
            name, metadata = record["event"], record.get("metadata") or {}
            self.fields["trainer_state"] = name
            if name == "running":
                total = record.get("total_steps")
                self.running = {
                    "at": stamp,
                    "total_steps": total if isinstance(total, int) else None,
                    "metadata": metadata,
                }
            elif name != "completed":  # the runner records completion itself, once packaged
                self.events.append((name, metadata if isinstance(metadata, dict) else {}, stamp))


def _log_tail(path: Path, size: int = 16384) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - size, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
