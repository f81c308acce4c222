"""What the box does on its own about jobs nobody watches any more: a client whose heartbeats
stopped, a trainer that stopped reporting, a job directory that vanished; and the rules around
the server itself: one server per data directory, logout ending the session on the server."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from serving import KEY, REPO, Server, free_port, run_cli
from test_dashboard import csrf_of, login
from test_runner import alive, events, free, job_dir, make_box, status, submit, tick, trainer_env, until

from veri_box import datasets, paths
from veri_box.app import Box, create_app
from veri_box.settings import Settings


@pytest.fixture(autouse=True)
def trainers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def boxes(tmp_path: Path):
    """boxes(**settings) -> an Api on tmp_path/data; every trainer is reaped at the end."""
    opened = []

    def open_box(**settings):
        client, api = make_box(tmp_path / "data", **settings)
        opened.append((client, api))
        return api

    yield open_box
    for client, api in reversed(opened):
        for job in api.store.jobs_with_status("queued", "provisioning", "running"):
            api.box.runner.cancel(job["id"])
        until(api, lambda: not api.store.jobs_holding_devices(), timeout=15)
        client.__exit__(None, None, None)


def cancelled_event(api, job_id: str) -> dict:
    items = api.get(f"/v1/training_jobs/{job_id}/events").json()["items"]
    return next(e for e in items if e["event_type"] == "cancelled")


# ---- heartbeats ------------------------------------------------------------------------------


def test_a_job_whose_client_stopped_beating_is_cancelled(boxes):
    api = boxes(heartbeat_timeout_s=0.5)
    job_id = submit(api, "hang=1", requires_heartbeat=True)
    until(api, lambda: status(api, job_id) == "running")
    pid = trainer_env(api, job_id)["pid"]
    assert api.post(f"/v1/training_jobs/{job_id}/heartbeat").status_code == 200
    until(api, lambda: status(api, job_id) == "cancelled", timeout=10)
    metadata = cancelled_event(api, job_id)["metadata"]
    assert metadata["reason"] == "heartbeat_lost" and metadata["silent_s"] >= 0.5, metadata
    until(api, lambda: free(api, "cpu") == 1)
    assert not alive(pid)


def test_beating_clients_and_clients_that_never_beat_keep_their_jobs(boxes):
    api = boxes(heartbeat_timeout_s=0.5, cpu_slots=3)
    beating = submit(api, "hang=1", requires_heartbeat=True)
    never_beat = submit(api, "hang=1", requires_heartbeat=True)
    not_required = submit(api, "hang=1", requires_heartbeat=False)
    until(api, lambda: all(status(api, j) == "running" for j in (beating, never_beat, not_required)))
    api.post(f"/v1/training_jobs/{not_required}/heartbeat")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        api.post(f"/v1/training_jobs/{beating}/heartbeat")
        tick(api)
        time.sleep(0.1)
    assert [status(api, j) for j in (beating, never_beat, not_required)] == ["running"] * 3


def test_heartbeat_silence_counts_from_the_servers_start(boxes, tmp_path):
    """A server that was down heard no heartbeats; its clients get a timeout's time to come back."""
    api = boxes(heartbeat_timeout_s=1.5)
    job_id = submit(api, "hang=1", requires_heartbeat=True)
    until(api, lambda: status(api, job_id) == "running")
    api.store.update_job(job_id, last_heartbeat_at="2020-01-01T00:00:00.000Z")  # beat, then the server went down
    restarted = boxes(heartbeat_timeout_s=1.5)
    restarted.box.runner.recover()
    tick(restarted)
    assert status(restarted, job_id) == "running"
    until(restarted, lambda: status(restarted, job_id) == "cancelled", timeout=10)


def test_heartbeats_can_be_turned_off(boxes):
    api = boxes(heartbeat_timeout_s=0)
    job_id = submit(api, "hang=1", requires_heartbeat=True)
    until(api, lambda: status(api, job_id) == "running")
    api.store.update_job(job_id, last_heartbeat_at="2020-01-01T00:00:00.000Z")
    api.box.runner._up_since = "2020-01-01T00:00:00.000Z"
    tick(api)
    assert status(api, job_id) == "running"


# ---- stalled trainers ------------------------------------------------------------------------


