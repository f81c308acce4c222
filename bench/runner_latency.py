"""Benchmark: how fast the runner starts trainers, frees devices on cancel, and ingests progress.

Starts a real `veri-box serve --gpus none --cpu-slots 4 --cancel-grace-s 5` whose jobs run the
stdlib test trainer (tests/fake_trainer.py, behaviour set by base_model), and measures over HTTP:

  (a) queued -> running: POST a job, poll GET /v1/training_jobs/{id} every 20 ms until it reads
      `running`; split with the job's events into created->submitted (waiting for a scheduler
      tick) and submitted->running (the trainer starting up). Target: < 2 s + trainer start-up.
  (b) cancel -> devices free: POST cancel on a running job, poll GET /v1/gpu/availability every
      50 ms until the cpu slot is free and the trainer's pid is gone; for a trainer that stops
      on SIGTERM and one that ignores it (SIGKILL after the grace period). Target: < 10 s.
  (c) ingestion: a trainer writing metrics as fast as it can, while another thread times GET
      /v1/training_jobs/{id}; points/s landing in SQLite (from /metrics latest_step over time).
      Twice: the fake trainer with step_s=0 (3 keys + 1 sample + 1 log line per step), and a
      writer appending 10-key metrics lines straight into progress.jsonl of a `hang=1` job.
      Target: > 20,000 points/s with the API still answering.

    .venv/bin/python bench/runner_latency.py
    .venv/bin/python bench/runner_latency.py --starts 3 --cancels 1 --ingest-steps 50000 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    METRIC_KEYS,
    REWARD_SOURCE,
    ROOT,
    Server,
    _ok,
    create_key,
    emit_json,
    exit_on_sigterm,
    print_table,
    summary_ms,
    upload_dataset,
)

FAKE_TRAINERS = "grpo=tests.fake_trainer,sft_video_gen=tests.fake_trainer"
TARGET_PLACEMENT_S = 2.0  # on top of the trainer's own start-up
TARGET_CANCEL_S = 10.0
TARGET_POINTS_PER_S = 20_000
API_ANSWERING_P90_MS = 1000.0
MAX_LAG_S = 2.5  # two ticks and change  # "still answering": every request a 200, p90 under a second
KEYS10 = METRIC_KEYS

# Appends `steps` metrics lines of 10 keys to a progress.jsonl, 1,000 lines per write() (whole
# lines only, O_APPEND, as trainers.progress does), as fast as it can.
WRITER = r"""
import json, os, sys, time
path, steps, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
chunk = []
for i in range(1, steps + 1):
    values = {k: 1.0 / (i + n) for n, k in enumerate(keys)}
    chunk.append(json.dumps({"type": "metrics", "step": i, "values": values, "time": time.time()}))
    if len(chunk) == 1000 or i == steps:
        data = ("\n".join(chunk) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]
        chunk = []
