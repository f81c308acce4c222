"""Benchmark: dashboard pages with 10,000 jobs in the store.

Starts a real `veri-box serve` (no devices, so nothing is placed or run), uploads a dataset and a
reward function through the API, writes JOBS jobs of mixed statuses straight into the server's
SQLite file with Store.create_job (one of them a "showcase" run with STEPS logged steps of ten
metrics, rollouts for every tenth step and a checkpoint), logs in through /login like a browser
and times each page and fragment over HTTP with one persistent client. The time is measured at
the client on loopback, so it is an upper bound of the server's own time. Every answer must be
200 HTML (or JSON for the chart data) with the content the page promises.

    .venv/bin/python bench/dashboard_render.py
    .venv/bin/python bench/dashboard_render.py --jobs 10000 --requests 50 --json out.jsonl
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    METRIC_KEYS,
    REWARD_SOURCE,
    Server,
    _ok,
    create_key,
    emit_json,
    exit_on_sigterm,
    print_table,
    summary_ms,
    upload_dataset,
)

TARGET_MS = 100.0
STATUS_MIX = [("completed", 0.6), ("failed", 0.2), ("cancelled", 0.15), ("running", 0.05)]


def fill(db_path: Path, dataset_id: str, rf_id: str, jobs: int, steps: int) -> tuple[str, float]:
    """JOBS jobs of mixed statuses; returns the showcase job's id and the seconds it took."""
    from veri_box.store import Store, new_id, now

    store = Store(db_path)
    rng = random.Random(0)
    statuses = [s for s, share in STATUS_MIX for _ in range(round(share * 100))]
    started = time.perf_counter()
    showcase = ""
    for i in range(jobs):
        status = "running" if i == jobs - 1 else rng.choice(statuses)
        stamp = now()
        job = {
            "id": new_id("job_"),
            "status": status,
            "base_model": rng.choice(["Qwen/Qwen3-4B", "Qwen/Qwen3-0.6B", "/models/tiny"]),
            "dataset_id": dataset_id,
            "reward_function_id": rf_id,
            "reward_functions": [{"id": rf_id, "weight": 1.0}],
            "environments": None,
            "method": "grpo",
            "output_name": f"run-{i}",
            "hyperparameters": {"learning_rate": 1e-6, "max_steps": steps},
            "gpu_requested": {"type": "cpu", "count": 1},
            "gpu": {"type": "cpu", "count": 1},
            "provider": None,
            "checkpoint_destination": {"type": "veri"},
            "requires_heartbeat": 0,
            "created_at": stamp,
            "started_at": stamp,
            "completed_at": None if status == "running" else stamp,
            "current_step": steps if status == "completed" else rng.randrange(steps),
            "total_steps": steps,
            "current_loss": 0.1,
            "error_code": "out_of_memory" if status == "failed" else None,
            "error_message": "CUDA out of memory." if status == "failed" else None,
        }
        store.create_job(job, [])
        showcase = job["id"]
    store.add_metrics(
        showcase,
        [(s, {k: math.sin(s / 50 + n) for n, k in enumerate(METRIC_KEYS)}) for s in range(1, steps + 1)],
    )
    samples = [
        {
            "step": s,
            "prompt": f"prompt {g}",
            "completion": f"completion {g}.{c}",
            "reward": rng.random() if g else 1.0,
            "advantage": 0.0,
            "group": g,
            "rewards": {"r": 0.5},
        }
        for s in range(10, steps + 1, 10)
        for g in range(4)
        for c in range(8)
    ]
    store.add_samples(showcase, samples)
    store.add_checkpoint(showcase, steps, "checkpoints/checkpoint-last")
    for n in range(5):
        store.add_event(showcase, "checkpoint_saved", {"step": n})
    return showcase, time.perf_counter() - started


def login(client: httpx.Client, key: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"_csrf": token, "api_key": key, "next": "/jobs"})
    if r.status_code != 303:
        raise RuntimeError(f"login failed: {r.status_code} {r.text[:300]}")


