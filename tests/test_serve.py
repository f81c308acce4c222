"""`veri-box serve` as a user runs it: a real process on a real port, driven over HTTP with
httpx, with curl as on the reference page, with the `veri-box keys` commands, and with the
official veri-sdk client. Nothing of ours is mocked; the only network is 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from conftest import SEED_GRPO_HYPERPARAMETERS
from serving import FAKE_TRAINERS, KEY, Server, run_cli

from veri_box.settings import Settings
from veri_box.store import Store, now

REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [float('4' in c) for c in completions]\n"
ROWS = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "What is 3+1?", "answer": "4"}]

# The GRPO request of the reference page, word for word, with its ids filled in.
SEED_GRPO_BODY = """{
    "base_model": "Qwen/Qwen3-4B",
    "dataset_id": "%(dataset_id)s",
    "reward_function_id": "%(reward_function_id)s",
    "method": "grpo",
    "output_name": "qwen3-4b-math",
    "hyperparameters": {
      "learning_rate": 1e-6,
      "num_epochs": 1,
      "rollouts_per_prompt": 8,
      "max_response_length": 2048,
      "global_batch_size": 64
    },
    "gpu": {
      "type": "cpu",
      "count": 1
    },
    "checkpoint_destination": {
      "type": "veri"
    }
  }"""


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests of this module, on a fresh data dir. Its one cpu slot is
    held by a trainer that waits to be cancelled, so the jobs these tests submit stay queued."""
    base = tmp_path_factory.mktemp("serve")
    server = Server(
        base / "data", base / "serve.log", "--gpus", "none", "--cpu-slots", "1", "--trainers", FAKE_TRAINERS
    )
    blocker = None
    try:
        startup = server.start()
        keys = KEY.findall(startup)
        assert len(keys) == 1, f"expected the first start to print one API key:\n{startup}"
        server.key = keys[0]
        with client_for(server) as http:
            blocker = create_job(http, base_model="fake:hang=1")["id"]
            assert wait_until(lambda: http.get(f"/v1/training_jobs/{blocker}").json()["status"] == "running"), (
                server.output()
            )
        yield server
    finally:
        try:
            if blocker and server.proc is not None:
                with client_for(server) as http:
                    http.post(f"/v1/training_jobs/{blocker}/cancel")
                    wait_until(lambda: cpu_free(http))
        finally:
            server.stop()


