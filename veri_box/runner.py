"""The runner: places queued jobs on free devices, hands them to an executor, follows them,
and records how they end. It is the only code that changes a job's status once it is queued.

Everything it needs to resume lives in SQLite and the job directory (what identifies the
trainer, the offset read so far in progress.jsonl), so a restarted server re-attaches to
trainers that are still alive and fails the ones that are gone, and a clean shutdown leaves
them running. Where and how a trainer runs is the executor's business (executors.py).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import signal
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from trainers.contract import JobConfig, write_config

from . import health, job_config, paths, progress, quotas, system_metrics
from .executors import Executor, LocalExecutor
from .placement import CLOUDS, LOCAL, SLURM, Placement, Route
from .settings import Settings
from .statuses import ACTIVE, PLACED, TERMINAL, JobStatus
from .store import Store, now, seconds_between

log = logging.getLogger("veri_box.runner")

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "HIP out of memory")
OOM_HINT = (
    "Lower global_batch_size or max_response_length (batch_size or num_frames for video), "
    "or train a LoRA (lora_rank) on a 4-bit base model (load_in_4bit)."
)
LOG_LINES = 20  # of the trainer's log, in the messages of failures it did not explain itself
SPEND_CHECK_S = 5.0  # how often running cloud jobs are held to their spend limits


def _module_exists(module: str | None) -> bool:
    """Whether `python -m module` can start, without importing it (trainers' heavy imports
    stay in their own processes)."""
    try:
        return module is not None and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Runner:
    def __init__(
        self, store: Store, settings: Settings, placement: Placement, executors: dict[str, Executor] | None = None
    ):
        """`executors` by provider name ("local", "slurm", each cloud's name); the local one
        is always there."""
        self.store = store
        self.settings = settings
        self.placement = placement
        self.inventory = placement.inventory
        self.modules = settings.trainer_modules()
        self.executors: dict[str, Executor] = {LOCAL: LocalExecutor(settings), **(executors or {})}
        self._tick = threading.Lock()
        self._said_waiting: set[str] = set()
        self._said_quota: set[str] = set()  # jobs that said waiting_for_quota (once per server run)
        self._spend_checked_at = 0.0  # monotonic time of the last spend-limit pass
        # Called with the job row when a job completes (the Box sets it: the Hub push); must not block.
        self.on_completed: Callable[[dict], None] | None = None
        self.health = health.HealthMonitor()
        self.system = system_metrics.Sampler(settings.system_metrics_interval_s)
        # No client could reach a stopped server: a heartbeat's silence counts from no earlier.
        self._up_since = now()
        # The deployments' serving processes (deployments.py; the Box sets it): placed in each
        # tick before jobs, their devices counted as held by _place.
        self.deployments = None

    def _executor(self, job: dict) -> Executor:
        return self.executors[job["provider"] or LOCAL]

    @staticmethod
    def _has_trainer(job: dict) -> bool:
        """Whether an executor started something for the job that may need stopping: a local
        process (pid), or a Slurm job or cloud instance (its executor_state)."""
        return bool(job["pid"] or job["executor_state"])

    # -- entry points --------------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: re-attach to trainers still alive, fail those that are gone."""
        with self._tick:
            for job in self.store.jobs_holding_devices():
                if self._executor(job).reattach(job):
                    # Its backlog of progress is read by the ticks, not before the server answers.
                    log.info("re-attached to %s on %s (pid %s)", job["id"], job["provider"], job["pid"])
                    continue
                job = self._ingest(job, drain=True)
                # A trainer that reported completion before it went finished its job, server or not.
                self._finish(job, exit_code=None, abandoned=job["trainer_state"] != JobStatus.COMPLETED)
            if self.deployments is not None:
                self.deployments.recover()
            active = {job["id"] for job in self.store.jobs_with_status(*ACTIVE)}
            for executor in {id(e): e for e in self.executors.values()}.values():
                recover_orphans = getattr(executor, "recover_orphans", None)
                if recover_orphans is not None:
                    try:
                        recover_orphans(active)
                    except Exception:  # a provider that is down must not keep the box from starting
                        log.exception("cleaning up orphans of %s failed", type(executor).__name__)

    def tick(self) -> None:
        """One pass of supervision and placement; the scheduler calls it about once a second."""
        with self._tick:
            self._cancel_silent_clients()
            for job in self.store.jobs_holding_devices():
                try:
                    self._supervise(job)
                except Exception:  # one broken job must not stop the others being supervised
                    log.exception("supervising %s failed", job["id"])
            # Side duties of the tick: a failure in one is logged and must never stop jobs being placed.
            duties = [self._enforce_spend, self._record_system_metrics]
            if self.deployments is not None:
                duties.append(self.deployments.tick)
            for duty in duties:
                try:
                    duty()
                except Exception:
                    log.exception("%s failed", getattr(duty, "__qualname__", duty))
            self._place()

    def _enforce_spend(self) -> None:
        """Cancel cloud jobs whose key has reached its monthly spend limit (or the box its budget).
        Every SPEND_CHECK_S, not every tick: spend grows by cents a minute, the sums scan the month."""
        if time.monotonic() - self._spend_checked_at < SPEND_CHECK_S:
            return
        self._spend_checked_at = time.monotonic()
        for job in self.store.jobs_holding_devices():
            if job["provider"] not in CLOUDS or job["status"] not in ACTIVE:
                continue
            over = quotas.over_spend(self.store, job.get("created_by"))
            if over is not None:
                log.info("cancelling %s: %s", job["id"], over)
                self.store.add_event(job["id"], "spend_limit_reached", over)
                self.cancel(job["id"], reason=over)

    def cancel(self, job_id: str, reason: dict | None = None) -> dict | None:
        """Cancel a job that has not finished (None if it had). The job reads `cancelled` at
        once; its trainer gets SIGTERM now and SIGKILL after the grace period, and its devices
        are released when no process of it remains. `reason` is the cancelled event's metadata
        when the box itself cancels."""
        stamp = now()
        job = self.store.transition_job(
            job_id, JobStatus.CANCELLED, allowed_from=ACTIVE, event_metadata=reason, completed_at=stamp
        )
        if job and self._has_trainer(job):
            self._terminate(job)
        return job

    # -- placement ---------------------------------------------------------------------------

    def _place(self) -> None:
        """Local devices: FIFO within each device type; a job that does not fit holds back later
        jobs of its type only, never those waiting for other types. Slurm and cloud jobs start
        at once: the cluster and the provider keep their own queues."""
        held: dict[str, set[int]] = {}
        for job in self.store.jobs_holding_devices():
            if job["gpu"] and job["provider"] in (LOCAL, None):
                held.setdefault(job["gpu"]["type"], set()).update(job["devices"])
        for kind, taken in (self.deployments.held() if self.deployments is not None else {}).items():
            held.setdefault(kind, set()).update(taken)  # a deployment's device is never a job's
        blocked: set[str] = set()
        stamp = now()
        for job in self.store.jobs_with_status(JobStatus.QUEUED):
            wait = quotas.waiting_for(self.store, job)
            if wait is not None:
                # Its key is at a concurrency quota: it waits (other keys' jobs go past it) and says why once.
                if job["id"] not in self._said_quota:
                    self._said_quota.add(job["id"])
                    self.store.add_event(job["id"], "waiting_for_quota", wait)
                continue
            kind, count = job["gpu_requested"]["type"], job["gpu_requested"]["count"]
            device = self.inventory.types.get(kind)
            free = [i for i in device.indices if i not in held.get(kind, set())] if device else []
            busy = kind in blocked or len(free) < count
            waited = seconds_between(job["created_at"], stamp) or 0.0
            route = self.placement.route(job, waited, busy)
            if isinstance(route, tuple):
                self._fail_queued(job, *route)
            elif route.executor == LOCAL:
                if busy:
                    blocked.add(kind)
                    continue
                chosen = free[:count]
                held.setdefault(kind, set()).update(chosen)
                self._start(job, chosen, LOCAL)
            elif route.executor == SLURM:
                self._start(job, list(range(count)), SLURM)
            elif route.executor == "cloud":
                refused = quotas.cloud_refusal(self.store, job)
                if refused:  # its key or the box is past a spend limit: no instance is rented for it
                    self._fail_queued(job, *refused)
                else:
                    self._start_cloud(job, route, waited)
            elif job["id"] not in self._said_waiting:
                # No offer in stock now: the job stays queued, and says so (once per server run).
                self._said_waiting.add(job["id"])
                self.store.add_event(job["id"], "waiting_for_capacity", {"gpu_type": kind, "gpu_count": count})

    def _start_cloud(self, job: dict, route: Route, waited: float) -> None:
        offers = route.offers or []
        self._said_waiting.discard(job["id"])
        if route.burst:
            self.store.add_event(job["id"], "burst", {"waited_s": round(waited, 1), "provider": offers[0].provider})
        # The executor launches the first offer and falls through to the next on a capacity error.
        job = {**job, "executor_state": {"offers": [msgspec.to_builtins(o) for o in offers]}}
        self.store.update_job(job["id"], executor_state=job["executor_state"])
        self._start(job, list(range(job["gpu_requested"]["count"])), offers[0].provider)

    def _fail_queued(self, job: dict, code: str, message: str) -> None:
        self.store.transition_job(
            job["id"],
            JobStatus.FAILED,
            allowed_from=[JobStatus.QUEUED],
            error_code=code,
            error_message=message,
            completed_at=now(),
        )

    def _start(self, job: dict, indices: list[int], provider: str) -> None:
        """Prepare the job directory and hand the job to the executor of `provider`; `indices`
        are the local devices it holds (elsewhere: 0..count-1, as the trainer numbers them)."""
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
            config = self._write_config(job, module, indices)
        except (OSError, KeyError) as err:
            self._fail_queued(job, "job_setup_failed", f"Could not prepare the job directory: {err}.")
            return
        placed = self.store.transition_job(
            job["id"],
            JobStatus.PROVISIONING,
            allowed_from=[JobStatus.QUEUED],
            event="submitted",
            event_metadata={"device_type": kind, "devices": indices, "provider": provider},
            # Only local devices are held by index; elsewhere an empty list marks a job to supervise.
            devices=indices if provider == LOCAL else [],
            gpu={"type": kind, "count": len(indices)},
            provider=provider,
        )
        if placed is None:  # cancelled while being prepared
            return
        try:
            started = self._executor(placed).start(placed, config)
        except OSError as err:
            self._finish(self.store.get_job(job["id"]), exit_code=None, start_error=str(err))
            return
        self.store.update_job(job["id"], **started)
        log.info("started %s on %s %s %s: %s (%s)", job["id"], provider, kind, indices, module, started)

    def _write_config(self, job: dict, module: str, indices: list[int]) -> JobConfig:
        """The job's directory with its own copies of its reward functions, and config.json."""
        data_dir = self.settings.data_dir
        dataset = self.store.get_dataset(job["dataset_id"])
        if dataset is None:
            raise KeyError(f"dataset {job['dataset_id']} is gone")
        rewards = []
        for entry in job["reward_functions"]:
            rf = self.store.get_reward_function(entry["id"])
            if rf is None:
                raise KeyError(f"reward function {entry['id']} is gone")
            rewards.append({**rf, "weight": entry["weight"]})
        integration = self.store.get_integration("openreward") if job["environments"] else None
        checkpoint = None
        if job["resume_from"]:
            checkpoint = self.store.get_checkpoint(job["resume_from"])
            if checkpoint is None:
                raise KeyError(f"checkpoint {job['resume_from']} is gone")
        wandb = self.store.get_integration("wandb")  # every job logs to W&B once it is set
        config = job_config.build(job, dataset, rewards, integration, data_dir, module, indices, checkpoint, wandb)
        paths.job_dir(data_dir, job["id"]).mkdir(parents=True, exist_ok=True)
        for rf in rewards:
            copy = job_config.reward_function_copy(data_dir, job["id"], rf["id"])
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(data_dir / rf["path"], copy)
        if checkpoint:
            self._copy_checkpoint(job["id"], checkpoint)
        write_config(config.job_dir, config)
        return config

    def _copy_checkpoint(self, job_id: str, checkpoint: dict) -> None:
        """The resumed checkpoint copied into the new job's directory, the only one its sandbox
        shows. Copied, not hard-linked: the trainer may write to its files, and a shared inode
        would let it change the source job's checkpoint. Links are copied as links, never
        followed: the source trainer made them, and they may lead outside its directory."""
        data_dir = self.settings.data_dir
        source = job_config.resume_source(data_dir, checkpoint)
        if not source.is_dir():
            raise KeyError(f"the files of checkpoint {checkpoint['id']} are gone ({source})")
        target = job_config.resume_copy(data_dir, job_id, checkpoint)
        shutil.rmtree(target, ignore_errors=True)  # a half copy of a start that failed before
        target.parent.mkdir(exist_ok=True)
        shutil.copytree(source, target, symlinks=True)

    # -- supervision -------------------------------------------------------------------------

    def _terminate(self, job: dict) -> None:
        if self._executor(job).cancel(job):
            log.info("asked %s to stop (SIGTERM)", job["id"])
        self.store.update_job(job["id"], terminated_at=now())

    def _supervise(self, job: dict) -> None:
        offset = job["progress_offset"]
        job = self._ingest(job)
        executor = self._executor(job)
        if job["progress_offset"] != offset:
            job["progress_at"] = now()
            # The cost so far, shown while it runs; the final figure is set when it ends.
            elapsed = seconds_between(job["started_at"], job["progress_at"])
            cost = None if elapsed is None else executor.cost(job, elapsed)
            self.store.update_job(job["id"], progress_at=job["progress_at"], cost_usd=cost)
        if job["status"] in TERMINAL:  # cancelled, or failed by the runner: its trainer must stop
            if self._has_trainer(job) and not job["terminated_at"]:
                self._terminate(job)
            elif job["terminated_at"] and seconds_between(job["terminated_at"], now()) >= self.settings.cancel_grace_s:
                executor.cancel(job, force=True)
        elif self._has_trainer(job) and (failure := self._failure_while_running(job)):
            self._stop_failed(job, *failure)
        running, exit_code = executor.poll(job)
        if running:
            return
        self._finish(self._ingest(job, drain=True), exit_code)

    def _record_system_metrics(self) -> None:
        """Store the last finished sample of the local trainers' CPU, memory and GPUs, each at
        its job's current step, and start the next when due (system_metrics.py; never waits)."""
        local = [j for j in self.store.jobs_holding_devices() if j["provider"] in (LOCAL, None) and j["pid"]]
        for job_id, values in self.system.tick(local).items():
            job = self.store.get_job(job_id)
            # Before the trainer's first step there is no step to put a sample at (a step 0 would
            # also sit before a resumed job's first step); the load phase goes unrecorded.
            if job and job["status"] not in TERMINAL and values and job["current_step"]:
                self.store.add_metrics(job_id, [(job["current_step"], values)])

    def _cancel_silent_clients(self) -> None:
        """Cancel the jobs whose client sent heartbeats and then fell silent for longer than
        --heartbeat-timeout-s; a client that never sent one is not watched."""
        timeout = self.settings.heartbeat_timeout_s
        if timeout <= 0:
            return
        stamp = now()
        for job in self.store.jobs_with_status(*ACTIVE):
            if not job["requires_heartbeat"] or not job["last_heartbeat_at"]:
                continue
            silent = seconds_between(max(job["last_heartbeat_at"], self._up_since), stamp) or 0.0
            if silent > timeout:
                log.warning("cancelling %s: no heartbeat for %.0f s", job["id"], silent)
                reason = {"reason": "heartbeat_lost", "silent_s": round(silent, 1), "heartbeat_timeout_s": timeout}
                self.cancel(job["id"], reason)

    def _failure_while_running(self, job: dict) -> tuple[str, str] | None:
        """(code, message) if a trainer that still runs must be stopped as failed: its job
        directory is gone, or it has reported nothing for --stall-timeout-s."""
        job_dir = paths.job_dir(self.settings.data_dir, job["id"])
        if not job_dir.is_dir():
            return "job_dir_missing", _job_dir_missing(job_dir)
        limit = self.settings.stall_timeout_s
        last = job["progress_at"] or job["started_at"]
        if limit <= 0 or job["status"] != JobStatus.RUNNING or not last:
            return None
        silent = seconds_between(last, now()) or 0.0
        if silent <= limit:
            return None
        said = f"The trainer reported no progress for {silent:.0f} s (--stall-timeout-s {limit:g}) and was stopped."
        tail = self._log_lines(job)
        return "trainer_stalled", f"{said} Last lines of its log:\n{tail}" if tail else said

    def _stop_failed(self, job: dict, code: str, message: str) -> None:
        """Fail a placed job now, as a cancel ends one: the trainer is asked to stop, killed
        after the grace period, and the devices are released once it is gone."""
        failed = self.store.transition_job(
            job["id"],
            JobStatus.FAILED,
            allowed_from=PLACED,
            event_metadata={"code": code},
            error_code=code,
            error_message=message,
            completed_at=now(),
        )
        if failed:
            log.warning("failing %s: %s", job["id"], code)
            self._terminate(failed)
            job.update(failed)

    def _ingest(self, job: dict, drain: bool = False) -> dict:
        """Read progress.jsonl from the stored offset into SQLite; returns the fresh job row.
        A tick reads a bounded stretch; `drain` reads to the end (the trainer has stopped)."""
        executor = self._executor(job)
        while True:
            offset = job["progress_offset"]
            data = executor.read_progress(job, offset, progress.READ_PER_TICK)
            batch, used = progress.parse(data, job["id"])
            if not used:
                return job
            alerts = self._watch_health(job, batch)
            self.store.ingest_progress(
                job["id"],
                offset + used,
                points=batch.points,
                samples=batch.samples,
                checkpoints=batch.checkpoints,
                events=batch.events,
                fields=batch.fields,
                running=batch.running,
            )
            job = self.store.get_job(job["id"])  # type: ignore[assignment]
            if alerts and job["status"] in PLACED and health.stops(job):
                self._stop_failed(job, health.FAILURE_CODE, health.failure_message(alerts[0]))
            if not drain or len(data) < progress.READ_PER_TICK:
                return job

    def _watch_health(self, job: dict, batch: progress.Batch) -> list[dict]:
        """The health alerts the batch's metrics raise (GRPO jobs), added to its events so they
        are stored in the same transaction as the metrics that raised them."""
        try:
            alerts = self.health.observe(
                job, batch.points, lambda: {e["metadata"].get("alert") for e in health.alerts(self.store, job["id"])}
            )
        except Exception:  # a bug in a health check must never stop a job's progress being read
            log.exception("health check of %s failed", job["id"])
            return []
        stamp = now()
        batch.events.extend((health.EVENT, alert, stamp) for alert in alerts)
        return alerts

    # -- the end of a job ----------------------------------------------------------------------

    def _finish(
        self, job: dict, exit_code: int | None, abandoned: bool = False, start_error: str | None = None
    ) -> None:
        self._executor(job).release(job)
        self.health.forget(job["id"])
        outcome, fields = self._outcome(job, exit_code, abandoned, start_error)
        stamp = now()
        # A job cancelled or failed by the runner ended then, however long its trainer took to stop.
        end = job["completed_at"] if job["status"] in TERMINAL and job["completed_at"] else stamp
        duration = seconds_between(job["started_at"], end)
        released = {
            "devices": None,
            "pid": None,
            "duration_seconds": duration,
            "cost_usd": None if duration is None else self._executor(job).cost(job, duration),
        }
        ended = outcome and self.store.transition_job(
            job["id"],
            outcome,
            allowed_from=PLACED,
            event_metadata=fields.pop("event", {}),
            completed_at=stamp,
            **fields,
            **released,
        )
        if not ended:  # cancelled or stopped, now or while we looked: that already set its status
            self.store.update_job(job["id"], **released)
        elif outcome == JobStatus.COMPLETED and self.on_completed is not None:
            try:
                self.on_completed(ended)
            except Exception:  # what follows a completion never undoes it, nor stops the tick
                log.exception("after completing %s", job["id"])

    def _outcome(
        self, job: dict, exit_code: int | None, abandoned: bool, start_error: str | None
    ) -> tuple[str | None, dict]:
        """How a placed job ended: (status, fields to set), or (None, {}) if its status is set
        (cancelled, or failed by the runner while it ran)."""
        if job["status"] in TERMINAL:
            return None, {}
        job_dir = paths.job_dir(self.settings.data_dir, job["id"])
        if not job_dir.is_dir():  # whatever the trainer said, nothing of the job is left
            code, message = "job_dir_missing", _job_dir_missing(job_dir)
            return JobStatus.FAILED, {"error_code": code, "error_message": message, "event": {"code": code}}
        reported = job["reported_error"]
        succeeded = exit_code == 0 or (
            exit_code is None and not abandoned and job["trainer_state"] == JobStatus.COMPLETED
        )
        if succeeded and not reported:
            problem = self._package(job)
            if problem is None:
                return JobStatus.COMPLETED, {}
            reported = {"code": "trainer_crashed", "message": problem}
        failure = self._executor(job).failure(job)
        # A trainer stopped by its executor's SIGTERM (a Slurm time limit) reports `interrupted`:
        # the executor knows why, the trainer does not.
        if reported and not (failure and reported["code"] == "interrupted"):
            code, message = reported["code"], reported["message"]
        elif failure:
            code, message = failure
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
        return JobStatus.FAILED, {"error_code": code, "error_message": message, "event": {"code": code}}

    def _diagnose(self, job: dict, exit_code: int | None) -> tuple[str, str]:
        tail = _log_tail(paths.train_log(self.settings.data_dir, job["id"]))
        if any(marker in tail for marker in OOM_MARKERS):
            return "out_of_memory", f"The GPU ran out of memory. {OOM_HINT}"
        if exit_code is not None and exit_code < 0:
            name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
            how = f"was killed by {name}" + (" (often the kernel's out-of-memory killer)" if name == "SIGKILL" else "")
        elif exit_code is not None:
            how = f"exited with code {exit_code}"
        else:
            how = "ended without reporting completion"
        last = "\n".join(tail.splitlines()[-LOG_LINES:])
        return (
            "trainer_crashed",
            f"The trainer {how}. Last lines of its log:\n{last}" if last else f"The trainer {how}.",
        )

    def _package(self, job: dict) -> str | None:
        """The final output directory as model.tar.gz; None, or what is wrong with it."""
        output = self._executor(job).collect(job)
        if not output.is_dir() or not any(p.is_file() for p in output.rglob("*")):
            return f"The trainer exited successfully but wrote no model to {output}."
        archive = paths.model_archive(self.settings.data_dir, job["id"])
        tmp = archive.with_name(archive.name + ".tmp")
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:  # weights barely compress: favour speed
            for path in sorted(output.rglob("*")):
                tar.add(path, arcname=path.relative_to(output).as_posix(), recursive=False)
        tmp.replace(archive)
        return None

    def _log_lines(self, job: dict) -> str:
        return "\n".join(_log_tail(paths.train_log(self.settings.data_dir, job["id"])).splitlines()[-LOG_LINES:])


def _job_dir_missing(job_dir: Path) -> str:
    return (
        f"The job's directory {job_dir} disappeared while it ran (deleted or unmounted), so its progress, "
        "checkpoints and model are lost; the trainer was stopped. Submit the job again."
    )


def _log_tail(path: Path, size: int = 16384) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - size, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
