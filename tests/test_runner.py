"""The runner supervising real trainer processes (the stdlib test trainer), ticked by hand so
each step of a job's life can be watched: placement, progress, cancel, failure, accounting."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
from conftest import Api
from litestar.testing import TestClient
from serving import FAKE_TRAINERS, REPO, descendants

from veri_box.app import Box, create_app
from veri_box.devices import build_inventory
from veri_box.executors import process_start_time, trainer_command
from veri_box.settings import Settings


def make_box(data_dir: Path, gpus: str = "A100-80GB:2", **settings_kw) -> tuple[TestClient, Api]:
    settings_kw = {
        "cpu_slots": 1,
        "trainers": FAKE_TRAINERS,
        "cancel_grace_s": 1.0,
        "price_per_hour": "A100-80GB=3.6",
        **settings_kw,
    }
    settings = Settings(data_dir=data_dir, gpus="none", **settings_kw)
    box = Box.open(settings, build_inventory(gpus, settings.cpu_slots, settings.prices()))
    client = TestClient(create_app(box, run_jobs=False))
    client.__enter__()
    key = next(iter([box.store.create_api_key("t")[1]]))
    return client, Api(client, key, box)


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client, api = make_box(tmp_path / "data")
    yield api
    # No trainer outlives its test: cancel what is left and let the runner reap it.
    for job in api.store.jobs_with_status("queued", "provisioning", "running"):
        api.box.runner.cancel(job["id"])
    until(api, lambda: not api.store.jobs_holding_devices(), timeout=15)
    client.__exit__(None, None, None)


def tick(api: Api) -> None:
    api.box.runner.tick()


def until(api: Api, predicate, timeout: float = 10.0) -> float:
    """Tick the runner until `predicate()` holds; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        tick(api)
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")


def status(api: Api, job_id: str) -> str:
    return api.get(f"/v1/training_jobs/{job_id}").json()["status"]


def job_dir(api: Api, job_id: str) -> Path:
    return api.settings.data_dir / "jobs" / job_id


def trainer_env(api: Api, job_id: str) -> dict:
    """What the trainer wrote of itself, its pid the one the runner follows: in the sandbox the
    trainer sees only its own PID namespace, where it is pid 1."""
    path = job_dir(api, job_id) / "env.json"
    until(api, path.exists)
    return {**json.loads(path.read_text()), "pid": api.store.get_job(job_id)["pid"]}


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


def events(api: Api, job_id: str) -> list[str]:
    return [e["event_type"] for e in api.get(f"/v1/training_jobs/{job_id}/events").json()["items"]]


def free(api: Api, kind: str) -> int:
    rows = api.get("/v1/gpu/availability").json()["availability"]
    return next(r["available"] for r in rows if r["gpu_type"] == kind)


def submit(api: Api, behaviour: str, kind: str = "cpu", count: int = 1, **body) -> str:
    return api.job(base_model=f"fake:{behaviour}", gpu={"type": kind, "count": count}, **body)["id"]


def test_a_job_runs_to_completion_with_everything_recorded(box):
    job_id = submit(box, "steps=4,save_every=2,step_s=0.05")
    tick(box)
    placed = box.get(f"/v1/training_jobs/{job_id}").json()
    assert placed["status"] in ("provisioning", "running")
    assert placed["gpu"] == {"type": "cpu", "count": 1} and placed["provider"] == "local"
    until(box, lambda: status(box, job_id) == "completed")

    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert (job["current_step"], job["total_steps"]) == (4, 4)
    assert job["current_loss"] == pytest.approx(1 / 5)
    assert job["started_at"] <= job["completed_at"] and job["duration_seconds"] > 0
    assert job["cost_usd"] == 0.0 and job["error"] is None
    assert events(box, job_id) == [
        "created",
        "submitted",
        "running",
        "checkpoint_saved",
        "checkpoint_saved",
        "completed",
    ]

    metrics = box.get(f"/v1/training_jobs/{job_id}/metrics").json()
    assert [p["step"] for p in metrics["metrics"]] == [1, 2, 3, 4]
    assert metrics["available_keys"] == ["learning_rate", "loss", "reward"]
    assert len(box.store.list_samples(job_id, None, 100, None)[0]) == 4

    checkpoints = box.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [4, 2]
    weights = checkpoints[1]["files"][0]
    assert weights["path"] == "weights.bin"
    assert box.client.get(weights["url"].removeprefix(box.settings.base_url)).status_code == 200

    model = box.get(f"/v1/training_jobs/{job_id}/model").json()
    assert sorted(f["path"] for f in model["files"]) == ["config.json", "model.bin"]
    archive = box.client.get(model["download_url"].removeprefix(box.settings.base_url)).content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["config.json", "model.bin"]

    config = json.loads((job_dir(box, job_id) / "config.json").read_text())
    assert Path(config["dataset"]["path"]).is_file() and config["dataset"]["format"] == "prompt_only"
    assert Path(config["reward_functions"][0]["path"]).read_text().startswith("\ndef reward")
    assert config["hyperparameters"]["seed"] == 42 and config["devices"] == {"type": "cpu", "count": 1, "indices": [0]}
    assert trainer_env(box, job_id)["CUDA_VISIBLE_DEVICES"] == ""
    log = box.get(f"/v1/training_jobs/{job_id}/logs").text
    assert "step 4 loss" in log and log.rstrip().endswith("data: [Job completed]")
    assert free(box, "cpu") == 1


