"""Benchmark: how long a job takes to get going on Slurm, and to give its GPUs back on cancel.

Starts the one-node test cluster of tests/slurm_cluster.py (munged, slurmctld, slurmd on
127.0.0.1, fake GRES gpu:a100:2) and a real `veri-box serve --slurm debug` whose jobs run the
stdlib test trainer, and measures:

  (a) bare sbatch -> RUNNING: a one-line batch script, squeue polled every 50 ms (Slurm alone);
  (b) through the box, POST /v1/training_jobs -> sbatch (event `slurm_submitted`) -> Slurm
      RUNNING (event `slurm_running`) -> the job `running` (the trainer's first report);
  (c) cancel -> free: POST cancel on a running job, then until Slurm no longer holds its GPU
      (sinfo GresUsed back to 0) and until no process of the job is left on the machine.

    .venv/bin/python bench/slurm_timings.py
    .venv/bin/python bench/slurm_timings.py --runs 5 --json out.jsonl

Needs root and Slurm/munge installed (install.sh --dev).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import REWARD_SOURCE, ROOT, Server, create_key, exit_on_sigterm  # noqa: E402
from slurm_cluster import PARTITION, SlurmCluster, missing  # noqa: E402

FAKE_TRAINERS = "grpo=tests.fake_trainer,sft_video_gen=tests.fake_trainer"


def wait(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout} s")


def squeue_state(slurm_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "--states=all", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip()


def gpus_in_use() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-O", "GresUsed"], capture_output=True, text=True).stdout
    return sum(int(part.split("(")[0].split(":")[-1]) for part in out.split() if part.startswith("gpu"))


def job_processes(job_dir: Path) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(job_dir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def bare_sbatch(directory: Path) -> float:
    script = directory / "sleep.sh"
    script.write_text("#!/bin/sh\nsleep 30\n")
    t0 = time.perf_counter()
    done = subprocess.run(
        ["sbatch", "--parsable", "--gres=gpu:a100:1", f"--output={directory / 'sleep.out'}", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    slurm_id = done.stdout.strip()
    wait(lambda: squeue_state(slurm_id) == "RUNNING")
    elapsed = time.perf_counter() - t0
    subprocess.run(["scancel", slurm_id], check=True)
    wait(lambda: gpus_in_use() == 0)
    return elapsed


def box_run(client: httpx.Client, data_dir: Path) -> dict:
    body = "".join(json.dumps({"prompt": f"hi {i}"}) + "\n" for i in range(2)).encode()
    dataset = client.post("/v1/datasets", data={"name": "b"}, files={"file": ("d.jsonl", body, "application/jsonl")})
    rf = client.post("/v1/reward_functions", data={"name": "z"}, files={"file": ("r.py", REWARD_SOURCE.encode())})
    t0 = time.perf_counter()
    wall0 = time.time()
    r = client.post(
        "/v1/training_jobs",
        json={
            "base_model": "fake:steps=100000,step_s=0.1",
            "dataset_id": dataset.json()["id"],
            "reward_function_id": rf.json()["id"],
            "output_name": "bench",
            "gpu": {"type": "A100-80GB", "count": 1},
        },
    )
    job_id = r.json()["id"]
    wait(lambda: client.get(f"/v1/training_jobs/{job_id}").json()["status"] == "running", interval=0.02)
    running = time.perf_counter() - t0

    def read_events() -> dict[str, float]:
        items = client.get(f"/v1/training_jobs/{job_id}/events").json()["items"]
        return {e["event_type"]: stamp(e["timestamp"]) for e in items}

    # The runner notes Slurm's RUNNING when it polls, which may be just after the trainer's report.
    events = wait(lambda: (found := read_events()) and "slurm_running" in found and found)
    t1 = time.perf_counter()
    client.post(f"/v1/training_jobs/{job_id}/cancel")
    wait(lambda: gpus_in_use() == 0)
    gpu_free = time.perf_counter() - t1
    wait(lambda: not job_processes(data_dir / "jobs" / job_id))
    processes_gone = time.perf_counter() - t1
    return {
        "post_to_sbatch_s": round(events["slurm_submitted"] - wall0, 3),
        "sbatch_to_slurm_running_s": round(events["slurm_running"] - events["slurm_submitted"], 3),
        "post_to_job_running_s": round(running, 3),
        "cancel_to_gpu_free_s": round(gpu_free, 3),
        "cancel_to_no_process_s": round(processes_gone, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="append the results as one JSON line")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    exit_on_sigterm()
    directory = Path(tempfile.mkdtemp(prefix="veri-box-slurm-bench-"))
    directory.chmod(0o755)  # munged runs as its own user and walks through it
    try:
        with SlurmCluster.start(directory / "cluster") as cluster:
            os.environ.update(cluster.env)
            bare = [bare_sbatch(directory) for _ in range(args.runs)]
            data_dir = directory / "box"
            env = {"PYTHONPATH": str(ROOT)}  # tests.fake_trainer
            flags = ("--gpus", "none", "--cpu-slots", "0", "--slurm", PARTITION, "--trainers", FAKE_TRAINERS)
            with Server(data_dir, env, flags) as server:
                start_s = server.wait_healthy()
                headers = {"Authorization": f"Bearer {create_key(data_dir)}"}
                with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
                    runs = [box_run(client, data_dir) for _ in range(args.runs)]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "bench": "slurm_timings",
        "runs": args.runs,
        "serve_start_with_check_job_s": round(start_s, 3),
        "bare_sbatch_to_running_s": [round(b, 3) for b in bare],
        "box": runs,
    }
    print(f"veri-box serve --slurm start (incl. the shared-filesystem check job): {start_s:.2f} s")
    print(f"bare sbatch -> RUNNING: median {statistics.median(bare):.2f} s  {[round(b, 2) for b in bare]}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key}: median {statistics.median(values):.2f} s  {values}")
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