os.close(fd)
"""


class Box(Server):
    """_common.Server with the runner's flags, and trainers that import tests.fake_trainer."""

    def __init__(self, data_dir: Path, *flags: str):
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        super().__init__(data_dir, env, flags)

    def stop(self) -> None:
        """Stop the server, then every trainer it started: they run in their own process groups
        and outlive a server that stops, by design."""
        try:
            super().stop()
        finally:
            for env_path in (self.data_dir / "jobs").glob("*/env.json"):
                try:
                    env = json.loads(env_path.read_text())
                    if str(env_path.parent).encode() in Path(f"/proc/{env['pid']}/cmdline").read_bytes():
                        os.killpg(env["pgid"], signal.SIGKILL)
                except (OSError, ValueError, KeyError):
                    pass


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def parse_ts(stamp: str) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Bench:
    def __init__(self, box: Box, client: httpx.Client):
        self.box = box
        self.http = client
        self.dataset_id = upload_dataset(client)["id"]
        self.rf_id = _ok(
            client.post(
                "/v1/reward_functions",
                data={"name": "zero"},
                files={"file": ("reward.py", REWARD_SOURCE.encode(), "text/x-python")},
            )
        )["id"]

    def submit(self, base_model: str) -> tuple[str, float]:
        """(job id, perf_counter when the POST's response arrived)."""
        job = _ok(
            self.http.post(
                "/v1/training_jobs",
                json={
                    "base_model": base_model,
                    "dataset_id": self.dataset_id,
                    "reward_function_id": self.rf_id,
                    "output_name": "bench",
                    "gpu": {"type": "cpu", "count": 1},
                },
            )
        )
        return job["id"], time.perf_counter()

    def job(self, job_id: str) -> dict:
        return _ok(self.http.get(f"/v1/training_jobs/{job_id}"))

    def wait_running(self, job_id: str, interval: float, timeout: float = 60) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            status = self.job(job_id)["status"]
            if status == "running":
                return time.perf_counter()
            if status in ("completed", "failed", "cancelled"):
                raise RuntimeError(f"{job_id} ended {status} before running: {self.job(job_id)}")
            time.sleep(interval)
        raise RuntimeError(f"{job_id} not running after {timeout}s; server log:\n{self.box.log_tail()}")

    def events(self, job_id: str) -> dict[str, float]:
        items = _ok(self.http.get(f"/v1/training_jobs/{job_id}/events", params={"limit": 1000}))["items"]
        first: dict[str, float] = {}
        for e in items:
            first.setdefault(e["event_type"], parse_ts(e["timestamp"]))
        return first

    def cpu_free(self) -> bool:
        rows = _ok(self.http.get("/v1/gpu/availability"))["availability"]
        row = next(r for r in rows if r["gpu_type"] == "cpu")
        return row["available"] == row["gpu_count"]

    def trainer_pid(self, job_id: str, timeout: float = 30) -> int:
        path = self.box.data_dir / "jobs" / job_id / "env.json"
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                return json.loads(path.read_text())["pid"]
            except (OSError, ValueError):
                time.sleep(0.02)
        raise RuntimeError(f"{job_id}: no env.json after {timeout}s")

    def cancel_and_wait_free(self, job_id: str, timeout: float = 60) -> dict:
        """Cancel; seconds until the cpu slots are all free and the trainer's pid is gone."""
        pid = self.trainer_pid(job_id)
        t0 = time.perf_counter()
        r = self.http.post(f"/v1/training_jobs/{job_id}/cancel")
        answered = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"cancel {job_id}: {r.status_code} {r.text}")
        free_at = gone_at = None
        while time.perf_counter() - t0 < timeout and (free_at is None or gone_at is None):
            now = time.perf_counter()
            if free_at is None and self.cpu_free():
                free_at = now
            if gone_at is None and not alive(pid):
                gone_at = now
            time.sleep(0.05)
        if free_at is None or gone_at is None:
            raise RuntimeError(f"{job_id}: cpu free {free_at}, pid {pid} gone {gone_at} after {timeout}s")
        return {
            "cancel_answer_s": round(answered, 3),
            "pid_gone_s": round(gone_at - t0, 3),
            "cpu_free_s": round(free_at - t0, 3),
            "total_s": round(max(free_at, gone_at) - t0, 3),
        }


def trainer_import_s(repeat: int = 3) -> float:
    """Median seconds for a fresh interpreter to import the fake trainer (its start-up floor)."""
    times = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tests.fake_trainer"], check=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_placement(bench: Bench, runs: int) -> dict:
    rows = []
    jitter = random.Random(0)
    for _ in range(runs):
        # The scheduler ticks once a second; without this every POST would come at the same
        # phase of the tick (right after the previous cancel was noticed).
        time.sleep(jitter.uniform(0, 1))
        job_id, posted = bench.submit("fake:steps=1000,step_s=0.05")
        seen = bench.wait_running(job_id, interval=0.02)
        ev = bench.events(job_id)
        rows.append(
            {
                "post_to_running_s": round(seen - posted, 3),
                "created_to_submitted_s": round(ev["submitted"] - ev["created"], 3),
                "submitted_to_running_s": round(ev["running"] - ev["submitted"], 3),
            }
        )
        bench.cancel_and_wait_free(job_id)
    return {
        "runs": rows,
        **{
            f"{k}_{stat}": round(fn([r[k] for r in rows]), 3)
            for k in rows[0]
            for stat, fn in (("median", statistics.median), ("max", max))
        },
    }


