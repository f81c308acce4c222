"""Benchmark: a deployment's request log when it is big (veri_box/deployment_requests.py).

Writes ROWS request rows (default 1,000,000: about 12 requests/s for a day) for one deployment
straight into a fresh data dir's SQLite file, spread evenly over the last 23 hours, 2% of them
errors, then starts a real `veri-box serve` on it and times, over loopback HTTP with a key,
3 warm-up and REQUESTS timed requests each of:
- GET /v1/deployments/{id}/metrics (24 h counts, error rate, percentiles over the newest 10,000);
- GET .../requests (the newest 50), the same 10 pages deep (after=), and errors_only;
- GET .../metrics/timeseries: auto over the default 7 days (hourly buckets) and minute buckets
  over the last 6 hours.
It also reports the log's size on disk per row, and checks the answers add up (every row is
counted once, the errors are the errors).

    .venv/bin/python bench/deployment_metrics.py
    .venv/bin/python bench/deployment_metrics.py --rows 200000 --json out.jsonl
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Server, create_key, emit_json, exit_on_sigterm, print_table, summary_ms  # noqa: E402

from veri_box.store import Store, now  # noqa: E402

DEPLOYMENT = "dep_bench"


def fill(db_path: Path, rows: int) -> None:
    store = Store(db_path)  # migrations applied, as the server will find it
    stamp = now()
    store.insert_deployment(
        {
            "id": DEPLOYMENT,
            "name": "bench",
            "model": "veri-box/tiny-lm",
            "source": "huggingface",
            "base_model": "veri-box/tiny-lm",
            "status": "stopped",
            "engine": "transformers",
            "gpu_requested": '{"type": "cpu", "count": 1}',
            "gpu": '{"type": "cpu", "count": 1}',
            "events": "[]",
            "created_at": stamp,
            "started_at": stamp,
            "stopped_at": stamp,
        }
    )
    rng = random.Random(0)
    end = int(time.time() * 1000) - 60_000
    start = end - 23 * 3600 * 1000  # inside the 24 h window for the whole run
    step = (end - start) / rows

    def row(i: int) -> tuple:
        at = int(start + i * step)
        created = datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        failed = i % 50 == 0
        latency = rng.lognormvariate(4.5, 0.4)
        return (
            f"req_{i:024x}",
            DEPLOYMENT,
            at,
            created,
            created,
            400 if failed else 200,
            i % 2,
            None if failed else 20,
            None if failed else 64,
            int(not failed),
            latency,
            latency / 8,
            None if failed or i % 2 == 0 else latency / 6,
            None,
            None if failed or i % 2 == 0 else latency / 70,
            200,
            2000,
            None if failed else "length",
            "invalid_temperature" if failed else None,
            "temperature must be between 0 and 2." if failed else None,
            0,
        )

    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany(
            "INSERT INTO deployment_requests (id, deployment_id, at_ms, created_at, completed_at, status_code,"
            " streamed, prompt_tokens, completion_tokens, usage_reported, e2e_latency_ms, ttfb_ms, ttft_ms,"
            " generation_ms, tpot_ms, request_bytes, response_bytes, finish_reason, error_category,"
            " error_message, client_disconnected) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row(i) for i in range(rows)),
        )
        # The hourly sums the box keeps as it writes each row (Store.add_deployment_request).
        conn.execute(
            "INSERT INTO deployment_request_hours SELECT deployment_id, at_ms / 3600000 * 3600000, COUNT(*),"
            " SUM(status_code >= 400 OR error_category IS NOT NULL), COALESCE(SUM(prompt_tokens), 0),"
            " COALESCE(SUM(completion_tokens), 0), SUM(e2e_latency_ms), MAX(e2e_latency_ms),"
            " COALESCE(SUM(ttft_ms), 0), COUNT(ttft_ms) FROM deployment_requests GROUP BY 1, 2"
        )
    conn.execute("VACUUM")
    conn.close()


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="deployment-metrics-"))
    data = root / "data"
    t0 = time.perf_counter()
    fill(data / "veri-box.db", args.rows)
    print(f"wrote {args.rows:,} request rows in {time.perf_counter() - t0:.1f} s")
    size = sum(p.stat().st_size for p in data.glob("veri-box.db*"))
    with Server(data, flags=("--gpus", "none", "--cpu-slots", "0")) as server:
        server.wait_healthy()
        key = re.search(r"vk_[0-9a-f]{40}", create_key(data)).group(0)
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        base = f"/v1/deployments/{DEPLOYMENT}"

        def get(path: str, **params) -> dict:
            response = client.get(path, params=params)
            if response.status_code != 200:
                raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:300]}")
            return response.json()

        metrics = get(f"{base}/metrics")
        errors = (args.rows + 49) // 50
        assert metrics["requests_24h"] == args.rows and metrics["errors_24h"] == errors, metrics
        cursor = None
        for _ in range(10):
            page = get(f"{base}/requests", **({"after": cursor} if cursor else {}))
            cursor = page["data"][-1]["id"]
        deep = {"after": cursor}
        hourly = get(f"{base}/metrics/timeseries")
        assert hourly["interval"] == "hour" and sum(b["requests"] for b in hourly["buckets"]) == args.rows, hourly
        cases = [
            ("metrics (24 h)", f"{base}/metrics", {}),
            ("requests, newest 50", f"{base}/requests", {}),
            ("requests, page 11", f"{base}/requests", deep),
            ("requests, errors_only", f"{base}/requests", {"errors_only": "true"}),
            ("timeseries auto (7 d, hourly)", f"{base}/metrics/timeseries", {}),
            (
                "timeseries minute (6 h)",
                f"{base}/metrics/timeseries",
                {
                    "interval": "minute",
                    "from": datetime.fromtimestamp(time.time() - 6 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            ),
        ]
        results = {}
        for name, path, params in cases:
            for _ in range(3):
                get(path, **params)
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                get(path, **params)
                times.append(time.perf_counter() - t)
            results[name] = summary_ms(times)
    print(f"\n{args.rows:,} rows over 23 h; database {size / 1e6:.0f} MB ({size / args.rows:.0f} bytes a row)")
    print_table(
        ["GET", "median ms", "p90 ms", "max ms"],
        [[k, v["median_ms"], v["p90_ms"], v["max_ms"]] for k, v in results.items()],
    )
    emit_json({"rows": args.rows, "db_bytes": size, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
