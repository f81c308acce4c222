"""Benchmark: how fast `veri-box serve` starts and how much memory it holds.

(a) start to first answered request: spawn `veri-box serve` on a fresh data dir and a free port,
    poll GET /healthz every 10 ms, time Popen -> first 200; repeated (default 5 times).
(b) idle RSS: on one server, 1,000 mixed authenticated requests (list jobs, list datasets, get a
    job, GPU availability, a job's metrics; every 50th a dataset upload), sleep 2 s, then VmRSS of
    the server process itself (trainers it started are counted apart) from /proc/PID/status, before and after.
(c) heavy libraries in the server: torch / transformers / trl / pyarrow, from /proc/PID/maps
    (shared objects) of the server in (b), and from a separate server started with
    PYTHONPROFILEIMPORTTIME=1 (which logs every import, pure-Python ones too, as it happens).

    .venv/bin/python bench/server_footprint.py
    .venv/bin/python bench/server_footprint.py --starts 10 --requests 2000 --json out.jsonl
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    METRIC_KEYS,
    Server,
    create_key,
    descendants,
    emit_json,
    exit_on_sigterm,
    make_job,
    print_table,
    proc_status_kb,
    summary_ms,
    upload_dataset,
)

TARGET_START_S = 2.0
TARGET_RSS_MB = 120.0
HEAVY = ("torch", "transformers", "trl", "pyarrow")
# Shared objects that betray each heavy library in /proc/PID/maps. transformers and trl are pure
# Python; what they would pull in natively (tokenizers, safetensors) is the only trace maps can show.
MAP_PATTERNS = {
    "torch": re.compile(r"libtorch|/torch/_C\.|/torch/lib/"),
    "transformers": re.compile(r"/tokenizers/|/safetensors/|/transformers/"),
    "trl": re.compile(r"/trl/"),
    "pyarrow": re.compile(r"libarrow|libparquet|/pyarrow/"),
}


def mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def server_rss_kb(pid: int) -> int:
    """The server process alone: the job the mix creates is placed and its trainer (a child,
    with torch loaded) is not the server's memory."""
    return proc_status_kb(pid, "VmRSS") or 0


def measure_start(args: argparse.Namespace) -> dict:
    times = []
    for i in range(args.starts):
        with tempfile.TemporaryDirectory(prefix="veri-bench-start-") as tmp:
            with Server(Path(tmp) / "data") as server:
                elapsed = server.wait_healthy(interval=0.01)
            times.append(elapsed)
            print(f"  start {i + 1}: {elapsed * 1000:.0f} ms", flush=True)
    s = summary_ms(times)
    return {
        "runs_ms": [round(t * 1000, 1) for t in times],
        "median_ms": s["median_ms"],
        "max_ms": s["max_ms"],
        "target_ms": TARGET_START_S * 1000,
        "met": s["median_ms"] < TARGET_START_S * 1000,
    }


