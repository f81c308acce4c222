"""Benchmark: /compare of 5 jobs x 10 keys x 100,000 logged steps each (issue 16: < 200 ms).

Starts a real `veri-box serve` (no devices: nothing runs), uploads a dataset and a reward
function through the API, writes JOBS GRPO jobs that differ in learning rate straight into the
server's SQLite file with Store.create_job and Store.add_metrics (STEPS steps of ten keys each),
logs in through /login like a browser, and times over HTTP with one persistent client:

- the /compare page itself (what the server renders: the jobs, their key lists, the diff table);
- each job's chart data as the page's script reads it (metrics.json, 10 keys, 1000 points);
- the whole view: the page and its JOBS chart reads one after another (a browser runs them in
  parallel, so this is an upper bound of what a reader waits for).

Times are taken at the client on loopback, so they are upper bounds of the server's own time.

    .venv/bin/python bench/compare_render.py
    .venv/bin/python bench/compare_render.py --jobs 5 --steps 100000 --requests 30 --json out.jsonl
"""

from __future__ import annotations

import argparse
import math
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

TARGET_MS = 200.0
CHUNK = 5000  # steps per insert transaction


def fill(db_path: Path, dataset_id: str, rf_id: str, jobs: int, steps: int) -> tuple[list[str], float]:
    from veri_box.store import Store, new_id, now

    store = Store(db_path)
    started = time.perf_counter()
    ids = []
    for i in range(jobs):
        stamp = now()
        job = {
            "id": new_id("job_"),
            "status": "completed",
            "base_model": "Qwen/Qwen3-0.6B",
            "dataset_id": dataset_id,
            "reward_function_id": rf_id,
            "reward_functions": [{"id": rf_id, "weight": 1.0}],
            "environments": None,
            "method": "grpo",
            "output_name": f"lr-{i}",
            "hyperparameters": {"learning_rate": 1e-6 * (i + 1), "max_steps": steps, "kl_coef": 0.001, "seed": 42},
            "gpu_requested": {"type": "cpu", "count": 1},
            "gpu": {"type": "cpu", "count": 1},
            "provider": None,
            "checkpoint_destination": {"type": "veri"},
            "requires_heartbeat": 0,
            "created_at": stamp,
            "started_at": stamp,
            "completed_at": stamp,
            "current_step": steps,
            "total_steps": steps,
            "current_loss": 0.1,
        }
        store.create_job(job, [])
        for lo in range(1, steps + 1, CHUNK):
            store.add_metrics(
                job["id"],
                [
                    (s, {k: math.sin(s / 500 + n + i) for n, k in enumerate(METRIC_KEYS)})
                    for s in range(lo, min(lo + CHUNK, steps + 1))
                ],
            )
        ids.append(job["id"])
    return ids, time.perf_counter() - started


def login(client: httpx.Client, key: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"_csrf": token, "api_key": key, "next": "/jobs"})
    if r.status_code != 303:
        raise RuntimeError(f"login failed: {r.status_code} {r.text[:300]}")


def timed(client: httpx.Client, path: str, must: str) -> tuple[float, int]:
    start = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - start
    if r.status_code != 200 or must not in r.text:
        raise RuntimeError(f"{path}: {r.status_code}, missing {must!r}: {r.text[:500]}")
    return elapsed, len(r.content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100_000, help="logged steps per job (ten keys each)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per measurement")
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
            ids, took = fill(data_dir / "veri-box.db", dataset["id"], rf["id"], args.jobs, args.steps)
            points = args.jobs * args.steps * len(METRIC_KEYS)
            print(
                f"stored {args.jobs} jobs x {args.steps} steps x {len(METRIC_KEYS)} keys"
                f" ({points} values) in {took:.1f} s"
            )
            page = "/compare?jobs=" + ",".join(ids)
            keys = ",".join(METRIC_KEYS)
            data = [f"/jobs/{j}/metrics.json?keys={keys}&max_points=1000" for j in ids]
            with httpx.Client(base_url=server.url, timeout=60) as browser:
                login(browser, key)
                page_t, data_t, view_t = [], [], []
                page_bytes = data_bytes = 0
                for i in range(args.requests + 3):
                    t, page_bytes = timed(browser, page, 'id="hp-diff"')
                    reads = [timed(browser, path, '"available_keys"') for path in data]
                    data_bytes = reads[0][1]
                    if i >= 3:  # the first requests warm caches (templates, SQLite pages)
                        page_t.append(t)
                        data_t.extend(r[0] for r in reads)
                        view_t.append(t + sum(r[0] for r in reads))
    result = {
        "bench": "compare_render",
        "jobs": args.jobs,
        "steps": args.steps,
        "keys": len(METRIC_KEYS),
        "target_ms": TARGET_MS,
        "compare_page": {**summary_ms(page_t), "bytes": page_bytes},
        "chart_data_per_job": {**summary_ms(data_t), "bytes": data_bytes},
        "whole_view_sequential": summary_ms(view_t),
    }
    rows = [
        [
            "/compare page (server render)",
            *[result["compare_page"][k] for k in ("median_ms", "p90_ms", "max_ms")],
            page_bytes,
        ],
        [
            "metrics.json per job (10 keys)",
            *[result["chart_data_per_job"][k] for k in ("median_ms", "p90_ms", "max_ms")],
            data_bytes,
        ],
        [
            f"page + {args.jobs} chart reads, in a row",
            *[result["whole_view_sequential"][k] for k in ("median_ms", "p90_ms", "max_ms")],
            "",
        ],
    ]
    print(
        f"\n{args.jobs} jobs x {args.steps} steps x {len(METRIC_KEYS)} keys;"
        f" {args.requests} requests each, loopback HTTP (ms):"
    )
    print_table(["measure", "median", "p90", "max", "bytes"], rows)
    ok = result["compare_page"]["p90_ms"] < TARGET_MS
    print(
        f"\n/compare p90 {result['compare_page']['p90_ms']:.1f} ms:"
        f" {'within' if ok else 'OVER'} the {TARGET_MS:.0f} ms target"
    )
    result["ok"] = ok
    emit_json(result, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