def pages(job_id: str, after: str) -> list[tuple[str, str, str]]:
    """(name, path, a string the answer must contain)."""
    return [
        ("jobs list", "/jobs", 'id="job-table"'),
        ("jobs ?status=running", "/jobs?status=running", "running ("),
        ("jobs ?method=grpo page 2", f"/jobs?method=grpo&after={after}", "Older"),
        ("jobs table fragment", "/jobs/table", 'id="job-table"'),
        ("new job form", "/jobs/new", "hp.learning_rate"),
        ("clone form", f"/jobs/new?clone={job_id}", "-copy"),
        ("job page", f"/jobs/{job_id}", 'id="charts"'),
        ("job summary fragment", f"/jobs/{job_id}/summary", 'id="summary"'),
        ("chart data (4 keys)", f"/jobs/{job_id}/metrics.json?keys=loss,reward,kl,entropy", '"available_keys"'),
        ("chart data (all 10 keys)", f"/jobs/{job_id}/metrics.json", '"available_keys"'),
        ("chart poll (from_step)", f"/jobs/{job_id}/metrics.json?from_step=1990", '"latest_step"'),
        ("rollouts (latest step)", f"/jobs/{job_id}/rollouts", "zero-variance"),
        ("artifacts fragment", f"/jobs/{job_id}/artifacts", "step"),
        ("datasets", "/datasets", 'id="datasets-panel"'),
        ("reward functions", "/reward-functions", 'id="rf-panel"'),
        ("settings", "/settings", 'id="device-table"'),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=2000, help="logged steps of the showcase job")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with Server(data_dir, flags=("--gpus", "none", "--cpu-slots", "0")) as server:
            server.wait_healthy()
            key = create_key(data_dir)
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
                dataset = upload_dataset(api)
                rf = _ok(
                    api.post("/v1/reward_functions", data={"name": "zero"}, files={"file": ("r.py", REWARD_SOURCE)})
                )
            job_id, took = fill(data_dir / "veri-box.db", dataset["id"], rf["id"], args.jobs, args.steps)
            print(f"stored {args.jobs} jobs in {took:.1f} s ({args.jobs / took:.0f} jobs/s)")
            with httpx.Client(base_url=server.url, timeout=60) as browser:
                login(browser, key)
                first_page = browser.get("/jobs?method=grpo").text
                after = re.findall(r'id="row-(job_[0-9a-f]+)"', first_page)[-1]
                rows, result = [], {"bench": "dashboard_render", "jobs": args.jobs, "pages": {}}
                failures = []
                for name, path, must in pages(job_id, after):
                    timings = []
                    for i in range(args.requests + 3):
                        start = time.perf_counter()
                        r = browser.get(path)
                        elapsed = time.perf_counter() - start
                        if r.status_code != 200 or must not in r.text:
                            raise RuntimeError(f"{path}: {r.status_code}, missing {must!r}: {r.text[:500]}")
                        if i >= 3:  # the first requests warm caches (templates, SQLite pages)
                            timings.append(elapsed)
                    stats = summary_ms(timings)
                    result["pages"][name] = {**stats, "bytes": len(r.content)}
                    ok = stats["p90_ms"] < TARGET_MS
                    if not ok:
                        failures.append(name)
                    rows.append(
                        [
                            name,
                            stats["median_ms"],
                            stats["p90_ms"],
                            stats["max_ms"],
                            len(r.content),
                            "ok" if ok else "SLOW",
                        ]
                    )
    print(f"\n{args.jobs} jobs; {args.requests} sequential requests per page over loopback HTTP (ms):")
    print_table(["page", "median", "p90", "max", "bytes", f"p90<{TARGET_MS:.0f}"], rows)
    result["target_ms"] = TARGET_MS
    result["slow_pages"] = failures
    emit_json(result, args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