def rss_by_mapping(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """Resident memory grouped by what is mapped (a package, a library, or anonymous memory)."""
    groups: Counter[str] = Counter()
    name = "[anon]"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split()
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            path = head[5] if len(head) > 5 else ""
            if not path:
                name = "[anon]"
            elif "site-packages/" in path:
                name = "site-packages/" + path.split("site-packages/")[1].split("/")[0]
            elif path.startswith("["):
                name = path
            else:
                name = Path(path).name
        elif line.startswith("Rss:"):
            groups[name] += int(head[1])
    return [(n, round(kb / 1024, 1)) for n, kb in groups.most_common(top)]


def heavy_in_maps(pid: int) -> dict[str, list[str]]:
    try:
        paths = {
            line.split()[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if len(line.split()) > 5
        }
    except OSError:
        return {}
    return {lib: sorted(Path(p).name for p in paths if pat.search(p)) for lib, pat in MAP_PATTERNS.items()}


def request_mix(client: httpx.Client, job_id: str, n: int) -> dict:
    kinds = [
        ("GET /v1/training_jobs", lambda: client.get("/v1/training_jobs")),
        ("GET /v1/datasets", lambda: client.get("/v1/datasets")),
        ("GET /v1/training_jobs/{id}", lambda: client.get(f"/v1/training_jobs/{job_id}")),
        ("GET /v1/gpu/availability", lambda: client.get("/v1/gpu/availability")),
        ("GET /v1/training_jobs/{id}/metrics", lambda: client.get(f"/v1/training_jobs/{job_id}/metrics")),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in kinds}
    times["POST /v1/datasets (upload)"] = []
    errors: Counter[str] = Counter()
    for i in range(1, n + 1):
        if i % 50 == 0:
            name = "POST /v1/datasets (upload)"
            t = time.perf_counter()
            try:
                upload_dataset(client, name=f"bench-{i}")
                status = 200
            except RuntimeError:
                status = 0
        else:
            name, call = kinds[i % len(kinds)]
            t = time.perf_counter()
            status = call().status_code
        times[name].append(time.perf_counter() - t)
        if status != 200:
            errors[name] += 1
    return {name: {**summary_ms(ts), "errors": errors[name]} for name, ts in times.items() if ts}


def measure_rss(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="veri-bench-rss-") as tmp:
        data_dir = Path(tmp) / "data"
        with Server(data_dir) as server:
            pid = server.proc.pid
            server.wait_healthy()
            time.sleep(args.settle)
            rss_start = server_rss_kb(pid)
            key = create_key(data_dir)
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                job = make_job(client)
                if args.metric_steps:
                    from veri_box.store import Store

                    keys = METRIC_KEYS
                    Store(data_dir / "veri-box.db").add_metrics(
                        job["id"],
                        [
                            (s, {k: math.sin(s + i) for i, k in enumerate(keys)})
                            for s in range(1, args.metric_steps + 1)
                        ],
                    )
                time.sleep(args.settle)
                rss_before = server_rss_kb(pid)
                t0 = time.perf_counter()
                per_kind = request_mix(client, job["id"], args.requests)
                mix_s = time.perf_counter() - t0
            time.sleep(2.0)
            rss_after = server_rss_kb(pid)
            hwm = proc_status_kb(pid, "VmHWM")
            threads = proc_status_kb(pid, "Threads")
            children = descendants(pid)
            maps = heavy_in_maps(pid)
            by_mapping = rss_by_mapping(pid)
    return {
        "server_pid_children": len(children),
        "rss_mb_idle_after_start": mb(rss_start),
        "rss_mb_before_requests": mb(rss_before),
        "rss_mb_after_requests": mb(rss_after),
        "peak_rss_mb": mb(hwm),
        "threads": threads,
        "requests": args.requests,
        "mix_seconds": round(mix_s, 2),
        "requests_per_s": round(args.requests / mix_s, 1),
        "per_kind": per_kind,
        "metric_points": args.metric_steps * 10,
        "heavy_in_maps": maps,
        "rss_by_mapping_mb": by_mapping,
        "target_mb": TARGET_RSS_MB,
        "met": rss_after is not None and rss_after / 1024 < TARGET_RSS_MB,
    }


def imports_logged(args: argparse.Namespace) -> dict:
    """Start a server with PYTHONPROFILEIMPORTTIME=1, touch every endpoint kind once (and upload a
    dataset), and list which heavy top-level packages appear in its import log."""
    with tempfile.TemporaryDirectory(prefix="veri-bench-imp-") as tmp:
        data_dir = Path(tmp) / "data"
        with Server(data_dir, env={"PYTHONPROFILEIMPORTTIME": "1"}) as server:
            server.wait_healthy()
            key = create_key(data_dir)
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                job = make_job(client)
                request_mix(client, job["id"], 50)
            time.sleep(0.5)
        log = server.log_path.read_text(errors="replace")
    modules = {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")}
    tops = {m.split(".")[0] for m in modules}
    return {"modules_imported": len(modules), "heavy": {lib: lib in tops for lib in HEAVY}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="server starts to time (default 5)")
    parser.add_argument("--requests", type=int, default=1000, help="mixed requests before reading RSS (default 1000)")
    parser.add_argument(
        "--metric-steps",
        type=int,
        default=300,
        help="steps x 10 keys of metrics stored for the job the mix reads (default 300; keep it "
        "<= 500 so metrics reads take the small-job path)",
    )
    parser.add_argument("--settle", type=float, default=0.5, help="seconds to wait before the 'before' readings")
    parser.add_argument("--no-import-log", action="store_true", help="skip the PYTHONPROFILEIMPORTTIME server")
    parser.add_argument("--json", help="append the JSON result line to this file too")
    args = parser.parse_args()
    exit_on_sigterm()
    t0 = time.perf_counter()

    print(f"(a) server start -> first 200 on GET /healthz, fresh data dir each time, {args.starts} runs", flush=True)
    start = measure_start(args)
    print(f"(b) RSS around {args.requests} mixed requests", flush=True)
    rss = measure_rss(args)
    imports = None if args.no_import_log else imports_logged(args)

    print()
    print_table(
        ["measure", "value", "target", "met"],
        [
            [
                "(a) start -> first 200, median",
                f"{start['median_ms']:.0f} ms",
                f"< {TARGET_START_S * 1000:.0f} ms",
                "yes" if start["met"] else "NO",
            ],
            ["(a) start -> first 200, max", f"{start['max_ms']:.0f} ms", "", ""],
            ["(b) RSS idle right after start", f"{rss['rss_mb_idle_after_start']} MB", "", ""],
            ["(b) RSS before requests (job made)", f"{rss['rss_mb_before_requests']} MB", "", ""],
            [
                f"(b) RSS {args.requests} requests + 2 s later",
                f"{rss['rss_mb_after_requests']} MB",
                f"< {TARGET_RSS_MB:.0f} MB",
                "yes" if rss["met"] else "NO",
            ],
            ["(b) peak RSS (VmHWM)", f"{rss['peak_rss_mb']} MB", "", ""],
            ["(b) request mix throughput", f"{rss['requests_per_s']} req/s", "", ""],
        ],
    )
    print(
        f"\nstart runs (ms): {start['runs_ms']}; server threads after the mix: {rss['threads']}; "
        f"child processes: {rss['server_pid_children']}"
    )
    print("\nper request kind during the mix (ms):")
    print_table(
        ["request", "n", "median", "p90", "max", "errors"],
        [[k, v["n"], v["median_ms"], v["p90_ms"], v["max_ms"], v["errors"]] for k, v in rss["per_kind"].items()],
    )
    print("\nserver RSS by mapping after the mix (MB):")
    print_table(["mapping", "MB"], [list(r) for r in rss["rss_by_mapping_mb"]])
    print("\n(c) heavy libraries in the server process:")
    rows = []
    for lib in HEAVY:
        found = rss["heavy_in_maps"].get(lib, [])
        logged = "-" if imports is None else ("IMPORTED" if imports["heavy"][lib] else "no")
        rows.append([lib, ", ".join(found[:3]) + (" ..." if len(found) > 3 else "") if found else "none", logged])
    print_table(["library", "shared objects in /proc/PID/maps (after the mix)", "in import log"], rows)
    if imports:
        print(
            f"(import log: a separate server with PYTHONPROFILEIMPORTTIME=1 that served 50 mixed requests; "
            f"{imports['modules_imported']} modules imported in all)"
        )
    total = time.perf_counter() - t0
    print(f"\nTargets: start < {TARGET_START_S:g} s, RSS < {TARGET_RSS_MB:g} MB.  Total run {total:.1f} s")
    emit_json(
        {
            "bench": "server_footprint",
            "start": start,
            "rss": rss,
            "imports": imports,
            "targets": {"start_s": TARGET_START_S, "rss_mb": TARGET_RSS_MB},
        },
        args.json,
    )
    return 0 if start["met"] and rss["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
