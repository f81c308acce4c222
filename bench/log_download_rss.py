"""The server's memory while clients download a long training log: a real `veri-box serve`, one
finished job whose train.log is 300 MB, five concurrent `GET /v1/training_jobs/{id}/logs/full`.

    .venv/bin/python bench/log_download_rss.py [--log-mb 300] [--clients 5] [--json FILE]

The server's RSS (/proc/PID/status VmRSS) is sampled every 10 ms from before the downloads
until they end. Target: peak RSS < 150 MB, every download complete and byte-exact in size.
Prints a table and one `JSON {...}` line; exit status 0 only when the target is met.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    Server,
    create_key,
    emit_json,
    exit_on_sigterm,
    make_job,
    print_table,
    proc_status_kb,
)

TARGET_PEAK_MB = 150
LINE = b"step 123: loss=0.4321 reward=0.9876 kl=0.0012 lr=1.0e-06 ".ljust(1023, b".") + b"\n"  # 1 KiB


def write_log(path: Path, megabytes: int) -> int:
    block = LINE * 1024
    with path.open("wb") as out:
        for _ in range(megabytes):
            out.write(block)
    return path.stat().st_size


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/training_jobs/{job_id}").json()["status"]
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not end within {timeout}s")


def download(url: str, headers: dict, sizes: list[int], times: list[float]) -> None:
    started, size = time.perf_counter(), 0
    with httpx.Client(headers=headers, timeout=120) as client, client.stream("GET", url) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            size += len(chunk)
    sizes.append(size)
    times.append(time.perf_counter() - started)


def sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        kb = proc_status_kb(pid, "VmRSS")
        if kb is not None:
            samples.append(kb)
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-mb", type=int, default=300)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--json", help="append the JSON line to this file")
    args = parser.parse_args()
    exit_on_sigterm()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        # The stdlib fake trainer finishes the job at once; the log is then ours to fill.
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        flags = ("--gpus", "none", "--trainers", "grpo=tests.fake_trainer")
        with Server(data_dir, env=env, flags=flags) as server:
            server.wait_healthy()
            key = create_key(data_dir)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
                job = make_job(client)
                status = wait_terminal(client, job["id"])
                url = f"{server.url}/v1/training_jobs/{job['id']}/logs/full"
                client.get(url).raise_for_status()  # the route warmed up on the trainer's small log
            log_bytes = write_log(data_dir / "jobs" / job["id"] / "train.log", args.log_mb)
            time.sleep(0.5)
            baseline_kb = proc_status_kb(server.proc.pid, "VmRSS") or 0

            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(server.proc.pid, stop, samples))
            sampler.start()
            sizes: list[int] = []
            times: list[float] = []
            started = time.perf_counter()
            clients = [
                threading.Thread(target=download, args=(url, headers, sizes, times)) for _ in range(args.clients)
            ]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            wall = time.perf_counter() - started
            stop.set()
            sampler.join()

    peak_mb = max(samples, default=baseline_kb) / 1024
    complete = len(sizes) == args.clients and all(size == log_bytes for size in sizes)
    result = {
        "log_mb": round(log_bytes / 2**20, 1),
        "clients": args.clients,
        "job_status": status,
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "wall_s": round(wall, 2),
        "slowest_download_s": round(max(times, default=0.0), 2),
        "all_complete": complete,
        "target_peak_mb": TARGET_PEAK_MB,
        "met": complete and peak_mb < TARGET_PEAK_MB,
    }
    print_table(
        ["log MB", "clients", "baseline RSS MB", "peak RSS MB", "wall s", "complete"],
        [
            [
                result["log_mb"],
                args.clients,
                result["baseline_rss_mb"],
                result["peak_rss_mb"],
                result["wall_s"],
                complete,
            ]
        ],
    )
    emit_json(result, args.json)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