def test_fifo_per_device_type_without_blocking_other_types(box):
    first = submit(box, "hang=1")
    second = submit(box, "hang=1")
    on_gpu = submit(box, "hang=1", kind="A100-80GB")
    until(box, lambda: status(box, first) == "running" and status(box, on_gpu) == "running")
    assert status(box, second) == "queued"
    assert free(box, "cpu") == 0 and free(box, "A100-80GB") == 1
    box.post(f"/v1/training_jobs/{first}/cancel")
    until(box, lambda: status(box, second) == "running")


def test_jobs_never_share_a_device(box):
    jobs = [submit(box, "hang=1", kind="A100-80GB") for _ in range(3)]
    until(box, lambda: all(status(box, j) == "running" for j in jobs[:2]))
    assert {trainer_env(box, j)["CUDA_VISIBLE_DEVICES"] for j in jobs[:2]} == {"0", "1"}
    assert status(box, jobs[2]) == "queued"
    freed = trainer_env(box, jobs[1])["CUDA_VISIBLE_DEVICES"]
    box.post(f"/v1/training_jobs/{jobs[1]}/cancel")
    until(box, lambda: status(box, jobs[2]) == "running")
    assert trainer_env(box, jobs[2])["CUDA_VISIBLE_DEVICES"] == freed


def test_cancel_during_start_up(box):
    job_id = submit(box, "startup_s=30")
    until(box, lambda: (job_dir(box, job_id) / "env.json").exists())
    pid = trainer_env(box, job_id)["pid"]
    assert status(box, job_id) == "provisioning"
    assert box.post(f"/v1/training_jobs/{job_id}/cancel").json()["status"] == "cancelled"
    took = until(box, lambda: free(box, "cpu") == 1)
    assert took < 10 and not alive(pid)
    assert events(box, job_id) == ["created", "submitted", "cancelled"]


def test_cancel_mid_run_ends_the_whole_process_group(box):
    job_id = submit(box, "hang=1,child=1")
    until(box, lambda: (job_dir(box, job_id) / "grandchild.pid").exists() and status(box, job_id) == "running")
    pid = trainer_env(box, job_id)["pid"]
    tree = descendants(pid)  # the trainer and its grandchild (in the sandbox with bwrap before them)
    assert len(tree) >= 2
    box.post(f"/v1/training_jobs/{job_id}/cancel")
    took = until(box, lambda: free(box, "cpu") == 1)
    assert took < 10
    assert not alive(pid) and not any(alive(p) for p in tree)
    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["duration_seconds"] is not None
    assert box.get(f"/v1/training_jobs/{job_id}/logs").text.rstrip().endswith("data: [Job cancelled]")


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(box):
    job_id = submit(box, "hang=1,ignore_sigterm=1")
    until(box, lambda: status(box, job_id) == "running")
    pid = trainer_env(box, job_id)["pid"]
    box.post(f"/v1/training_jobs/{job_id}/cancel")
    time.sleep(0.3)
    tick(box)
    assert alive(pid), "SIGTERM alone must not have stopped it"
    took = until(box, lambda: free(box, "cpu") == 1)
    assert took < 10 and not alive(pid)


@pytest.mark.parametrize(
    "behaviour, code, words",
    [
        ("steps=5,crash_at=3", "trainer_crashed", ["exited with code 1", "boom at step 3"]),
        ("steps=5,error_at=2,error_code=model_not_found", "model_not_found", ["model_not_found at step 2"]),
        ("steps=5,oom_at=2", "out_of_memory", ["ran out of memory", "lora_rank", "load_in_4bit"]),
    ],
)
def test_failures_carry_the_trainers_reason(box, behaviour, code, words):
    job_id = submit(box, behaviour)
    until(box, lambda: status(box, job_id) == "failed")
    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert job["error"]["code"] == code
    assert all(w in job["error"]["message"] for w in words), job["error"]["message"]
    assert events(box, job_id)[-1] == "failed"
    assert box.get(f"/v1/training_jobs/{job_id}/metrics").json()["latest_step"] >= 1  # what it logged stays
    assert free(box, "cpu") == 1
    assert box.get(f"/v1/training_jobs/{job_id}/logs").text.rstrip().endswith("data: [Job failed]")