def wait_until(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def cpu_free(http: httpx.Client) -> bool:
    rows = http.get("/v1/gpu/availability").json()["availability"]
    return next(r for r in rows if r["gpu_type"] == "cpu")["available"] == 1


@pytest.fixture
def server(box: Server) -> Iterator[Server]:
    assert box.proc is not None and box.proc.poll() is None, f"veri-box serve has exited:\n{box.output()}"
    mark = len(box.output())
    yield box
    # pytest shows captured output only for a test that failed: what the server said meanwhile.
    print(f"---- veri-box serve output during this test ----\n{box.output()[mark:]}")


def client_for(server: Server, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key or server.key}"}, timeout=30)


def upload_dataset(http: httpx.Client, rows: list[dict] = ROWS) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = http.post("/v1/datasets", data={"name": "math"}, files={"file": ("math.jsonl", body, "application/jsonl")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def upload_reward_function(http: httpx.Client) -> str:
    r = http.post(
        "/v1/reward_functions",
        data={"name": "has-four"},
        files={"file": ("reward.py", REWARD_SOURCE.encode(), "text/x-python")},
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create_job(http: httpx.Client, base_model: str = "Qwen/Qwen3-4B") -> dict:
    r = http.post(
        "/v1/training_jobs",
        json={
            "base_model": base_model,
            "dataset_id": upload_dataset(http),
            "reward_function_id": upload_reward_function(http),
            "output_name": "serve-test",
            "gpu": {"type": "cpu", "count": 1},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) == {"type", "code", "message", "param"} and error["message"], error
    return error


# ---- first start and API keys ----------------------------------------------------------------


def test_first_serve_prints_a_working_key_once_and_a_restart_prints_none(tmp_path: Path):
    server = Server(tmp_path / "data", tmp_path / "serve.log")
    try:
        first = server.start()
        keys = KEY.findall(first)
        assert len(keys) == 1, first
        key = keys[0]
        key_line = next(line for line in first.splitlines() if key in line)
        assert key_line.strip() == key, "the key should stand alone on its line, easy to copy"
        assert "only this once" in first, first
        assert "veri-box keys create" in first, "the message should say how to make more keys"
        # The next steps: the demo (with this data directory), the dashboard, the SDK.
        assert f"veri-box demo --data-dir {server.data_dir}" in first, first
        assert f"The dashboard (log in with the key):  {server.url}" in first, first
        assert f'Client(api_key="{key[:7]}...", base_url="{server.url}")' in first, first

        with client_for(server, key) as http:
            listed = http.get("/v1/api_keys")
            assert listed.status_code == 200, listed.text
            [only] = listed.json()["data"]
            assert only["key_prefix"] == key[:7] and "key" not in only

        time.sleep(2.5)  # a few of the runner's one-second ticks
        assert "apscheduler" not in server.output(), "the scheduler's per-tick lines bury the key:\n" + server.output()
        assert server.output().count("\n") < 40, server.output()

        # Uvicorn shuts down gracefully, then re-raises the signal: dying of SIGTERM is a clean stop.
        assert server.stop() in (0, -signal.SIGTERM), f"SIGTERM should stop the server:\n{server.output()}"

        again = server.start()
        assert KEY.findall(again) == [], f"a restart must not print (or make) another key:\n{again}"
        with client_for(server, key) as http:
            assert len(http.get("/v1/api_keys").json()["data"]) == 1
    finally:
        server.stop()


def test_keys_commands_create_list_and_revoke_against_a_running_server(server: Server):
    data_dir = str(server.data_dir)
    created = run_cli("keys", "create", "--name", "ci", "--data-dir", data_dir)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [created.stdout.strip()], "only the key, on one line"
    key = created.stdout.strip()
    assert KEY.fullmatch(key), created.stdout

    # The running server accepts a key another process wrote to its database.
    with client_for(server, key) as http:
        listed = http.get("/v1/api_keys", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        key_id = next(k["id"] for k in listed.json()["data"] if k["key_prefix"] == key[:7] and k["name"] == "ci")

        shown = run_cli("keys", "list", "--data-dir", data_dir)
        assert shown.returncode == 0, shown.stderr
        row = next((line.split() for line in shown.stdout.splitlines() if key_id in line), None)
        assert row is not None and "ci" in row, shown.stdout
        assert key not in shown.stdout + shown.stderr and server.key not in shown.stdout + shown.stderr

        revoked = run_cli("keys", "revoke", key_id, "--data-dir", data_dir)
        assert revoked.returncode == 0, revoked.stderr
        refused = http.get("/v1/api_keys")  # at once: no restart, no cache to expire
        error = assert_error(refused, 401, "invalid_api_key")
        assert error["type"] == "authentication_error"
        assert refused.headers["www-authenticate"] == "Bearer"

    with client_for(server) as http:
        assert http.get("/v1/api_keys").status_code == 200, "revoking one key leaves the others working"
    assert key_id not in run_cli("keys", "list", "--data-dir", data_dir).stdout

    unknown = run_cli("keys", "revoke", "0123456789abcdef", "--data-dir", data_dir)
    assert unknown.returncode != 0
    assert "0123456789abcdef" in unknown.stderr, unknown.stderr


def test_keys_list_and_revoke_in_a_directory_without_a_box_name_the_flag_and_create_nothing(tmp_path: Path):
    for args in (("keys", "list"), ("keys", "revoke", "0123456789abcdef")):
        result = run_cli(*args, "--data-dir", str(tmp_path / "nowhere"))
        assert result.returncode == 1 and "there is no box in" in result.stderr and "--data-dir" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_help_of_every_command_exits_0_and_names_its_flags():
    top = run_cli("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "keys" in top.stdout, top.stdout + top.stderr

    serve = run_cli("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    for setting in fields(Settings):
        assert "--" + setting.name.replace("_", "-") in serve.stdout, serve.stdout
    # Each flag's help names its default once, and never an empty one.
    text = " ".join(serve.stdout.split())
    helps = text.split("options:", 1)[1].split(" --")
    assert "(default: )" not in text and "(default: None)" not in text, serve.stdout
    for flag in helps:
        assert flag.count("(default:") <= 1, flag
    assert "(default: grpo=trainers.grpo,sft_video_gen=trainers.video)" in text, serve.stdout
    assert "--port PORT Port to listen on. (default: 8000)" in text, serve.stdout

    create = run_cli("keys", "create", "--help")
    assert create.returncode == 0, create.stderr
    assert "--name" in create.stdout and "--data-dir" in create.stdout, create.stdout


# ---- the reference page's requests, unchanged -------------------------------------------------


def test_reference_page_grpo_request_gets_a_queued_job_with_the_seed_defaults(server: Server):
    with client_for(server) as http:
        body = SEED_GRPO_BODY % {"dataset_id": upload_dataset(http), "reward_function_id": upload_reward_function(http)}
        curl = shutil.which("curl")
        if curl:
            done = subprocess.run(
                [
                    curl,
                    "-sS",
                    "-X",
                    "POST",
                    f"{server.url}/v1/training_jobs",
                    "-H",
                    f"Authorization: Bearer {server.key}",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    body,
                    "-w",
                    "\n%{http_code}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            text, _, status = done.stdout.rpartition("\n")
            assert status == "200", done.stdout
            job = json.loads(text)
        else:  # no curl on this machine: the same bytes through httpx
            r = http.post("/v1/training_jobs", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            job = r.json()

        sent = json.loads(body)
        assert job["id"].startswith("job_") and job["object"] == "training_job"
        assert job["status"] == "queued"
        assert {k: job[k] for k in ("base_model", "dataset_id", "reward_function_id", "method", "output_name")} == {
            k: sent[k] for k in ("base_model", "dataset_id", "reward_function_id", "method", "output_name")
        }
        assert {k: job["hyperparameters"][k] for k in SEED_GRPO_HYPERPARAMETERS} == SEED_GRPO_HYPERPARAMETERS
        assert job["gpu_requested"] == {"type": "cpu", "count": 1}
        assert job["download_url"] is None and job["error"] is None and job["completed_at"] is None
        assert job["dashboard_url"].startswith(server.url)
        assert job["created_at"].endswith("Z")

        # The page's list request finds it, and reading it back gives the same resolved set.
        listed = http.get("/v1/training_jobs", params={"status": "queued", "method": "grpo", "limit": 10})
        assert job["id"] in [j["id"] for j in listed.json()["data"]]
        assert http.get(f"/v1/training_jobs/{job['id']}").json()["hyperparameters"] == job["hyperparameters"]


# ---- the training log as Server-Sent Events ------------------------------------------------------


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The events of a text/event-stream response as {"id", "data"} dicts; comments skipped."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[name] = f"{event[name]}\n{value}" if name == "data" and "data" in event else value


def test_logs_stream_as_server_sent_events_resume_and_end_with_the_job(server: Server):
    with client_for(server) as http, client_for(server) as other:
        job_id = create_job(http)["id"]
        # train.log is the trainer's output contract; writing it here stands in for a trainer.
        log = server.data_dir / "jobs" / job_id / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("line1\nline2\n")

        with http.stream(
            "GET",
            f"/v1/training_jobs/{job_id}/logs",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30, read=10),
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = sse_events(stream)
            first, second = next(events), next(events)
            assert (first["data"], second["data"]) == ("line1", "line2")
            assert first.get("id") and second.get("id") and first["id"] != second["id"]

            with log.open("a") as fh:  # written while the client is connected
                fh.write("line3\n")
            third = next(events)
            assert third["data"] == "line3"

            partial = other.get(f"/v1/training_jobs/{job_id}/logs/full")
            assert (partial.status_code, partial.text) == (206, "line1\nline2\nline3\n")

            cancelled = other.post(f"/v1/training_jobs/{job_id}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            assert next(events)["data"] == "[Job cancelled]"
            assert list(events) == [], "the stream should end after its sentinel"

        # A client that lost the connection after line1 picks up where it left off.
        with http.stream(
            "GET",
            f"/v1/training_jobs/{job_id}/logs",
            headers={"Accept": "text/event-stream", "Last-Event-ID": first["id"]},
            timeout=httpx.Timeout(30, read=10),
        ) as stream:
            assert stream.status_code == 200
            assert [e["data"] for e in sse_events(stream)] == ["line2", "line3", "[Job cancelled]"]

        full = http.get(f"/v1/training_jobs/{job_id}/logs/full")
        assert full.status_code == 200
        assert full.text == "line1\nline2\nline3\n"


# ---- the official SDK ----------------------------------------------------------------------------


@pytest.fixture
def sdk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SDK must not need (or read) a user's config when given api_key and base_url."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("VERI_API_KEY", "VERI_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_sdk_uploads_a_dataset_and_runs_a_job_through_its_life(server: Server, sdk_home: Path):
    from veri_sdk import Client
    from veri_sdk.client import VeriRequestError

    client = Client(api_key=server.key, base_url=server.url)
    path = sdk_home / "arithmetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    dataset = client.datasets.upload(str(path))
    assert dataset.id.startswith("ds_") and dataset.name == "arithmetic"
    assert dataset.format == "prompt_only"
    assert dataset.id in [d.id for d in client.datasets.list()]
    assert client.datasets.get(dataset.id).name == "arithmetic"

    job = client.training_jobs.create(
        base_model="Qwen/Qwen3-4B",
        dataset_id=dataset.id,
        output_name="sdk-run",
        gpu_type="cpu",
        gpu_count=1,
        reward_source=REWARD_SOURCE,
        hyperparameters={"max_steps": 5, "global_batch_size": 16},
    )
    assert job.status == "queued" and job.method == "grpo" and job.output_name == "sdk-run"
    assert job.hyperparameters["max_steps"] == 5 and job.hyperparameters["global_batch_size"] == 16
    assert job.hyperparameters["rollouts_per_prompt"] == 8, "defaults are filled in around what was sent"
    assert job.gpu_requested == {"type": "cpu", "count": 1}
    assert job.dashboard_url.startswith(server.url)

    # The inline reward source became a stored reward function with exactly that text.
    with client_for(server) as http:
        rf_id = http.get(f"/v1/training_jobs/{job.id}").json()["reward_function_id"]
        assert http.get(f"/v1/reward_functions/{rf_id}/source").text == REWARD_SOURCE

    assert client.training_jobs.get(job.id).status == "queued"
    assert job.id in [j.id for j in client.training_jobs.list(status="queued")]
    assert client.training_jobs.metrics(job.id) == {"metrics": [], "available_keys": [], "latest_step": None}

    beat = client.training_jobs.heartbeat(job.id)
    assert beat["id"] == job.id and beat["status"] == "queued" and beat["last_heartbeat_at"].endswith("Z")

    assert client.training_jobs.cancel(job.id).status == "cancelled"
    assert client.training_jobs.get(job.id).status == "cancelled"
    assert job.id not in [j.id for j in client.training_jobs.list(status="queued")]

    with pytest.raises(VeriRequestError) as not_ready:
        client.training_jobs.model(job.id)
    assert not_ready.value.code == "model_not_ready"
    with pytest.raises(VeriRequestError) as again:
        client.training_jobs.cancel(job.id)
    assert again.value.code == "job_not_cancellable"


def test_sdk_raises_its_typed_errors(server: Server, sdk_home: Path):
    from veri_sdk import Client
    from veri_sdk.client import VeriAuthError, VeriNotFoundError, VeriRequestError

    with pytest.raises(VeriAuthError):
        Client(api_key="vk_" + "0" * 40, base_url=server.url).datasets.list()

    client = Client(api_key=server.key, base_url=server.url)
    with pytest.raises(VeriNotFoundError):
        client.training_jobs.get("job_000000000000000000000000")

    path = sdk_home / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dataset = client.datasets.upload(str(path))
    with pytest.raises(VeriRequestError) as unavailable:
        client.training_jobs.create(
            base_model="Qwen/Qwen3-4B",
            dataset_id=dataset.id,
            gpu_type="H100-80GB",
            gpu_count=1,
            reward_source=REWARD_SOURCE,
        )
    assert unavailable.value.code == "gpu_unavailable"
    assert "cpu" in str(unavailable.value), "the error should name the devices this box has"


# ---- a finished job's model ----------------------------------------------------------------------


def finish_job_with_files(server: Server, job_id: str) -> dict[str, bytes]:
    """Stand in for the runner (which arrives in a later issue): write the files a trainer leaves
    and record the job as completed, through the store, in the server's own database."""
    job_dir = server.data_dir / "jobs" / job_id
    files = {
        "adapter_config.json": json.dumps(
            {"r": 8, "lora_alpha": 16, "base_model_name_or_path": "Qwen/Qwen3-4B"}
        ).encode(),
        "sub/weights.bin": os.urandom(300_000),
    }
    for rel, data in files.items():
        (job_dir / "output" / rel).parent.mkdir(parents=True, exist_ok=True)
        (job_dir / "output" / rel).write_bytes(data)
    with tarfile.open(job_dir / "model.tar.gz", "w:gz") as archive:
        for rel in files:
            archive.add(job_dir / "output" / rel, arcname=rel)
    store = Store(server.data_dir / "veri-box.db")
    done = store.transition_job(job_id, "completed", allowed_from=["queued"], completed_at=now())
    assert done is not None and done["status"] == "completed"
    return files


def test_sdk_downloads_a_completed_jobs_model_through_signed_links(server: Server, sdk_home: Path):
    from veri_sdk import Client

    client = Client(api_key=server.key, base_url=server.url)
    with client_for(server) as http:
        job_id = create_job(http)["id"]
    files = finish_job_with_files(server, job_id)

    job = client.training_jobs.get(job_id)
    assert job.status == "completed"
    out = Path(job.download(str(sdk_home / "models")))
    assert out == sdk_home / "models" / job_id
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files, "every file arrives, byte for byte, and nothing else"

    manifest = client.training_jobs.model(job_id)
    assert [(f["path"], f["bytes"]) for f in manifest["files"]] == [(p, len(d)) for p, d in sorted(files.items())]

    # The links work without an Authorization header, and only as signed.
    url = manifest["files"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered_signature = urlunsplit(
        parts._replace(
            query=urlencode(
                {**query, "signature": query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")}
            )
        )
    )
    error = assert_error(httpx.get(tampered_signature), 401, "invalid_signature")
    assert error["type"] == "authentication_error"
    other_file = url.replace("adapter_config.json", "sub/weights.bin")
    assert_error(httpx.get(other_file), 401, "invalid_signature")
    assert_error(httpx.get(urlunsplit(parts._replace(query=""))), 401, "missing_signature")

    # download_url is the whole model as one archive, exactly the file the runner packed.
    assert job.download_url and job.download_url.startswith(server.url)
    assert urlsplit(job.download_url).path.endswith("/model.tar.gz")
    archive = httpx.get(job.download_url)
    assert archive.status_code == 200
    assert archive.content == (server.data_dir / "jobs" / job_id / "model.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()} == files
