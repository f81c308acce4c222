"""The rest of the official client against a real `veri-box serve`: the `veri` CLI's whoami,
doctor, dataset, job and checkpoint commands, and the routes they read (`/v1/me`, `/health`,
cancel answering the whole job, one checkpoint and its download, deleting a finished job)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import FAKE_TRAINERS, KEY, Server, veri

REWARD = "def reward(completions, **kwargs):\n    return [1.0 for _ in completions]\n"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    server = Server(root / "data", root / "serve.log", "--gpus", "none", "--trainers", FAKE_TRAINERS)
    server.key = KEY.search(server.start()).group(0)
    yield server
    server.stop()


def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)


def submit(client: httpx.Client, behaviour: str) -> str:
    dataset = client.post(
        "/v1/datasets", data={"name": "d"}, files={"file": ("d.jsonl", b'{"prompt": "hi"}\n')}
    ).json()["id"]
    reward = client.post("/v1/reward_functions", data={"name": "r"}, files={"file": ("r.py", REWARD.encode())})
    body = {
        "base_model": f"fake:{behaviour}",
        "dataset_id": dataset,
        "reward_function_id": reward.json()["id"],
        "gpu": {"type": "cpu", "count": 1},
    }
    response = client.post("/v1/training_jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def wait_for(client: httpx.Client, job_id: str, *statuses: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/training_jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never became {statuses}: {job}")


def test_whoami_and_doctor_name_this_key_and_find_the_box(box: Server, tmp_path: Path):
    with http(box) as client:
        me = client.get("/v1/me").json()
        assert me["object"] == "me" and me["name"] == "first key" and me["plan"] == "self-hosted"
        key_id = me["id"]
        assert client.get("/health").json()["status"] == "ok"
        assert httpx.get(f"{box.url}/v1/me").status_code == 401  # the key is the identity

    whoami = veri(box, tmp_path, "--json", "whoami")
    assert whoami.returncode == 0, whoami.stderr
    shown = json.loads(whoami.stdout)
    assert shown["user_id"] == key_id and shown["plan"] == "self-hosted"
    assert me["name"] in shown["workspace"]
    assert "invalid_or_expired_token" not in whoami.stdout

    doctor = veri(box, tmp_path, "--json", "doctor")
    checks = {c["check"]: c["status"] for c in json.loads(doctor.stdout)}
    assert checks["credentials"] == "pass" and checks["network"] == "pass", doctor.stdout


def test_jobs_datasets_and_checkpoints_through_the_cli(box: Server, tmp_path: Path):
    with http(box) as client:
        job_id = submit(client, "steps=4,save_every=2,step_s=0.05")
        wait_for(client, job_id, "completed")

    listed = veri(box, tmp_path, "--json", "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    got = veri(box, tmp_path, "--json", "jobs", "get", job_id)
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == "completed"
    datasets = veri(box, tmp_path, "--json", "datasets", "list")
    assert datasets.returncode == 0 and '"d"' in datasets.stdout

    checkpoints = veri(box, tmp_path, "--json", "checkpoints", "list", job_id)
    assert checkpoints.returncode == 0, checkpoints.stderr
    rows = json.loads(checkpoints.stdout)
    assert [row["step"] for row in rows] == [4, 2]
    one = veri(box, tmp_path, "--json", "checkpoints", "get", job_id, f"{job_id}@2")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["step"] == 2 and json.loads(one.stdout)["size"] == "8 B"
    out = tmp_path / "downloads"
    download = veri(box, tmp_path, "checkpoints", "download", job_id, f"{job_id}@2", "--output", str(out))
    assert download.returncode == 0, download.stderr
    (folder,) = out.iterdir()
    assert (folder / "weights.bin").read_bytes() == b"fake" + (2).to_bytes(4, "little")

    missing = veri(box, tmp_path, "checkpoints", "get", job_id, f"{job_id}@3")
    assert missing.returncode != 0 and "no checkpoint" in (missing.stdout + missing.stderr).lower()


def test_cancel_answers_the_whole_job_and_the_cli_says_cancelled(box: Server, tmp_path: Path):
    with http(box) as client:
        job_id = submit(client, "steps=400,step_s=0.2")
        wait_for(client, job_id, "running")
        cancelled = veri(box, tmp_path, "jobs", "cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "Cancelled" in cancelled.stdout and "not billed" not in cancelled.stdout
        job = client.get(f"/v1/training_jobs/{job_id}").json()
        assert job["status"] == "cancelled"
        again = client.post(f"/v1/training_jobs/{job_id}/cancel")
        assert again.status_code == 400 and again.json()["error"]["code"] == "job_not_cancellable"


def test_a_finished_job_is_deleted_with_its_files_and_an_active_one_is_refused(box: Server, tmp_path: Path):
    with http(box) as client:
        running = submit(client, "steps=400,step_s=0.2")
        wait_for(client, running, "running")
        refused = client.delete(f"/v1/training_jobs/{running}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_active"
        assert (box.data_dir / "jobs" / running).is_dir()
        whole = client.post(f"/v1/training_jobs/{running}/cancel").json()
        assert whole["id"] == running and whole["status"] == "cancelled" and whole["base_model"].startswith("fake:")

        done = submit(client, "steps=2,save_every=1,step_s=0.05")
        wait_for(client, done, "completed")
        dataset = client.get(f"/v1/training_jobs/{done}").json()["dataset_id"]
        assert (box.data_dir / "jobs" / done / "model.tar.gz").is_file()
        deleted = veri(box, tmp_path, "jobs", "delete", done)
        assert deleted.returncode == 0, deleted.stderr
        assert client.get(f"/v1/training_jobs/{done}").status_code == 404
        assert not (box.data_dir / "jobs" / done).exists()
        assert not any(p.name.startswith(".deleted-") for p in (box.data_dir / "jobs").iterdir())
        assert client.get(f"/v1/training_jobs/{done}/checkpoints").status_code == 404
        # Nothing of it holds its dataset any more.
        assert client.delete(f"/v1/datasets/{dataset}").status_code in (200, 204)
