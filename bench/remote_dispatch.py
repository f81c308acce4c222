"""Benchmark: a job on a rented GPU, from the instance being ready to the trainer running, and how
late a metric the remote trainer writes reaches the API, side by side with the local executor.

Starts the RunPod stand-in of tests/provider_standins.py on 127.0.0.1, whose instances are real
OpenSSH servers (tests/sshd.py) booting an "image" whose python3 is this venv (so the bootstrap
is warm: the instance's python has the training stack at the box's versions, nothing is
installed), and a real `veri-box serve --gpus none --cpu-slots 1` whose jobs run the stdlib test
trainer (tests/fake_trainer.py). RunPod is configured through the box's own API. Then, `--runs`
times, alternating, a job for an A100 (rented: the remote executor) and one for the cpu pool
(the local executor), each `fake:steps=N,step_s=S`:

  (a) remote only, from the job's events: instance_ready -> trainer_started (the box's own
      count: code and job upload, bootstrap check, the detached start), -> `running` (stamped
      with the trainer's first report), and -> the first GET of the job that reads `running`
      (that report mirrored back over SSH and ingested; the target);
  (b) both: for every step, the trainer's write time of its metrics record (the "time" field of
      progress.jsonl, the same clock: everything runs on this machine) to the first
      GET /v1/training_jobs/{id}/metrics (polled every --poll-s) whose latest_step reaches it.

    .venv/bin/python bench/remote_dispatch.py
    .venv/bin/python bench/remote_dispatch.py --runs 5 --json out.jsonl

Targets: (a) ready -> API running < 5 s (median); (b) remote median < 3 s. Exit 0 when both are met.
Needs root for sshd (install.sh --dev installs openssh-server). About a minute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import (  # noqa: E402
    REWARD_SOURCE,
    ROOT,
    VERI_BOX,
    Server,
    emit_json,
    exit_on_sigterm,
    percentile,
    print_table,
    upload_dataset,
)
from provider_standins import RunPodStandIn  # noqa: E402

FAKE_TRAINERS = "grpo=tests.fake_trainer,sft_video_gen=tests.fake_trainer"
READY_TO_RUNNING_TARGET_S = 5.0
METRIC_LATENCY_TARGET_S = 3.0
REMOTE_GPU = {"type": "A100-80GB", "count": 1}  # the box has none: placement rents one
LOCAL_GPU = {"type": "cpu", "count": 1}


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def admin_key(data_dir: Path) -> str:
    done = subprocess.run(
        [VERI_BOX, "keys", "create", "--admin", "--name", "bench", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def ok(response: httpx.Response) -> dict:
    if response.status_code != 200:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
        )
    return response.json()


def run_job(client: httpx.Client, data_dir: Path, ids: dict, gpu: dict, steps: int, step_s: float, poll_s: float):
    """Submit one job, poll its status and latest step until it has ended; (job, events, per-step
    latency s, when the API first answered it past queued and provisioning)."""
    job = ok(
        client.post(
            "/v1/training_jobs",
            json={
                "base_model": f"fake:steps={steps},step_s={step_s}",
                "dataset_id": ids["dataset"],
                "reward_function_id": ids["reward"],
                "output_name": "bench",
                "gpu": gpu,
            },
        )
    )
    job_id = job["id"]
    seen: dict[int, float] = {}  # step -> when the API first showed it
    last = 0
    running_seen = None  # when GET /v1/training_jobs/{id} first read `running`
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if running_seen is None and ok(client.get(f"/v1/training_jobs/{job_id}"))["status"] not in (
            "queued",
            "provisioning",
        ):
            running_seen = time.time()
        latest = ok(client.get(f"/v1/training_jobs/{job_id}/metrics", params={"max_points": 1}))["latest_step"] or 0
        now = time.time()
        for step in range(last + 1, latest + 1):
            seen[step] = now
        last = max(last, latest)
        if last >= steps:
            break
        time.sleep(poll_s)
    job = ok(client.get(f"/v1/training_jobs/{job_id}"))
    while job["status"] not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = ok(client.get(f"/v1/training_jobs/{job_id}"))
    if job["status"] != "completed":
        raise RuntimeError(f"{job_id} ended {job['status']}: {job.get('error')}")
    # The trainer's own write times, from the records as the box has them (the mirror copies the
    # remote progress.jsonl byte for byte).
    written = {}
    for line in (data_dir / "jobs" / job_id / "progress.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "metrics":
            written[record["step"]] = record["time"]
    latencies = [seen[s] - written[s] for s in sorted(seen) if s in written]
    items = ok(client.get(f"/v1/training_jobs/{job_id}/events", params={"limit": 1000}))["items"]
    return job, items, latencies, running_seen


def event(items: list[dict], kind: str) -> dict:
    found = [e for e in items if e["event_type"] == kind]
    if len(found) != 1:
        raise RuntimeError(f"expected one {kind} event, got {[e['event_type'] for e in items]}")
    return found[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="remote and local jobs each (alternating)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-s", type=float, default=0.2, help="seconds between the trainer's metrics")
    parser.add_argument("--poll-s", type=float, default=0.05, help="how often the API is asked")
    parser.add_argument("--json", help="append the results as one JSON line")
    args = parser.parse_args()
    if not shutil.which("/usr/sbin/sshd"):
        print("cannot run: /usr/sbin/sshd is missing (install.sh --dev installs openssh-server)", file=sys.stderr)
        return 2
    exit_on_sigterm()
    directory = Path(tempfile.mkdtemp(prefix="veri-box-remote-bench-"))
    runpod = RunPodStandIn.start(directory / "runpod")
    runpod.image_bin = str(Path(sys.executable).parent)
    remote: list[dict] = []
    local: list[list[float]] = []
    try:
        data_dir = directory / "box"
        env = {"PYTHONPATH": str(ROOT)}  # tests.fake_trainer, here and (uploaded) on the instance
        flags = ("--gpus", "none", "--cpu-slots", "1", "--trainers", FAKE_TRAINERS)
        with Server(data_dir, env, flags) as server:
            server.wait_healthy()
            headers = {"Authorization": f"Bearer {admin_key(data_dir)}"}  # provider settings are admin-only
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                ok(
                    client.put(
                        "/v1/settings/providers/runpod", json={"api_key": runpod.api_key, "base_url": runpod.url}
                    )
                )
                ids = {
                    "dataset": upload_dataset(client)["id"],
                    "reward": ok(
                        client.post(
                            "/v1/reward_functions",
                            data={"name": "zero"},
                            files={"file": ("reward.py", REWARD_SOURCE.encode(), "text/x-python")},
                        )
                    )["id"],
                }
                for _ in range(args.runs):
                    job, items, latencies, running_seen = run_job(
                        client, data_dir, ids, REMOTE_GPU, args.steps, args.step_s, args.poll_s
                    )
                    if job["provider"] != "runpod":
                        raise RuntimeError(f"the A100 job ran on {job['provider']}, not on a rented instance")
                    ready = stamp(event(items, "instance_ready")["timestamp"])
                    started = event(items, "trainer_started")["metadata"]
                    bootstrap = event(items, "bootstrap_done")["metadata"]
                    remote.append(
                        {
                            "job_id": job["id"],
                            "launched_to_ready_s": round(
                                ready - stamp(event(items, "instance_launched")["timestamp"]), 3
                            ),
                            "ready_to_trainer_started_s": started["seconds_since_ready"],
                            # The running event is stamped with the trainer's own report time.
                            "ready_to_running_s": round(stamp(event(items, "running")["timestamp"]) - ready, 3),
                            "ready_to_api_running_s": round(running_seen - ready, 3),
                            "bootstrap_s": bootstrap["seconds"],
                            "bootstrap": bootstrap["python"],
                            "metric_latency_s": [round(x, 3) for x in latencies],
                            "cost_usd": job["cost_usd"],
                        }
                    )
                    job, _, latencies, _ = run_job(
                        client, data_dir, ids, LOCAL_GPU, args.steps, args.step_s, args.poll_s
                    )
                    if job["provider"] != "local":
                        raise RuntimeError(f"the cpu job ran on {job['provider']}")
                    local.append([round(x, 3) for x in latencies])
                if runpod.running():
                    raise RuntimeError(f"instances left running: {[i.id for i in runpod.running()]}")
    finally:
        runpod.stop()  # terminates whatever is left, sshd and all it started
        shutil.rmtree(directory, ignore_errors=True)

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "n": len(values),
            "median_s": round(statistics.median(values), 3),
            "p90_s": round(percentile(values, 90), 3),
            "max_s": round(max(values), 3),
        }

    remote_latency = spread([x for r in remote for x in r["metric_latency_s"]])
    local_latency = spread([x for run in local for x in run])
    ready_to_running = statistics.median(r["ready_to_api_running_s"] for r in remote)
    print(f"(a) remote jobs on the RunPod stand-in, warm bootstrap ({remote[0]['bootstrap']}), fake trainer:")
    print_table(
        ["run", "launched->ready", "bootstrap", "ready->trainer started", "ready->running", "ready->API running"],
        [
            [
                n + 1,
                r["launched_to_ready_s"],
                r["bootstrap_s"],
                r["ready_to_trainer_started_s"],
                r["ready_to_running_s"],
                r["ready_to_api_running_s"],
            ]
            for n, r in enumerate(remote)
        ],
    )
    print("(seconds; trainer started: the box's detached start returned; running: the trainer's first report,")
    print(" by its own clock; API running: the first GET /v1/training_jobs/{id} that read it)")
    print(f"median ready->API running: {ready_to_running:.2f} s (target < {READY_TO_RUNNING_TARGET_S:g} s)")
    print()
    print(f"(b) metric latency, trainer write -> GET .../metrics (polled every {args.poll_s:g} s),")
    print(f"    {args.steps} steps x {args.runs} jobs each, a metric every {args.step_s:g} s:")
    print_table(
        ["executor", "points", "median s", "p90 s", "max s"],
        [
            ["local", local_latency["n"], local_latency["median_s"], local_latency["p90_s"], local_latency["max_s"]],
            [
                "remote (ssh)",
                remote_latency["n"],
                remote_latency["median_s"],
                remote_latency["p90_s"],
                remote_latency["max_s"],
            ],
        ],
    )
    print(f"remote median {remote_latency['median_s']:.2f} s (target < {METRIC_LATENCY_TARGET_S:g} s)")
    met = ready_to_running < READY_TO_RUNNING_TARGET_S and remote_latency["median_s"] < METRIC_LATENCY_TARGET_S
    emit_json(
        {
            "bench": "remote_dispatch",
            "runs": args.runs,
            "steps": args.steps,
            "step_s": args.step_s,
            "remote": remote,
            "ready_to_api_running_median_s": round(ready_to_running, 3),
            "metric_latency_remote": remote_latency,
            "metric_latency_local": local_latency,
            "targets_met": met,
        },
        args.json,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