def bench_cancel(bench: Bench, runs: int, grace_s: float) -> dict:
    out = {}
    for name, model in (
        ("stops_on_sigterm", "fake:steps=100000,step_s=0.05"),
        ("ignores_sigterm", "fake:steps=100000,step_s=0.05,ignore_sigterm=1"),
    ):
        rows = []
        for _ in range(runs):
            job_id, _ = bench.submit(model)
            bench.wait_running(job_id, interval=0.05)
            rows.append(bench.cancel_and_wait_free(job_id))
        out[name] = {
            "runs": rows,
            "total_s_median": round(statistics.median(r["total_s"] for r in rows), 3),
            "total_s_max": round(max(r["total_s"] for r in rows), 3),
        }
    out["grace_s"] = grace_s
    return out


class LatencyProbe(threading.Thread):
    """GET /v1/training_jobs/{id} in a loop on its own client, recording each latency."""

    def __init__(self, url: str, headers: dict, job_id: str):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers=headers, timeout=10)
        self.job_id = job_id
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    ok = self.client.get(f"/v1/training_jobs/{self.job_id}").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t)
                self.failures += not ok
                time.sleep(0.01)


def measure_ingest(
    bench: Bench,
    job_id: str,
    steps: int,
    keys: int,
    started: float,
    timeout: float,
    writer: subprocess.Popen | None = None,
) -> dict:
    """Poll latest_step until it reaches `steps` while a probe times GET /v1/training_jobs/{id};
    `started` is when the writing began (perf_counter); `writer`, if given, is timed too."""
    writer_s = None
    probe = LatencyProbe(str(bench.http.base_url), dict(bench.http.headers), job_id)
    probe.start()
    samples = []  # (seconds since the writing started, latest_step)
    try:
        while True:
            got = _ok(bench.http.get(f"/v1/training_jobs/{job_id}/metrics", params={"max_points": 1}))
            latest = got["latest_step"] or 0
            elapsed = time.perf_counter() - started
            samples.append((elapsed, latest))
            if writer is not None and writer_s is None and writer.poll() is not None:
                writer_s = elapsed
            if latest >= steps or elapsed > timeout:
                break
            time.sleep(0.1)
    finally:
        probe.stop.set()
        probe.join()
    elapsed, latest = samples[-1]
    # The rate while points were landing: from the first poll that saw any to the last.
    first = next(((t, s) for t, s in samples if s > 0), samples[-1])
    landing_s = max(elapsed - first[0], 1e-9)
    lat = summary_ms(probe.latencies)
    return {
        "steps": steps,
        "keys": keys,
        "points": latest * keys,
        "reached_step": latest,
        "complete": latest >= steps,
        "seconds_to_land_all": round(elapsed, 3),
        "points_per_s": round(latest * keys / elapsed),
        "points_per_s_while_landing": round((latest - first[1]) * keys / landing_s) if latest > first[1] else None,
        "api_get_job": {**lat, "failures": probe.failures},
        "writer_s": None if writer_s is None else round(writer_s, 3),
    }


def add_lag(result: dict) -> dict:
    """How long after the writer finished the last point landed: ~0 means ingestion kept pace
    and the writer set the rate; a large lag means ingestion was the bottleneck."""
    done = result["writer_s"]
    result["lag_after_writer_s"] = None if done is None else round(result["seconds_to_land_all"] - done, 3)
    return result