def test_a_trainer_that_reports_nothing_fails_as_stalled_with_its_log(boxes):
    api = boxes(stall_timeout_s=1.0)
    job_id = submit(api, "steps=5,step_s=0.05,hang_at=2")
    until(api, lambda: status(api, job_id) == "running")
    pid = trainer_env(api, job_id)["pid"]
    until(api, lambda: status(api, job_id) == "failed", timeout=15)
    job = api.get(f"/v1/training_jobs/{job_id}").json()
    assert job["error"]["code"] == "trainer_stalled", job["error"]
    assert "reported no progress" in job["error"]["message"] and "hanging after step 2" in job["error"]["message"]
    assert events(api, job_id)[-1] == "failed"
    until(api, lambda: free(api, "cpu") == 1)
    assert not alive(pid)
    assert api.get(f"/v1/training_jobs/{job_id}").json()["status"] == "failed"  # not overwritten by its exit


def test_a_slow_trainer_that_keeps_reporting_is_not_stalled(boxes):
    api = boxes(stall_timeout_s=1.5)
    job_id = submit(api, "steps=6,step_s=0.5")
    until(api, lambda: status(api, job_id) in ("completed", "failed"), timeout=30)
    assert status(api, job_id) == "completed"


def test_the_time_of_the_last_progress_survives_a_restart(boxes):
    api = boxes()
    job_id = submit(api, "steps=10,step_s=1,hang_at=3")
    until(api, lambda: api.store.get_job(job_id)["current_step"] == 3, timeout=20)
    last = api.store.get_job(job_id)["progress_at"]
    assert last is not None
    time.sleep(2)
    # Counted from the start of training (about 5 s ago) the job would be stalled at once;
    # counted from its last progress (about 2 s ago) it is not yet.
    restarted = boxes(stall_timeout_s=3.5)
    restarted.box.runner.recover()
    tick(restarted)
    assert status(restarted, job_id) == "running"
    until(restarted, lambda: status(restarted, job_id) == "failed", timeout=10)
    assert restarted.get(f"/v1/training_jobs/{job_id}").json()["error"]["code"] == "trainer_stalled"


# ---- a job directory that disappears ------------------------------------------------------------


def test_a_job_whose_directory_disappears_fails_clearly(boxes):
    api = boxes()
    job_id = submit(api, "steps=40,step_s=0.1")
    until(api, lambda: status(api, job_id) == "running")
    pid = trainer_env(api, job_id)["pid"]
    shutil.rmtree(job_dir(api, job_id))
    until(api, lambda: status(api, job_id) in ("completed", "failed"), timeout=15)
    error = api.get(f"/v1/training_jobs/{job_id}").json()["error"]
    assert error and error["code"] == "job_dir_missing", error
    assert str(job_dir(api, job_id)) in error["message"]
    until(api, lambda: free(api, "cpu") == 1)
    assert not alive(pid)


# ---- one server per data directory -------------------------------------------------------------


def open_in_another_process(data_dir: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; from pathlib import Path; from veri_box.app import Box; from veri_box.settings import Settings; "
        "Box.open(Settings(data_dir=Path(sys.argv[1]), gpus='none'))"
    )
    return subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=60)


