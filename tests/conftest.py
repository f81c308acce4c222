"""Shared fixtures: a real app on a real SQLite file in a temp dir, and helpers to upload."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hf_cache import api_test_cache
from litestar.testing import TestClient

from veri_box.app import Box, create_app
from veri_box.devices import build_inventory
from veri_box.settings import Settings

# The reference page's response to its GRPO request: every default filled in and echoed back.
SEED_GRPO_HYPERPARAMETERS = {
    "learning_rate": 1e-6,
    "num_epochs": 1,
    "max_steps": None,
    "rollouts_per_prompt": 8,
    "kl_coef": 0.001,
    "max_prompt_length": 1024,
    "max_response_length": 2048,
    "global_batch_size": 64,
    "seed": 42,
}

REWARD_SOURCE = """
def reward(completions, **kwargs):
    return [float(len(c)) for c in completions]
"""


class Api:
    """An in-process client holding a valid API key, and the Box its app serves."""

    def __init__(self, client: TestClient, key: str, box: Box):
        self.client = client
        self.key = key
        self.box = box
        self.settings = box.settings
        self.headers = {"Authorization": f"Bearer {key}"}

    def __getattr__(self, method: str):
        call = getattr(self.client, method)

        def request(url: str, **kwargs):
            kwargs.setdefault("headers", {}).update(self.headers)
            return call(url, **kwargs)

        return request

    @property
    def store(self):
        return self.box.store

    def upload_dataset(self, rows: list[dict] | bytes, filename: str = "data.jsonl", name: str = "ds"):
        body = rows if isinstance(rows, bytes) else "".join(json.dumps(r) + "\n" for r in rows).encode()
        return self.post("/v1/datasets", data={"name": name}, files={"file": (filename, body, "application/jsonl")})

    def dataset(self, rows: list[dict] | None = None) -> str:
        r = self.upload_dataset(
            rows or [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "Say hi", "answer": "hi"}]
        )
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def reward_function(self, source: str = REWARD_SOURCE, name: str = "length") -> str:
        r = self.post("/v1/reward_functions", data={"name": name}, files={"file": ("reward.py", source.encode())})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def job(self, **overrides) -> dict:
        body = {
            "base_model": "Qwen/Qwen3-4B",
            "dataset_id": overrides.pop("dataset_id", None) or self.dataset(),
            "output_name": "test",
            "gpu": {"type": "cpu", "count": 1},
        }
        if (
            "reward_source" not in overrides
            and "environments" not in overrides
            and overrides.get("method") != "sft_video_gen"
        ):
            body["reward_function_id"] = overrides.pop("reward_function_id", None) or self.reward_function()
        body.update(overrides)
        r = self.post("/v1/training_jobs", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def make_settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", gpus="none", **kw)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def api(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    # Jobs are checked at submit against the models the box has: these tests' models are in a
    # Hugging Face cache of their own, as config files (no trainer runs here, run_jobs=False).
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    box = Box.open(settings, build_inventory("A100-80GB:2", settings.cpu_slots))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("test")
        yield Api(client, key, box)


# -- real training jobs: the in-process API, the runner ticked by the test, real trainers ----


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # As for `api`: the models these tests name only at submit are in a cache of their own; the
    # jobs that train name the built-in or a tiny model's folder.
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    settings = Settings(data_dir=tmp_path / "data", gpus="none", cpu_slots=1)
    box = Box.open(settings)
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        api = Api(client, key, box)
        yield api
        for job in api.store.jobs_with_status("queued", "provisioning", "running"):
            box.runner.cancel(job["id"])
        run_until(api, lambda: not api.store.jobs_holding_devices(), timeout=30)


def run_until(api: Api, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        api.box.runner.tick()
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")


def finished(api: Api, job_id: str, timeout: float = 600) -> dict:
    run_until(api, lambda: api.store.get_job(job_id)["status"] in ("completed", "failed", "cancelled"), timeout)
    return api.get(f"/v1/training_jobs/{job_id}").json()
