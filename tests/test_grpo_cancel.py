"""Cancelling a GRPO job mid-training, end to end on the cpu pool with the tiny offline model:
SIGTERM means save-and-stop, so the trainer leaves a checkpoint of the step it reached and the
cpu device is free again within seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Api
from litestar.testing import TestClient

from veri_box.app import create_app
from veri_box.settings import Settings

PROMPTS = [
    "Say something:",
    "Tell me a number.",
    "Write a short word.",
    "Hello! How are you?",
    "What is 2 + 3?",
    "Count to five:",
    "Name a color.",
    "Give me a letter.",
]
A_RATIO = '''
def reward(completions, **kwargs):
    """Fraction of the completion's characters that are 'a'."""
    return [c.count("a") / len(c) if c else 0.0 for c in completions]
'''


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def box(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", gpus="none", cpu_slots=1)
    app = create_app(settings, run_jobs=False)
    with TestClient(app) as client:
        _, key = app.state.store.create_api_key("t")
        api = Api(client, key, settings)
        yield api
        for job in api.store.jobs_with_status("queued", "provisioning", "running"):
            app.state.runner.cancel(job["id"])
        run_until(api, lambda: not api.store.jobs_holding_devices(), timeout=30)


def run_until(api: Api, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        api.client.app.state.runner.tick()
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")


def grpo_job(api: Api, model: Path, **hyperparameters) -> str:
    dataset = api.dataset([{"prompt": p, "answer": "a"} for p in PROMPTS])
    rf = api.reward_function(A_RATIO, name="a_ratio")
    hp = {
        "learning_rate": 0.05,
        "rollouts_per_prompt": 8,
        "global_batch_size": 32,
        "max_response_length": 16,
        "max_prompt_length": 64,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "seed": 0,
        **hyperparameters,
    }
    return api.job(base_model=str(model), dataset_id=dataset, reward_function_id=rf, hyperparameters=hp)["id"]


def cpu_available(api: Api) -> int:
    rows = api.get("/v1/gpu/availability").json()["availability"]
    return next(r["available"] for r in rows if r["gpu_type"] == "cpu")


def test_cancel_saves_a_checkpoint_and_frees_the_device_quickly(box, tiny_model):
    job_id = grpo_job(box, tiny_model, max_steps=200)
    run_until(box, lambda: (box.store.get_job(job_id)["current_step"] or 0) >= 3, timeout=300)
    assert cpu_available(box) == 0

    r = box.post(f"/v1/training_jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    cancelled = time.monotonic()
    run_until(box, lambda: cpu_available(box) == 1, timeout=30)
    took = time.monotonic() - cancelled
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert took < 10, (took, log[-3000:])

    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    last_step = job["current_step"]
    assert 3 <= last_step < 200

    checkpoints = box.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"]
    assert len(checkpoints) == 1, (checkpoints, log[-3000:])
    assert checkpoints[0]["step"] == last_step  # the step it was in when SIGTERM came, logged then saved
    assert "adapter_model.safetensors" in {f["path"] for f in checkpoints[0]["files"]}

    assert f"stopped on SIGTERM at step {checkpoints[0]['step']}" in log, log[-3000:]
    sse = box.get(f"/v1/training_jobs/{job_id}/logs").text
    assert sse.rstrip().endswith("data: [Job cancelled]"), sse[-500:]