def test_a_method_without_an_installed_trainer_fails_clearly(tmp_path, monkeypatch):
    client, api = make_box(tmp_path / "data", trainers="grpo=tests.no_such_trainer")
    try:
        job_id = submit(api, "steps=1")
        until(api, lambda: status(api, job_id) == "failed")
        error = api.get(f"/v1/training_jobs/{job_id}").json()["error"]
        assert error["code"] == "trainer_unavailable" and "tests.no_such_trainer" in error["message"]
        assert events(api, job_id) == ["created", "failed"]
    finally:
        client.__exit__(None, None, None)


def test_cost_uses_the_price_per_device_hour(box):
    job_id = submit(box, "steps=3,step_s=0.1", kind="A100-80GB", count=2)
    until(box, lambda: status(box, job_id) in ("completed", "failed"), timeout=60)
    job = box.get(f"/v1/training_jobs/{job_id}").json()
    # Two devices through accelerate launch: each rank runs the test trainer; what matters here
    # is the accounting: 3.6 $/h per device = 0.001 $/s per device.
    assert job["gpu"] == {"type": "A100-80GB", "count": 2}
    assert job["cost_usd"] == pytest.approx(job["duration_seconds"] * 0.002, rel=0.01)


def test_a_queued_job_whose_device_type_disappeared_fails(tmp_path, monkeypatch):
    client, api = make_box(tmp_path / "data")
    job_id = submit(api, "steps=1", kind="A100-80GB")
    client.__exit__(None, None, None)
    client, api = make_box(tmp_path / "data", gpus="none")
    try:
        until(api, lambda: status(api, job_id) == "failed")
        error = api.get(f"/v1/training_jobs/{job_id}").json()["error"]
        assert error["code"] == "gpu_unavailable" and "A100-80GB" in error["message"]
    finally:
        client.__exit__(None, None, None)


def test_trainer_command_line():
    command, env = trainer_command("trainers.grpo", Path("/data/jobs/j"), "cpu", [0], cpu_threads=2)
    assert command[1:] == ["-m", "trainers.grpo", "/data/jobs/j"] and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1"
    command, env = trainer_command("trainers.grpo", Path("/data/jobs/j"), "H100-80GB", [2, 3])
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"] and command[4] == "2"
    assert command[-3:] == ["-m", "trainers.grpo", "/data/jobs/j"] and env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_sigterm_is_not_sent_to_unrelated_processes(box):
    """A stale pid from a previous life of the box is never signalled: start times must match."""
    job_id = submit(box, "hang=1")
    until(box, lambda: status(box, job_id) == "running")
    box.store.update_job(job_id, pid_started="1")  # as if the pid now belonged to another process
    pid = trainer_env(box, job_id)["pid"]
    box.box.runner.executors["local"]._children.clear()  # a re-attached trainer is not our child
    until(box, lambda: status(box, job_id) == "failed")
    assert box.get(f"/v1/training_jobs/{job_id}").json()["error"]["code"] == "trainer_crashed"
    assert alive(pid)  # not ours any more as far as the runner can tell, so left alone
    os.killpg(pid, signal.SIGKILL)


def test_samples_are_listed_by_step_and_paged(box):
    job_id = submit(box, "steps=3")
    until(box, lambda: status(box, job_id) == "completed")
    every = box.get(f"/v1/training_jobs/{job_id}/samples").json()
    assert [(s["step"], s["prompt"], s["completion"]) for s in every["data"]] == [
        (1, "p1", "c1"),
        (2, "p2", "c2"),
        (3, "p3", "c3"),
    ]
    first = box.get(f"/v1/training_jobs/{job_id}/samples?limit=2").json()
    assert len(first["data"]) == 2 and first["has_more"]
    rest = box.get(f"/v1/training_jobs/{job_id}/samples?limit=2&after={first['data'][-1]['id']}").json()
    assert [s["step"] for s in rest["data"]] == [3] and not rest["has_more"]
    assert [s["step"] for s in box.get(f"/v1/training_jobs/{job_id}/samples?step=2").json()["data"]] == [2]