def bench_ingest(bench: Bench, steps: int, timeout: float) -> dict:
    out = {}
    # The fake trainer flat out: 3 keys, one sample and one log line per step.
    job_id, _ = bench.submit(f"fake:steps={steps},step_s=0")
    bench.wait_running(job_id, interval=0.02)
    started = bench.events(job_id)["running"]
    started = time.perf_counter() - (time.time() - started)  # the trainer's first step, on our clock
    out["fake_trainer_step_s_0"] = result = measure_ingest(bench, job_id, steps, 3, started, timeout)
    result["writer_s"] = trainer_write_s(bench.box.data_dir / "jobs" / job_id / "progress.jsonl")
    add_lag(result)
    job = bench.job(job_id)
    if job["status"] in ("running", "provisioning"):
        bench.cancel_and_wait_free(job_id)
    else:
        _wait(lambda: bench.cpu_free(), 30)

    # 10-key lines appended straight into the progress file of a trainer that only waits.
    job_id, _ = bench.submit("fake:hang=1")
    bench.wait_running(job_id, interval=0.02)
    progress = bench.box.data_dir / "jobs" / job_id / "progress.jsonl"
    started = time.perf_counter()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(progress), str(steps), ",".join(KEYS10)])
    try:
        result = measure_ingest(bench, job_id, steps, len(KEYS10), started, timeout, writer)
        writer.wait(30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    result["progress_mb"] = round(progress.stat().st_size / 2**20, 1)
    add_lag(result)
    out["writer_10_keys"] = result
    bench.cancel_and_wait_free(job_id)
    return out


def trainer_write_s(progress: Path) -> float | None:
    """Seconds from the trainer's `running` record to its `completed` one (None if not done)."""
    running = completed = None
    with progress.open("rb") as fh:
        running = json.loads(fh.readline())["time"]
        fh.seek(max(progress.stat().st_size - 4096, 0))
        for line in fh.read().splitlines()[1:]:
            record = json.loads(line)
            if record.get("event") == "completed":
                completed = record["time"]
    return None if completed is None else round(completed - running, 3)


def _wait(predicate, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and not predicate():
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="queued->running runs (default 5)")
    parser.add_argument("--cancels", type=int, default=2, help="cancel runs per trainer kind (default 2)")
    parser.add_argument("--cancel-grace-s", type=float, default=5.0, help="the server's --cancel-grace-s (default 5)")
    parser.add_argument("--ingest-steps", type=int, default=200_000, help="steps per ingestion run (default 200000)")
    parser.add_argument("--ingest-timeout", type=float, default=60.0, help="give up an ingestion run after this")
    parser.add_argument("--json", help="append the JSON result line to this file too")
    args = parser.parse_args()

    exit_on_sigterm()
    t_all = time.perf_counter()
    import_s = trainer_import_s()
    flags = (
        "--gpus",
        "none",
        "--cpu-slots",
        "4",
        "--trainers",
        FAKE_TRAINERS,
        "--cancel-grace-s",
        f"{args.cancel_grace_s:g}",
    )
    with tempfile.TemporaryDirectory(prefix="veri-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with Box(data_dir, *flags) as box:
            box.wait_healthy()
            headers = {"Authorization": f"Bearer {create_key(data_dir)}"}
            with httpx.Client(base_url=box.url, headers=headers, timeout=30) as client:
                bench = Bench(box, client)
                print(f"server pid {box.proc.pid}, {' '.join(flags)}; trainer import {import_s:.3f} s", flush=True)
                placement = bench_placement(bench, args.starts)
                print_placement(placement, import_s)
                cancel = bench_cancel(bench, args.cancels, args.cancel_grace_s)
                print_cancel(cancel)
                ingest = bench_ingest(bench, args.ingest_steps, args.ingest_timeout)
                print_ingest(ingest)

    placement_target = TARGET_PLACEMENT_S + import_s
    met = {
        "placement": placement["post_to_running_s_max"] < placement_target,
        "cancel": all(cancel[k]["total_s_max"] < TARGET_CANCEL_S for k in ("stops_on_sigterm", "ignores_sigterm")),
        # Capacity is the 10-key writer's run (it writes 1M points in ~2 s, so ingestion sets
        # the pace). The fake trainer writes only a few thousand steps/s: its run must keep up.
        "ingest": ingest["writer_10_keys"]["points_per_s"] > TARGET_POINTS_PER_S
        and (ingest["fake_trainer_step_s_0"]["lag_after_writer_s"] or 0) < MAX_LAG_S
        and all(
            r["complete"] and r["api_get_job"]["failures"] == 0 and r["api_get_job"]["p90_ms"] < API_ANSWERING_P90_MS
            for r in ingest.values()
        ),
    }
    print(
        f"\nTargets: queued->running max < {TARGET_PLACEMENT_S:g} s + trainer import {import_s:.2f} s "
        f"= {placement_target:.2f} s: {'met' if met['placement'] else 'NOT MET'}; "
        f"cancel -> devices free max < {TARGET_CANCEL_S:g} s: {'met' if met['cancel'] else 'NOT MET'}; "
        f"ingestion > {TARGET_POINTS_PER_S:,} points/s (10-key writer; the fake trainer's run landing "
        f"< {MAX_LAG_S:g} s after it stops) with GET job answering (no failures, "
        f"p90 < {API_ANSWERING_P90_MS:g} ms): {'met' if met['ingest'] else 'NOT MET'}.  "
        f"Total run {time.perf_counter() - t_all:.1f} s"
    )
    emit_json(
        {
            "bench": "runner_latency",
            "trainer_import_s": round(import_s, 3),
            "placement": placement,
            "cancel": cancel,
            "ingest": ingest,
            "targets": {
                "placement_max_s": round(placement_target, 3),
                "cancel_max_s": TARGET_CANCEL_S,
                "points_per_s": TARGET_POINTS_PER_S,
                "api_p90_ms": API_ANSWERING_P90_MS,
                "fake_trainer_lag_s": MAX_LAG_S,
            },
            "target_met": met,
        },
        args.json,
    )
    return 0 if all(met.values()) else 1


PLACEMENT_KEYS = ("post_to_running_s", "created_to_submitted_s", "submitted_to_running_s")


def print_placement(p: dict, import_s: float) -> None:
    print(f"\n(a) queued -> running, {len(p['runs'])} jobs on a free cpu slot (seconds)")
    print_table(
        ["run", "POST->running seen", "created->submitted", "submitted->running"],
        [[i + 1, *(r[k] for k in PLACEMENT_KEYS)] for i, r in enumerate(p["runs"])]
        + [[stat, *(p[f"{k}_{stat}"] for k in PLACEMENT_KEYS)] for stat in ("median", "max")],
    )


def print_cancel(c: dict) -> None:
    print(f"\n(b) cancel -> cpu slot free and trainer pid gone (seconds; --cancel-grace-s {c['grace_s']:g})")
    rows = []
    for name in ("stops_on_sigterm", "ignores_sigterm"):
        for i, r in enumerate(c[name]["runs"]):
            rows.append([f"{name} #{i + 1}", r["cancel_answer_s"], r["pid_gone_s"], r["cpu_free_s"], r["total_s"]])
    print_table(["trainer", "cancel answered", "pid gone", "cpu free", "both"], rows)


def print_ingest(ingest: dict) -> None:
    print("\n(c) ingestion while GET /v1/training_jobs/{id} loops in another thread")
    rows = []
    for name, r in ingest.items():
        api = r["api_get_job"]
        rows.append(
            [
                name,
                f"{r['reached_step']:,}/{r['steps']:,}",
                r["keys"],
                r["seconds_to_land_all"],
                f"{r['points_per_s']:,}",
                f"{r['points_per_s_while_landing'] or 0:,}",
                f"{api['median_ms']:.1f}/{api['p90_ms']:.1f}/{api['max_ms']:.1f}",
                api["n"],
                api["failures"],
                r["writer_s"],
                r["lag_after_writer_s"],
            ]
        )
    print_table(
        [
            "source",
            "steps landed",
            "keys",
            "s to land",
            "points/s",
            "while landing",
            "GET job ms med/p90/max",
            "n",
            "fail",
            "writer s",
            "lag s",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
