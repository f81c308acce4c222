"""System metrics of the jobs running on this machine, recorded as `system/*` metrics.

Every --system-metrics-interval-s the runner's tick hands its local jobs to a Sampler, which
measures them in a thread of its own (psutil over each trainer's process tree; `nvidia-smi
--query-gpu` for the GPUs, attributed to the job holding each device) and has the numbers
ready for a later tick to store. A tick never waits on a measurement: nvidia-smi can take a
second or hang on a sick driver, and the scheduler must go on supervising meanwhile.

Keys: `system/cpu_percent` (of one core, summed over the trainer's processes, so 400 is four
cores busy), `system/rss_mb` (resident memory of those processes, MiB; pages they share are
counted in each), and per GPU `system/gpu{index}/utilization_percent`, `.../memory_used_mb`
and `.../power_w` (index as nvidia-smi numbers the devices, as the box's inventory does).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from typing import Any

import psutil

log = logging.getLogger("veri_box.system_metrics")

GPU_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,utilization.gpu,memory.used,power.draw",
    "--format=csv,noheader,nounits",
]
GPU_FIELDS = ("utilization_percent", "memory_used_mb", "power_w")
NVIDIA_SMI_TIMEOUT_S = 10.0
MIB = 1024 * 1024


def _number(text: str) -> float | None:
    """A value as nvidia-smi prints it, None for what it cannot measure ("[N/A]",
    "[Not Supported]", "[Unknown Error]", "N/A")."""
    try:
        return float(text.strip())
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> dict[int, dict[str, float]]:
    """`nvidia-smi --query-gpu=index,utilization.gpu,memory.used,power.draw
    --format=csv,noheader,nounits` output as {index: {field: value}}; fields it reports as not
    available are left out, lines that are not a device's are skipped."""
    devices: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 1 + len(GPU_FIELDS):
            continue
        try:
            index = int(parts[0])
        except ValueError:
            continue
        devices[index] = {
            name: value for name, raw in zip(GPU_FIELDS, parts[1:]) if (value := _number(raw)) is not None
        }
    return devices


def query_gpus() -> dict[int, dict[str, float]]:
    """The GPUs' readings now; empty without nvidia-smi or when it fails (logged)."""
    if shutil.which(GPU_QUERY[0]) is None:
        return {}
    try:
        done = subprocess.run(GPU_QUERY, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("nvidia-smi failed: %s", err)
        return {}
    return parse_nvidia_smi(done.stdout)


def gpu_metrics(readings: dict[int, dict[str, float]], holders: dict[int, str]) -> dict[str, dict[str, float]]:
    """Each device's readings as `system/gpu{index}/...` metrics of the job holding it."""
    out: dict[str, dict[str, float]] = {}
    for index, values in readings.items():
        job_id = holders.get(index)
        if job_id is not None:
            out.setdefault(job_id, {}).update({f"system/gpu{index}/{k}": v for k, v in values.items()})
    return out


class ProcessTree:
    """One trainer's processes. psutil measures CPU between two calls on the same Process
    object, so they are kept from one sample to the next; a process seen for the first time
    adds its memory but no CPU figure yet."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.known: dict[int, psutil.Process] = {}

    def sample(self) -> dict[str, float] | None:
        """{cpu_percent, rss_mb} of the tree now; None once the root process is gone."""
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu, rss, measured = 0.0, 0, False
        seen: dict[int, psutil.Process] = {}
        for process in processes:
            known = self.known.get(process.pid)
            # The same pid but another start time is a new process that reused the number.
            if known is not None and _create_time(known) == _create_time(process):
                process = known
            try:
                with process.oneshot():
                    percent = process.cpu_percent(None)
                    rss += process.memory_info().rss
            except psutil.Error:  # it ended between the listing and the reading
                continue
            if known is process:
                cpu += percent
                measured = True
            seen[process.pid] = process
        self.known = seen
        values = {"system/rss_mb": rss / MIB}
        if measured:
            values["system/cpu_percent"] = cpu
        return values


def _create_time(process: psutil.Process) -> float | None:
    try:
        return process.create_time()
    except psutil.Error:
        return None


class Sampler:
    """Measures the runner's local jobs every `interval_s` in a background thread; `tick()`
    starts a measurement when one is due and returns the last finished one."""

    def __init__(self, interval_s: float, gpus: bool = True):
        self.interval_s = interval_s
        self.gpus = gpus
        self.trees: dict[str, ProcessTree] = {}
        self._started_at = float("-inf")
        self._thread: threading.Thread | None = None
        self._ready: dict[str, dict[str, float]] | None = None
        self._lock = threading.Lock()

    def tick(self, jobs: list[dict]) -> dict[str, dict[str, float]]:
        """`jobs`: the local jobs with a trainer process (their rows). Returns {job id: metrics}
        measured since the last call (often empty); never blocks on a measurement."""
        with self._lock:
            ready, self._ready = self._ready or {}, None
        if self.interval_s <= 0:
            return ready
        running = self._thread is not None and self._thread.is_alive()
        if not running and time.monotonic() - self._started_at >= self.interval_s:
            self._started_at = time.monotonic()
            targets = [(j["id"], int(j["pid"]), _gpu_indices(j)) for j in jobs if j.get("pid")]
            self._thread = threading.Thread(target=self._measure, args=(targets,), name="system-metrics", daemon=True)
            self._thread.start()
        return ready

    def wait(self, timeout: float = 30.0) -> None:
        """Until the measurement under way is done (tests, and a clean shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _measure(self, targets: list[tuple[str, int, list[int]]]) -> None:
        try:
            result = self._measure_now(targets)
        except Exception:  # a sample lost is a gap in a chart; the runner must not notice
            log.exception("sampling system metrics failed")
            return
        with self._lock:
            self._ready = result

    def _measure_now(self, targets: list[tuple[str, int, list[int]]]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        live = {job_id for job_id, _, _ in targets}
        for job_id in list(self.trees):
            if job_id not in live:
                del self.trees[job_id]
        holders: dict[int, str] = {}
        for job_id, pid, indices in targets:
            tree = self.trees.get(job_id)
            if tree is None or tree.root.pid != pid:
                try:
                    tree = self.trees[job_id] = ProcessTree(pid)
                except psutil.Error:
                    continue
            values = tree.sample()
            if values is not None:
                out[job_id] = values
            holders.update({i: job_id for i in indices})
        if self.gpus and holders:
            for job_id, values in gpu_metrics(query_gpus(), holders).items():
                out.setdefault(job_id, {}).update(values)
        return out


def _gpu_indices(job: dict[str, Any]) -> list[int]:
    """The local GPUs a job holds (none for the cpu pool)."""
    gpu = job.get("gpu") or {}
    if gpu.get("type") in (None, "cpu"):
        return []
    return [int(i) for i in job.get("devices") or []]
