"""Real `veri-box serve` processes that get killed, stopped and restarted around running jobs.

What a user would notice: a server crash (SIGKILL) or a clean stop (SIGTERM) loses no reported
progress and leaves the trainer running, so the next start re-attaches and the job completes;
a trainer that died while the server was down is failed as `abandoned` and its device freed;
duration and cost come from the device price, and each job gets its own CUDA device.

Jobs run the stdlib test trainer (tests/fake_trainer.py); base_model sets its behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from serving import FAKE_TRAINERS, KEY, Server, alive

CPU_ARGS = ("--gpus", "none", "--cpu-slots", "1", "--trainers", FAKE_TRAINERS, "--cancel-grace-s", "2")
GPU_ARGS = (
    "--gpus",
    "TEST-1GB:2",
    "--price-per-hour",
    "TEST-1GB=3600",  # 1 $ per device-second
    "--cpu-slots",
    "0",
    "--trainers",
    FAKE_TRAINERS,
    "--cancel-grace-s",
    "2",
)
REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [float('4' in c) for c in completions]\n"
ROWS = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "What is 3+1?", "answer": "4"}]


# ---- helpers ---------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.05) -> object:
    """The first truthy value of predicate() within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def client_for(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)


def create_job(http: httpx.Client, base_model: str, gpu: dict | None = None) -> str:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    r = http.post("/v1/datasets", data={"name": "math"}, files={"file": ("math.jsonl", body, "application/jsonl")})
    assert r.status_code == 200, r.text
    dataset_id = r.json()["id"]
    r = http.post(
        "/v1/reward_functions",
        data={"name": "has-four"},
        files={"file": ("reward.py", REWARD_SOURCE.encode(), "text/x-python")},
    )
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/training_jobs",
        json={
            "base_model": base_model,
            "dataset_id": dataset_id,
            "reward_function_id": r.json()["id"],
            "output_name": "restart-test",
            "gpu": gpu or {"type": "cpu", "count": 1},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    return r.json()["id"]


def get_job(http: httpx.Client, job_id: str) -> dict:
    r = http.get(f"/v1/training_jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def metrics(http: httpx.Client, job_id: str) -> dict:
    r = http.get(f"/v1/training_jobs/{job_id}/metrics", params={"max_points": 10_000})
    assert r.status_code == 200, r.text
    return r.json()


def event_counts(http: httpx.Client, job_id: str) -> Counter:
    r = http.get(f"/v1/training_jobs/{job_id}/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return Counter(e["event_type"] for e in r.json()["items"])


TERMINAL = ("completed", "failed", "cancelled")


def wait_status(http: httpx.Client, job_id: str, status: str, timeout: float = 20) -> dict:
    """Wait for `status`; a job that ends in another terminal status fails at once."""
    job = wait_until(lambda: (j := get_job(http, job_id))["status"] in (status, *TERMINAL) and j, timeout)
    assert job and job["status"] == status, f"{job_id} is not {status}: {get_job(http, job_id)}"
    return job


def wait_running_with_steps(http: httpx.Client, job_id: str, steps: int) -> int:
    def ready() -> int | None:
        latest = metrics(http, job_id)["latest_step"]
        return latest if get_job(http, job_id)["status"] == "running" and (latest or 0) >= steps else None

    latest = wait_until(ready)
    assert latest, f"{job_id} never ran {steps} steps: {get_job(http, job_id)}"
    return latest


def job_dir(server: Server, job_id: str) -> Path:
    return server.data_dir / "jobs" / job_id


def trainer_pid(server: Server, job_id: str) -> int:
    """The leader of the trainer's process group, as the runner follows it: in the sandbox the
    trainer sees only its own PID namespace, so its own pid (in env.json) is not a host pid."""
    env = wait_until(lambda: _read_json(job_dir(server, job_id) / "env.json"), timeout=10)
    assert env, f"the trainer of {job_id} never wrote env.json"
    leader = _group_leader(job_dir(server, job_id))
    assert leader, f"no process group leader runs the trainer of {job_id}"
    return leader


def _group_leader(directory: Path) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text, cmdline = stat.read_text(), (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        pid, pgid = int(stat.parent.name), int(text[text.rindex(")") + 2 :].split()[2])
        if pid == pgid and str(directory).encode() in cmdline:
            return pid
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sigkill_server(server: Server) -> None:
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL


def every_step_once(http: httpx.Client, job_id: str) -> int:
    """The latest step, after checking that steps 1..latest are all there, once each."""
    got = metrics(http, job_id)
    last = got["latest_step"]
    steps = [p["step"] for p in got["metrics"]]
    assert steps == list(range(1, last + 1)), f"steps should be 1..{last} once each, got {steps}"
    # The trainer's own keys at every step, once each; the runner's system/* samples come on top.
    trained = [{k for k in p["values"] if not k.startswith("system/")} for p in got["metrics"]]
    assert all(keys == {"loss", "reward", "learning_rate"} for keys in trained), trained
    return last


def assert_completed_with_model(http: httpx.Client, job_id: str, steps: int) -> dict:
    job = wait_status(http, job_id, "completed")
    assert job["error"] is None and job["current_step"] == steps and job["total_steps"] == steps, job
    assert every_step_once(http, job_id) == steps
    model = http.get(f"/v1/training_jobs/{job_id}/model")
    assert model.status_code == 200, model.text
    assert {f["path"] for f in model.json()["files"]} == {"config.json", "model.bin"}
    counts = event_counts(http, job_id)
    for name in ("created", "submitted", "running", "completed"):
        assert counts[name] == 1, f"expected one {name} event: {counts}"
    assert not {"failed", "cancelled"} & set(counts), counts
    return job


def cpu_row(http: httpx.Client) -> dict:
    rows = http.get("/v1/gpu/availability").json()["availability"]
    return next(r for r in rows if r["gpu_type"] == "cpu")


# ---- servers that always go away -------------------------------------------------------------


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start_server(*args) -> a started Server on a fresh data dir with its key set. At teardown
    every server is stopped and every trainer they started is killed, so no process outlives
    the test; a test that failed shows what the servers said."""
    servers: list[Server] = []

    def start(*args: str) -> Server:
        base = tmp_path / f"box{len(servers)}"
        base.mkdir()
        server = Server(base / "data", base / "serve.log", *args)
        servers.append(server)
        first = server.start()
        keys = KEY.findall(first)
        assert len(keys) == 1, f"expected the first start to print one API key:\n{first}"
        server.key = keys[0]
        return server

    yield start
    for server in servers:
        server.stop()
        # Trainers a failed test left behind: their process groups, found as the runner finds them.
        for directory in (server.data_dir / "jobs").glob("*"):
            leader = _group_leader(directory)
            if leader:
                try:
                    os.killpg(leader, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        print(f"---- {server.log_path} ----\n{server.output()}")


# ---- tests -----------------------------------------------------------------------------------


def test_sigkilled_server_loses_nothing_and_reattaches_to_the_running_trainer(start_server):
    server = start_server(*CPU_ARGS)
    with client_for(server) as http:
        job_id = create_job(http, "fake:steps=40,step_s=0.15")
        noted = wait_running_with_steps(http, job_id, 5)
    pid = trainer_pid(server, job_id)

    sigkill_server(server)
    assert alive(pid), "the trainer runs in its own session and must survive the server"

    server.start()  # same data dir, same flags
    with client_for(server) as http:
        job = get_job(http, job_id)
        assert job["status"] == "running" and job["error"] is None, job
        assert alive(pid) and trainer_pid(server, job_id) == pid, "re-attached to the same process, not restarted"
        assert every_step_once(http, job_id) >= noted

        job = assert_completed_with_model(http, job_id, 40)
        assert job["started_at"] <= job["completed_at"] and job["duration_seconds"] > 0
    assert wait_until(lambda: not alive(pid), timeout=5), "the trainer should have exited"


def test_trainer_that_died_while_the_server_was_down_is_failed_as_abandoned(start_server):
    server = start_server(*CPU_ARGS)
    with client_for(server) as http:
        job_id = create_job(http, "fake:steps=100000,step_s=0.1")
        wait_running_with_steps(http, job_id, 1)
    pid = trainer_pid(server, job_id)

    sigkill_server(server)
    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), timeout=5)

    server.start()
    with client_for(server) as http:
        job = get_job(http, job_id)  # decided before the server answered its first request
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "abandoned", job["error"]
        assert f"pid {pid}" in job["error"]["message"], job["error"]
        assert job["completed_at"] and job["duration_seconds"] is not None
        counts = event_counts(http, job_id)
        assert counts["failed"] == 1 and counts["completed"] == 0, counts

        row = cpu_row(http)
        assert row["available"] == row["gpu_count"] == 1, row

        again = create_job(http, "fake:steps=3,step_s=0.05")
        assert_completed_with_model(http, again, 3)


def test_clean_shutdown_leaves_the_trainer_running_and_the_next_start_reattaches(start_server):
    server = start_server(*CPU_ARGS)
    with client_for(server) as http:
        job_id = create_job(http, "fake:steps=40,step_s=0.15")
        noted = wait_running_with_steps(http, job_id, 3)
    pid = trainer_pid(server, job_id)

    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert alive(pid), "a clean stop must not stop the trainers"

    server.start()
    with client_for(server) as http:
        job = get_job(http, job_id)
        assert job["status"] == "running", job
        assert every_step_once(http, job_id) >= noted
        assert_completed_with_model(http, job_id, 40)


def test_devices_cost_and_duration_on_a_priced_gpu_type(start_server):
    server = start_server(*GPU_ARGS)
    gpu = {"type": "TEST-1GB", "count": 1}
    with client_for(server) as http:
        first, second, third = (create_job(http, "fake:steps=20,step_s=0.1", gpu) for _ in range(3))
        assert wait_until(lambda: all(get_job(http, j)["status"] == "running" for j in (first, second)))
        # Both devices are taken: the third waits.
        assert get_job(http, third)["status"] == "queued"
        row = next(r for r in http.get("/v1/gpu/availability").json()["availability"] if r["gpu_type"] == "TEST-1GB")
        assert (row["gpu_count"], row["available"], row["price_per_hr"]) == (2, 0, 3600), row
        devices = {
            j: wait_until(lambda j=j: _read_json(job_dir(server, j) / "env.json"))["CUDA_VISIBLE_DEVICES"]
            for j in (first, second)
        }
        assert sorted(devices.values()) == ["0", "1"], devices

        jobs = {j: assert_completed_with_model(http, j, 20) for j in (first, second, third)}
        third_env = _read_json(job_dir(server, third) / "env.json")
        assert third_env["CUDA_VISIBLE_DEVICES"] in ("0", "1"), third_env
        placed = next(
            e["timestamp"]
            for e in http.get(f"/v1/training_jobs/{third}/events").json()["items"]
            if e["event_type"] == "submitted"
        )
        assert placed >= min(jobs[first]["completed_at"], jobs[second]["completed_at"]), "placed only once one ended"

        for job in jobs.values():
            assert job["gpu"] == gpu and job["gpu_requested"] == gpu and job["provider"] == "local", job
            assert job["started_at"] <= job["completed_at"], job
            # 20 steps of 0.1 s: about two seconds of training, not the time spent queued.
            assert 1.9 <= job["duration_seconds"] < 10, job
            assert job["cost_usd"] == pytest.approx(job["duration_seconds"] * 1.0, rel=0.01), job
        row = next(r for r in http.get("/v1/gpu/availability").json()["availability"] if r["gpu_type"] == "TEST-1GB")
        assert row["available"] == 2, row


def test_trainer_that_finished_while_the_server_was_down_completes_on_the_next_start(start_server):
    server = start_server(*CPU_ARGS)
    with client_for(server) as http:
        job_id = create_job(http, "fake:steps=25,step_s=0.1")
        wait_running_with_steps(http, job_id, 1)
    pid = trainer_pid(server, job_id)

    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert wait_until(lambda: not alive(pid), timeout=10), "the trainer should finish on its own"

    server.start()
    with client_for(server) as http:
        # It reported completion and left its model: that is a completed job, not an abandoned one.
        job = assert_completed_with_model(http, job_id, 25)
        assert job["duration_seconds"] > 0
        row = cpu_row(http)
        assert row["available"] == row["gpu_count"] == 1, row
