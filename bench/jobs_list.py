"""Benchmark: the dashboard's jobs list over job folders full of files, and GET /v1/me over a
month of cloud instances.

Starts a real `veri-box serve` (no devices, so nothing is placed or run) on a temp data dir,
makes an admin key, and writes JOBS jobs (default 50: finished ones and two running) straight
into the server's SQLite file with Store.create_job. Each job gets a folder shaped like a real
one: config.json, progress.jsonl, train.log, output/ and model.tar.gz, CHECKPOINTS checkpoint
folders of FILES files each, a rollouts/ folder and TensorBoard files (about 420 files a job
by default). It also records INSTANCES cloud instances (default 5,000) for the key's jobs: most
launched and terminated this month, some launched last month and still billed into this one,
some still running, some wholly last month's (not counted).

It then times, with one persistent client logged in like a browser (loopback HTTP, so an upper
bound of the server's own time), first one GET /jobs on a server that has measured nothing yet
(every listed folder is walked), then, 3 warm-up and REQUESTS timed requests each:
- GET /jobs (the first page, 25 jobs), GET /jobs/table (the fragment the list's htmx polls every
  2 s while a job is live, 10 s otherwise) and GET /jobs?after=... (page 2);
- GET /v1/me (the key's usage: its spend this month) and GET /v1/settings/quotas (the box's);
and in-process, on the same files: walking the 25 listed job folders (artifacts.dir_size, what
each render of the list did before sizes were stored) and quotas.spend for the key and the box.

With `--baseline PATH` (a copy of older code, e.g. `git archive HEAD | tar -x -C /tmp/base`) it
also starts a second server running that code (PYTHONPATH=PATH) on a copy of the same data dir
and alternates every request between the two, so both columns share the machine's noise: compare
the ratio. Every answer must be 200; each listed job's disk size must be its folder's, and both
servers must show the same spend.

    .venv/bin/python bench/jobs_list.py
    .venv/bin/python bench/jobs_list.py --baseline /tmp/base --json out.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
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
from dashboard_render import login  # noqa: E402

TARGET_MS = 100.0  # p90 of each page, as dashboard_render.py


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fill_job_dir(job_dir: Path, checkpoints: int, files: int, rng: random.Random) -> int:
    """A finished GRPO job's folder, small files of realistic names; returns the file count."""
    blob = rng.randbytes(2048)
    count = 0

    def put(rel: str, n: int) -> None:
        nonlocal count
        path = job_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob[: n % 2048] * (n // 2048 + 1) if n > 2048 else blob[:n])
        count += 1

    put("config.json", 1800)
    put("progress.jsonl", 200_000)
    put("train.log", 90_000)
    put("env.json", 300)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        put(f"output/{name}", 40_000)
    put("model.tar.gz", 120_000)
    for c in range(checkpoints):
        for f in range(files):
            put(f"checkpoints/checkpoint-{(c + 1) * 100}/shard-{f:04d}.bin", 1024 + f)
    for f in range(100):
        put(f"rollouts/step-{f * 10:05d}.jsonl", 3000)
    put("tensorboard/events.out.tfevents.1", 20_000)
    return count


def fill(data_dir: Path, key_id: str, dataset_id: str, rf_id: str, args: argparse.Namespace) -> dict:
    from veri_box.store import Store, new_id, now

    store = Store(data_dir / "veri-box.db")
    rng = random.Random(0)
    started = time.perf_counter()
    job_ids, files = [], 0
    for i in range(args.jobs):
        status = "running" if i >= args.jobs - 2 else rng.choice(["completed"] * 6 + ["failed", "cancelled"])
        stamp = now()
        job = {
            "id": new_id("job_"),
            "status": status,
            "base_model": "Qwen/Qwen3-0.6B",
            "dataset_id": dataset_id,
            "reward_function_id": rf_id,
            "reward_functions": [{"id": rf_id, "weight": 1.0}],
            "environments": None,
            "method": "grpo",
            "output_name": f"run-{i}",
            "hyperparameters": {"learning_rate": 1e-6, "max_steps": 400},
            "gpu_requested": {"type": "H100", "count": 1},
            "gpu": {"type": "H100", "count": 1},
            "provider": "runpod",
            "checkpoint_destination": {"type": "veri"},
            "requires_heartbeat": 0,
            "created_at": stamp,
            "started_at": stamp,
            "completed_at": None if status == "running" else stamp,
            "current_step": 400,
            "total_steps": 400,
            "created_by": key_id,
        }
        store.create_job(job, [])
        job_ids.append(job["id"])
        files += fill_job_dir(data_dir / "jobs" / job["id"], args.checkpoints, args.files, rng)
    # Cloud instances of the key's jobs: this month's, last month's still billed, running ones.
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elapsed = (datetime.now(UTC) - month).total_seconds()
    with store.transaction():
        for n in range(args.instances):
            kind = rng.random()
            if kind < 0.02:  # still running, launched this month
                launched, terminated = month + timedelta(seconds=rng.uniform(0, elapsed)), None
            elif kind < 0.07:  # launched last month, ended this month
                launched = month - timedelta(hours=rng.uniform(1, 48))
                terminated = month + timedelta(seconds=rng.uniform(0, min(elapsed, 86400)))
            elif kind < 0.17:  # wholly last month's: not counted
                terminated = month - timedelta(hours=rng.uniform(1, 200))
                launched = terminated - timedelta(hours=rng.uniform(0.1, 10))
            else:
                launched = month + timedelta(seconds=rng.uniform(0, max(elapsed - 7200, 1)))
                terminated = launched + timedelta(seconds=rng.uniform(60, 7200))
            store.insert_instance(
                {
                    "provider": "runpod",
                    "name": f"bench-{n}",
                    "job_id": rng.choice(job_ids),
                    "gpu_type": "H100",
                    "gpu_count": 1,
                    "price_per_hr": round(rng.uniform(0.5, 4.0), 2),
                    "status": "terminated" if terminated else "ready",
                    "launched_at": _stamp(launched),
                    "terminated_at": _stamp(terminated) if terminated else None,
                }
            )
    return {
        "job_ids": job_ids,
        "files": files,
        "fill_s": time.perf_counter() - started,
        "done_at": time.monotonic(),
    }


def in_process(data_dir: Path, listed: list[str], key_id: str, repeats: int) -> dict:
    """The listed jobs' folders walked (what a render did before sizes were stored) and the spend sums."""
    from veri_box import artifacts, quotas
    from veri_box.store import Store

    store = Store(data_dir / "veri-box.db")
    out = {}
    for name, call in (
        ("walk 25 listed job folders", lambda: [artifacts.dir_size(data_dir / "jobs" / j) for j in listed]),
        ("quotas.spend(key)", lambda: quotas.spend(store, key_id)),
        ("quotas.spend(box)", lambda: quotas.spend(store, None)),
    ):
        call()
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            timings.append(time.perf_counter() - start)
        out[name] = summary_ms(timings)
    return out


def copy_data_dir(src: Path, dst: Path) -> None:
    """The files as they are; the database through SQLite's backup (the server holds it open)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock", "veri-box.db*"))
    source, target = sqlite3.connect(src / "veri-box.db"), sqlite3.connect(dst / "veri-box.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def listed_sizes(html: str) -> dict[str, str]:
    """Each row's job id and the disk size it shows."""
    rows = re.findall(r'id="row-(job_[0-9a-f]+)".*?class="num job-size"[^>]*>([^<]*)<', html, re.S)
    return {job: size.strip() for job, size in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoint folders per job")
    parser.add_argument("--files", type=int, default=75, help="files per checkpoint folder")
    parser.add_argument("--instances", type=int, default=5000, help="cloud instances of the key's jobs")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page (and server)")
    parser.add_argument("--baseline", default=None, help="a copy of older code to time side by side")
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    exit_on_sigterm()
    from veri_box.dashboard.rendering import size as shown_size

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        servers = {}
        with Server(data_dir, flags=("--gpus", "none", "--cpu-slots", "0")) as server:
            server.wait_healthy()
            key = create_key(data_dir)
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
                key_id = _ok(api.get("/v1/me"))["id"]
                dataset = upload_dataset(api)
                rf = _ok(
                    api.post("/v1/reward_functions", data={"name": "zero"}, files={"file": ("r.py", REWARD_SOURCE)})
                )
            filled = fill(data_dir, key_id, dataset["id"], rf["id"], args)
            print(
                f"stored {args.jobs} jobs ({filled['files']} files in their folders) and {args.instances} instances"
                f" in {filled['fill_s']:.1f} s"
            )
            # A folder changed in the last artifacts.RACY_S is walked on every render whatever is
            # stored; a real box's finished jobs are older than the seconds since this fill.
            time.sleep(max(0.0, filled["done_at"] + 3.0 - time.monotonic()))
            servers["now"] = server
            with contextlib.ExitStack() as stack:
                if args.baseline:
                    base_dir = Path(tmp) / "base" / "data"
                    copy_data_dir(data_dir, base_dir)
                    env = {"PYTHONPATH": str(Path(args.baseline).resolve())}
                    base = stack.enter_context(Server(base_dir, env=env, flags=("--gpus", "none", "--cpu-slots", "0")))
                    base.wait_healthy()
                    servers["baseline"] = base
                result = run(servers, key, data_dir, filled, key_id, args, shown_size)
    emit_json(result, args.json)
    return 1 if result["slow_pages"] or result["wrong"] else 0


def run(servers: dict, key: str, data_dir: Path, filled: dict, key_id: str, args, shown_size) -> dict:
    from veri_box import artifacts

    browsers = {}
    for name, server in servers.items():
        browsers[name] = httpx.Client(base_url=server.url, timeout=60)
        login(browsers[name], key)
    names = list(servers)
    apis = {
        name: httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        for name, s in servers.items()
    }
    # The first render walks every listed folder on both (nothing stored yet): once, not each time.
    cold = {}
    for n in names:
        start = time.perf_counter()
        page = browsers[n].get("/jobs")
        cold[n] = round((time.perf_counter() - start) * 1000, 3)
        if page.status_code != 200:
            raise RuntimeError(f"{n} /jobs: {page.status_code}")
    listed = list(listed_sizes(browsers["now"].get("/jobs").text))
    pages = [
        ("GET /jobs", browsers, "/jobs", 'id="job-table"'),
        ("GET /jobs/table (htmx poll)", browsers, "/jobs/table", 'id="job-table"'),
        ("GET /jobs?after= (page 2)", browsers, f"/jobs?after={listed[-1]}", 'id="job-table"'),
        ("GET /v1/me", apis, "/v1/me", '"spend_usd"'),
        ("GET /v1/settings/quotas", apis, "/v1/settings/quotas", '"box_spend_usd"'),
    ]
    result: dict = {
        "bench": "jobs_list",
        "jobs": args.jobs,
        "files": filled["files"],
        "instances": args.instances,
        "pages": {},
        "target_ms": TARGET_MS,
    }
    rows, slow, wrong = [["first GET /jobs (n=1)"] + [x for n in names for x in (cold[n], "")]], [], []
    if "baseline" in names:
        rows[0].append(f"{cold['baseline'] / max(cold['now'], 1e-9):.1f}x")
    result["first_render_ms"] = cold
    for label, clients, path, must in pages:
        timings: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.requests + 3):
            for n in names if i % 2 == 0 else reversed(names):  # alternate who goes first
                start = time.perf_counter()
                r = clients[n].get(path)
                elapsed = time.perf_counter() - start
                if r.status_code != 200 or must not in r.text:
                    raise RuntimeError(f"{n} {path}: {r.status_code}, missing {must!r}: {r.text[:500]}")
                if i >= 3:  # the first requests warm caches (templates, SQLite pages, dentries)
                    timings[n].append(elapsed)
        stats = {n: summary_ms(t) for n, t in timings.items()}
        result["pages"][label] = stats
        row = [label]
        for n in names:
            row += [stats[n]["median_ms"], stats[n]["p90_ms"]]
            if stats[n]["p90_ms"] >= TARGET_MS and n == "now":
                slow.append(label)
        if "baseline" in stats:
            row.append(f"{stats['baseline']['median_ms'] / max(stats['now']['median_ms'], 1e-9):.1f}x")
        rows.append(row)
    # What the pages show must be right: each listed job's size, and the same spend on both.
    for n in names:
        shown = listed_sizes(browsers[n].get("/jobs").text)
        job_root = servers[n].data_dir / "jobs"
        for job_id, text in shown.items():
            if text != shown_size(artifacts.dir_size(job_root / job_id)):
                wrong.append(f"{n}: {job_id} shows {text}")
    spends = {n: apis[n].get("/v1/me").json()["usage"]["spend_usd"] for n in names}
    box = {n: apis[n].get("/v1/settings/quotas").json()["box_spend_usd"] for n in names}
    if max(spends.values()) - min(spends.values()) > 0.5 or max(box.values()) - min(box.values()) > 0.5:
        wrong.append(f"spend differs: {spends} {box}")  # running instances accrue between the calls
    for c in (*browsers.values(), *apis.values()):
        c.close()
    heads = ["request"]
    for n in names:
        heads += [f"{n} median", f"{n} p90"]
    if "baseline" in names:
        heads.append("baseline/now")
    print(
        f"\n{args.jobs} jobs, {filled['files']} files in their folders, {args.instances} instances;"
        f" {args.requests} requests per page and server, alternating, over loopback HTTP (ms):"
    )
    print_table(heads, rows)
    local = in_process(data_dir, listed, key_id, args.requests)
    print("\nin-process, same files and database (ms):")
    print_table(
        ["call", "median", "p90", "max"], [[k, v["median_ms"], v["p90_ms"], v["max_ms"]] for k, v in local.items()]
    )
    print(f"\nspend shown: key {spends}, box {box}")
    if wrong:
        print("WRONG: " + "; ".join(wrong))
    result.update(in_process=local, spend=spends, box_spend=box, slow_pages=slow, wrong=wrong)
    return result


if __name__ == "__main__":
    sys.exit(main())
