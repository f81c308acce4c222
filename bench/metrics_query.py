"""Benchmark: GET /v1/training_jobs/{id}/metrics on a job with ~1,000,000 stored points.

For each shape (KEYS x STEPS; default 10x100000 and 1x1000000) this starts a real `veri-box serve`
on a fresh temp data dir, makes a key, uploads a dataset and a reward function, submits a job,
fills its metrics straight into the server's SQLite file with Store.add_metrics (reporting the
insert rate), then times the metrics endpoint over HTTP with one persistent httpx.Client:
all keys with max_points=500, keys=loss,reward, and an incremental poll from_step=<latest-10>.
Every answer is checked (<= max_points points per key, the last step present, latest_step right).

    .venv/bin/python bench/metrics_query.py
    .venv/bin/python bench/metrics_query.py --shape 1x1000000 --requests 100 --json out.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import METRIC_KEYS, Server, create_key, emit_json, exit_on_sigterm, make_job, print_table, summary_ms  # noqa: E402

KEY_NAMES = METRIC_KEYS
TARGET_MEDIAN_MS = 20.0


def key_names(n: int) -> list[str]:
    return KEY_NAMES[:n] + [f"extra_{i}" for i in range(n - len(KEY_NAMES))] if n > len(KEY_NAMES) else KEY_NAMES[:n]


def value(key_index: int, step: int) -> float:
    return math.exp(-step / 250_000) * (1 + key_index) + 0.01 * math.sin(step * 0.37 + key_index)


def fill(db_path: Path, job_id: str, keys: list[str], steps: int, batch_points: int) -> dict:
    """Insert steps 1..STEPS for every key in batches of ~batch_points rows; time add_metrics only."""
    from veri_box.store import Store

    store = Store(db_path)
    per_batch = max(1, batch_points // len(keys))
    insert_s, total, batches = 0.0, 0, 0
    wall0 = time.perf_counter()
    for start in range(1, steps + 1, per_batch):
        points = [
            (s, {k: value(i, s) for i, k in enumerate(keys)}) for s in range(start, min(start + per_batch, steps + 1))
        ]
        t = time.perf_counter()
        total += store.add_metrics(job_id, points)
        insert_s += time.perf_counter() - t
        batches += 1
    wall = time.perf_counter() - wall0
    return {
        "points": total,
        "batches": batches,
        "rows_per_batch": per_batch * len(keys),
        "insert_s": round(insert_s, 3),
        "points_per_s": round(total / insert_s),
        "wall_s_incl_generation": round(wall, 3),
        "db_mb": round(sum(p.stat().st_size for p in db_path.parent.glob("veri-box.db*")) / 2**20, 1),
    }


def check(
    body: dict,
    wanted: list[str],
    all_keys: list[str],
    latest: int,
    max_points: int,
    first: int | None,
    expect_steps: list[int] | None,
) -> list[str]:
    """Problems with one answer (empty when it is right)."""
    problems = []
    if body.get("latest_step") != latest:
        problems.append(f"latest_step {body.get('latest_step')} != {latest}")
    if body.get("available_keys") != sorted(all_keys):
        problems.append(f"available_keys {body.get('available_keys')}")
    per_key: dict[str, list[int]] = {k: [] for k in wanted}
    for point in body["metrics"]:
        for k in point["values"]:
            if k not in per_key:
                problems.append(f"unrequested key {k}")
                continue
            per_key[k].append(point["step"])
    for k, steps in per_key.items():
        if len(steps) > max_points:
            problems.append(f"{k}: {len(steps)} points > {max_points}")
        if not steps or steps[-1] != latest:
            problems.append(f"{k}: last step {steps[-1] if steps else None} != {latest}")
        if first is not None and (not steps or steps[0] != first):
            problems.append(f"{k}: first step {steps[0] if steps else None} != {first}")
        if expect_steps is not None and steps != expect_steps:
            problems.append(f"{k}: steps {steps[:3]}..{steps[-3:]} != {expect_steps[0]}..{expect_steps[-1]}")
    return problems


class Timeout(Exception):
    pass


def time_requests(client: httpx.Client, path: str, params: dict, warmup: int, n: int, verify, timeout: float) -> dict:
    """Warm up, then time n requests. A request over `timeout` seconds ends the scenario early
    (raises Timeout) so the run stays bounded even when the endpoint is pathologically slow."""
    times, failures, sizes, points = [], [], [], []
    for i in range(warmup + n):
        t = time.perf_counter()
        try:
            r = client.get(path, params=params, timeout=timeout)
        except httpx.TimeoutException:
            raise Timeout(f"request {i + 1} (of {warmup} warm-up + {n}) took > {timeout:g} s") from None
        elapsed = time.perf_counter() - t
        r.raise_for_status()
        body = r.json()
        failures.extend(verify(body))
        if i >= warmup:
            times.append(elapsed)
            sizes.append(len(r.content))
            points.append(len(body["metrics"]))
    result = summary_ms(times)
    result.update(
        {
            "response_kb": round(max(sizes) / 1024, 1),
            "steps_returned": max(points),
            "checks_failed": len(failures),
            "first_failure": failures[0] if failures else None,
        }
    )
    return result


class _Deadline:
    """Abort this thread's SQLite statements after `seconds` (a progress handler), so an
    in-process timing cannot run for minutes either."""

    def __init__(self, conn, seconds: float):
        self.conn, self.seconds = conn, seconds

    def __enter__(self):
        end = time.perf_counter() + self.seconds
        self.conn.set_progress_handler(lambda: int(time.perf_counter() > end), 10_000)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.conn.set_progress_handler(None, 0)
        if exc_type is not None and "interrupted" in str(exc):
            raise Timeout(f"> {self.seconds:g} s") from None


def _timed(fn, warmup: int, n: int, conn, timeout: float) -> dict:
    try:
        for _ in range(warmup):
            with _Deadline(conn, timeout):
                fn()
        times = []
        for _ in range(n):
            with _Deadline(conn, timeout):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return summary_ms(times)
    except Timeout as why:
        return {"timeout": str(why)}


def time_in_process(
    db_path: Path, job_id: str, scenarios: list[tuple[str, dict]], warmup: int, n: int, timeout: float
) -> tuple[dict, dict]:
    """The same queries through veri_box.metrics.query in this process (SQLite + Python only, no
    HTTP, routing, auth or JSON), and each Store call that query makes, for the first key."""
    from veri_box import metrics
    from veri_box.store import Store

    store = Store(db_path)
    conn = store.db.conn
    out = {}
    for name, params in scenarios:
        keys = params.get("keys")
        args = (
            store,
            job_id,
            keys.split(",") if keys else None,
            params.get("from_step"),
            params.get("to_step"),
            params.get("max_points", 500),
        )
        out[name] = _timed(lambda: metrics.query(*args), warmup, n, conn, timeout)

    key = store.metric_keys(job_id)[0]
    first, last = store.metric_step_bounds(job_id, key, None, None)
    mp = scenarios[0][1].get("max_points", 500)
    targets = metrics._targets(first, last, mp)
    calls = {
        "metric_keys": lambda: store.metric_keys(job_id),
        "latest_metric_step": lambda: store.latest_metric_step(job_id),
        "metric_step_bounds": lambda: store.metric_step_bounds(job_id, key, None, None),
        f"metric_count_upto(cap={mp + 1})": lambda: store.metric_count_upto(job_id, key, first, last, mp + 1),
        f"metric_points_at_or_after({mp} targets)": lambda: store.metric_points_at_or_after(job_id, key, targets),
    }
    breakdown = {f"{name} [{key}]": _timed(fn, 1, 5, conn, timeout) for name, fn in calls.items()}
    return out, breakdown


def _ms(r: dict, field: str):
    return r.get(field, "TIMEOUT")


def run_shape(n_keys: int, steps: int, args: argparse.Namespace) -> dict:
    keys = key_names(n_keys)
    with tempfile.TemporaryDirectory(prefix="veri-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with Server(data_dir) as server:
            server.wait_healthy()
            api_key = create_key(data_dir)
            headers = {"Authorization": f"Bearer {api_key}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                job = make_job(client)
            print(
                f"\n== shape {n_keys} keys x {steps:,} steps  (job {job['id']}, server pid {server.proc.pid})",
                flush=True,
            )
            ins = fill(data_dir / "veri-box.db", job["id"], keys, steps, args.batch_points)
            print(
                f"inserted {ins['points']:,} points in {ins['batches']} batches of {ins['rows_per_batch']:,}: "
                f"{ins['insert_s']} s in add_metrics -> {ins['points_per_s']:,} points/s "
                f"(wall incl. generating points {ins['wall_s_incl_generation']} s; db {ins['db_mb']} MB)",
                flush=True,
            )

            latest, mp = steps, args.max_points
            two = [k for k in ("loss", "reward") if k in keys]
            scenarios = [
                ("all keys", {"max_points": mp}, keys, 1, None),
                ("keys=loss,reward", {"keys": "loss,reward", "max_points": mp}, two, 1, None),
                (
                    f"from_step={latest - 10}",
                    {"from_step": latest - 10, "max_points": mp},
                    keys,
                    None,
                    list(range(latest - 10, latest + 1)),
                ),
            ]
            path = f"/v1/training_jobs/{job['id']}/metrics"
            results = {}
            for name, params, wanted, first, expect in scenarios:
                with httpx.Client(base_url=server.url, headers=headers) as client:
                    try:
                        r = time_requests(
                            client,
                            path,
                            params,
                            args.warmup,
                            args.requests,
                            lambda body, w=wanted, f=first, e=expect: check(body, w, keys, latest, mp, f, e),
                            args.request_timeout,
                        )
                    except Timeout as why:
                        r = {"timeout": str(why)}
                if "timeout" in r:
                    # The server thread keeps running the abandoned query; a fresh server keeps it
                    # from skewing the next scenario.
                    r["server_restart_s"] = round(server.restart(), 3)
                    print(f"  {name}: TIMEOUT, {r['timeout']}; restarted the server", flush=True)
                r["params"] = params
                results[name] = r
        inproc, breakdown = (
            ({}, {})
            if args.no_in_process
            else time_in_process(
                data_dir / "veri-box.db",
                job["id"],
                [(n, p) for n, p, *_ in scenarios],
                args.warmup,
                args.requests,
                args.request_timeout,
            )
        )

    rows = []
    for name, r in results.items():
        if "timeout" in r:
            ok, target = "not run (timeout)", "NO"
        else:
            ok = "ok" if r["checks_failed"] == 0 else f"FAIL x{r['checks_failed']}: {r['first_failure']}"
            target = "yes" if r["median_ms"] < TARGET_MEDIAN_MS else "NO"
        ip = inproc.get(name, {})
        rows.append(
            [
                name,
                r.get("n", 0),
                _ms(r, "median_ms"),
                _ms(r, "p90_ms"),
                _ms(r, "max_ms"),
                ip.get("median_ms", "TIMEOUT" if ip else "-"),
                r.get("steps_returned", "-"),
                r.get("response_kb", "-"),
                target,
                ok,
            ]
        )
    print_table(
        [
            "query (HTTP)",
            "n",
            "median ms",
            "p90 ms",
            "max ms",
            "in-proc median ms",
            "steps",
            "KB",
            f"median<{TARGET_MEDIAN_MS:g}ms",
            "checks",
        ],
        rows,
    )
    print(f"(TIMEOUT = one request took > {args.request_timeout:g} s, so the scenario was cut short)")
    print(
        "checks per answer: <= max_points points per key; each key's last step == latest_step == "
        f"{latest}; available_keys correct; first step (1) kept when downsampled; "
        "incremental poll returns exactly steps latest-10..latest for every key"
    )
    if breakdown:
        print("in-process Store calls behind one key (median of 5):")
        print_table(
            ["store call", "median ms", "max ms"],
            [[name, _ms(b, "median_ms"), _ms(b, "max_ms")] for name, b in breakdown.items()],
        )
    return {
        "shape": f"{n_keys}x{steps}",
        "keys": n_keys,
        "steps": steps,
        "insert": ins,
        "http": results,
        "in_process": inproc,
        "store_calls": breakdown,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        action="append",
        metavar="KEYSxSTEPS",
        help="e.g. 10x100000 (repeatable; default: 10x100000 and 1x1000000)",
    )
    parser.add_argument("--keys", type=int, help="number of metric keys (with --steps: one shape)")
    parser.add_argument("--steps", type=int, help="steps per key (with --keys: one shape)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per query (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    parser.add_argument("--max-points", type=int, default=500)
    parser.add_argument("--batch-points", type=int, default=100_000, help="rows per add_metrics call")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds before one request counts as a timeout and ends its scenario (default 10)",
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process metrics.query timing")
    parser.add_argument("--json", help="append the JSON result line to this file too")
    args = parser.parse_args()

    shapes: list[tuple[int, int]] = []
    if args.keys or args.steps:
        shapes.append((args.keys or 10, args.steps or 100_000))
    for s in args.shape or []:
        k, _, n = s.lower().partition("x")
        shapes.append((int(k), int(n)))
    shapes = shapes or [(10, 100_000), (1, 1_000_000)]

    exit_on_sigterm()
    t0 = time.perf_counter()
    results = [run_shape(k, n, args) for k, n in shapes]
    print(
        f"\nTarget: median < {TARGET_MEDIAN_MS:g} ms per metrics request.  Total run {time.perf_counter() - t0:.1f} s"
    )
    answers = [r for res in results for r in res["http"].values()]
    timeouts = sum("timeout" in r for r in answers)
    all_ok = all(r.get("checks_failed") == 0 for r in answers if "timeout" not in r)
    met = all(r.get("median_ms", math.inf) < TARGET_MEDIAN_MS for r in answers)
    print(
        f"correctness checks on answered requests: {'all passed' if all_ok else 'FAILURES'}; "
        f"scenarios timed out: {timeouts} of {len(answers)}; target met: {'yes' if met else 'NO'}"
    )
    emit_json(
        {
            "bench": "metrics_query",
            "target_median_ms": TARGET_MEDIAN_MS,
            "checks_passed": all_ok,
            "target_met": met,
            "shapes": results,
        },
        args.json,
    )
    return 0 if all_ok and met else 1


if __name__ == "__main__":
    sys.exit(main())