def test_a_second_server_on_a_data_dir_refuses_to_start_and_names_the_first(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", gpus="none")
    box = Box.open(settings)
    again = Box.open(settings)  # this process may open its own directory again (a restart in tests)
    served = run_cli("serve", "--data-dir", str(settings.data_dir), "--gpus", "none", "--port", str(free_port()))
    assert served.returncode == 2, served
    assert f"pid {os.getpid()}" in served.stderr and str(settings.data_dir) in served.stderr, served.stderr
    assert "Traceback" not in served.stderr
    # The commands that only open the store work beside a running server.
    assert run_cli("keys", "list", "--data-dir", str(settings.data_dir)).returncode == 0
    assert (settings.data_dir / "veri-box.lock").read_text().strip() == str(os.getpid())

    del box
    gc.collect()
    assert open_in_another_process(settings.data_dir).returncode == 1, "one Box of the directory is still open"
    del again
    gc.collect()
    opened = open_in_another_process(settings.data_dir)
    assert opened.returncode == 0, opened.stderr

    app = create_app(settings, run_jobs=False)  # opens its own Box, which lives as long as the app
    gc.collect()
    assert open_in_another_process(settings.data_dir).returncode == 1
    del app


def test_the_first_box_of_a_directory_removes_what_interrupted_uploads_left(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", gpus="none")
    spool = paths.spool_dir(settings.data_dir)
    spool.mkdir(parents=True)
    (spool / f"{datasets.SPOOL_PREFIX}crashed").write_bytes(b"half an upload")
    box = Box.open(settings)
    assert not list(spool.iterdir())
    (spool / f"{datasets.SPOOL_PREFIX}live").write_bytes(b"an upload the first box is receiving")
    Box.open(settings)
    assert [p.name for p in spool.iterdir()] == [f"{datasets.SPOOL_PREFIX}live"]
    del box


# ---- logout ends the session on the server -------------------------------------------------------


def test_a_logged_out_session_cookie_replayed_gets_the_login(api, settings):
    assert login(api).status_code == 303
    cookie = api.client.cookies["vb_session"]
    page = api.client.get("/jobs")
    assert page.status_code == 200
    r = api.client.post("/logout", data={"_csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    api.client.cookies.set("vb_session", cookie)  # a copy of the cookie, kept from before the logout
    r = api.client.get("/jobs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login"), r.headers
    with TestClient(create_app(settings, run_jobs=False)) as restarted:
        restarted.cookies.set("vb_session", cookie)
        assert restarted.get("/jobs", follow_redirects=False).status_code == 303
    # Another session of the same key is not affected, and logging in again works.
    assert login(api).status_code == 303
    assert api.client.get("/jobs").status_code == 200


# ---- a client that gives up mid-upload ---------------------------------------------------------


def send_half_an_upload(server: Server, path: str, key: str) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    body = head + b'{"prompt": "x"}\n' * 20_000
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: box\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {3 * len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        time.sleep(0.3)  # the server is reading the body when the client goes


def test_a_client_that_aborts_an_upload_is_not_logged_as_an_error(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none")
    key = KEY.findall(server.start())[0]
    try:
        for path in ("/v1/datasets", "/v1/reward_functions"):
            send_half_an_upload(server, path, key)
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        time.sleep(0.5)
    finally:
        server.stop()
    assert "unhandled error" not in server.output() and "Traceback" not in server.output(), server.output()


# ---- SQLite off the event loop -----------------------------------------------------------------


def answers_while_the_database_is_locked(server: Server, key: str, method: str, path: str) -> float:
    """Send `method path` while another process holds SQLite's write lock, so that request waits
    on the lock; returns how long /healthz took meanwhile (it needs no database)."""
    lock = sqlite3.connect(paths.db(server.data_dir), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    auth = {"Authorization": f"Bearer {key}"}
    waiting = threading.Thread(target=lambda: httpx.request(method, server.url + path, headers=auth, timeout=60))
    try:
        waiting.start()
        time.sleep(0.3)
        start = time.monotonic()
        httpx.get(f"{server.url}/healthz", timeout=10)
        return time.monotonic() - start
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        waiting.join(timeout=60)


def test_a_request_waiting_on_sqlite_does_not_stall_the_server(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none")
    key = KEY.findall(server.start())[0]
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            source = b"def reward(completions, **kwargs):\n    return [0.0 for _ in completions]\n"
            rf = http.post("/v1/reward_functions", data={"name": "r"}, files={"file": ("r.py", source)}).json()["id"]
            # The key guard writes the key's last use once a second: in a new second, it waits on the lock.
            time.sleep(1.1 - time.time() % 1)
            assert answers_while_the_database_is_locked(server, key, "GET", "/v1/reward_functions") < 2
            # Within the second of the key's last use the guard only reads; the delete waits on the lock.
            while time.time() % 1 > 0.3:
                time.sleep(0.05)
            http.get("/v1/reward_functions")
            assert answers_while_the_database_is_locked(server, key, "DELETE", f"/v1/reward_functions/{rf}") < 2
    finally:
        server.stop()


def test_requests_ask_the_store_from_worker_threads_not_the_event_loop(api, monkeypatch):
    on_the_loop = []

    def watch(name: str) -> None:
        original = getattr(api.store, name)

        def call(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_the_loop.append(name)
            except RuntimeError:  # a worker thread has no running loop
                pass
            return original(*args, **kwargs)

        monkeypatch.setattr(api.store, name, call)

    for name in (
        "authenticate",
        "get_api_key",
        "session_ended",
        "insert_reward_function",
        "list_reward_functions",
        "get_reward_function",
        "delete_reward_function",
    ):
        watch(name)
    rf = api.reward_function()
    for path in ("/v1/reward_functions", f"/v1/reward_functions/{rf}", f"/v1/reward_functions/{rf}/source"):
        assert api.get(path).status_code == 200, path
    assert api.delete(f"/v1/reward_functions/{rf}").status_code == 200
    assert login(api).status_code == 303
    assert api.client.get("/jobs").status_code == 200
    assert on_the_loop == []
