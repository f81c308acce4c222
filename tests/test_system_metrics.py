"""System metrics: the nvidia-smi parser on output in its exact CSV format, psutil over a real
process tree, a sampler that never holds up the scheduler's tick (a slow nvidia-smi stand-in on
PATH), and a running tiny GRPO job whose CPU and memory appear in its /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Api, finished, run_until
from hf_cache import api_test_cache
from litestar.testing import TestClient
from test_grpo import grpo_job

from veri_box import system_metrics
from veri_box.app import Box, create_app
from veri_box.settings import Settings

FIXTURE = Path(__file__).parent / "fixtures" / "nvidia_smi_query.csv"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from trainers.tiny_video import build_tiny_video_pipeline

    return build_tiny_video_pipeline(tmp_path_factory.mktemp("tiny_video") / "pipeline", seed=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_the_nvidia_smi_query_parses_and_leaves_out_what_it_cannot_measure():
    readings = system_metrics.parse_nvidia_smi(FIXTURE.read_text())
    assert readings[0] == {"utilization_percent": 100.0, "memory_used_mb": 75812.0, "power_w": 689.54}
    assert readings[2] == {"utilization_percent": 0.0, "memory_used_mb": 4.0, "power_w": 68.91}
    assert readings[3] == {"utilization_percent": 0.0, "memory_used_mb": 1.0}  # power.draw "[N/A]"
    assert sorted(readings) == [0, 1, 2, 3]
    # What a driver in trouble prints instead of rows is no device's reading.
    noise = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n0, [Not Supported], 12, 30.5\n"
    )
    assert system_metrics.parse_nvidia_smi(noise) == {0: {"memory_used_mb": 12.0, "power_w": 30.5}}


def test_each_gpu_reading_goes_to_the_job_holding_the_device():
    readings = system_metrics.parse_nvidia_smi(FIXTURE.read_text())
    out = system_metrics.gpu_metrics(readings, {0: "job_a", 1: "job_a", 3: "job_b"})
    assert out["job_a"] == {
        "system/gpu0/utilization_percent": 100.0,
        "system/gpu0/memory_used_mb": 75812.0,
        "system/gpu0/power_w": 689.54,
        "system/gpu1/utilization_percent": 97.0,
        "system/gpu1/memory_used_mb": 75790.0,
        "system/gpu1/power_w": 671.2,
    }
    assert out["job_b"] == {"system/gpu3/utilization_percent": 0.0, "system/gpu3/memory_used_mb": 1.0}
    assert "system/gpu2/power_w" not in str(out)  # a free device belongs to no job


BUSY_CHILD = "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'while True: pass']); c.wait()"


def test_a_process_tree_reports_its_childrens_cpu_and_memory():
    parent = subprocess.Popen([sys.executable, "-c", BUSY_CHILD])
    try:
        tree = system_metrics.ProcessTree(parent.pid)
        time.sleep(0.3)  # the busy grandchild has started
        first = tree.sample()
        assert first["system/rss_mb"] > 5 and "system/cpu_percent" not in first  # psutil needs two readings
        time.sleep(1.0)
        second = tree.sample()
        # The grandchild spins a core (on this shared 2-core machine it gets what others leave).
        assert second["system/cpu_percent"] > 10, second
    finally:
        parent.kill()
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.wait()
    time.sleep(0.1)
    assert tree.sample() is None


def test_sampling_never_blocks_the_tick_even_when_nvidia_smi_hangs(tmp_path, monkeypatch):
    # A stand-in for the driver's tool (no GPU here): slow, then the fixture's rows.
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nsleep 2\ncat {FIXTURE}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    sampler = system_metrics.Sampler(interval_s=0.01)
    job = {"id": "job_gpu", "pid": os.getpid(), "gpu": {"type": "H100-80GB", "count": 2}, "devices": [0, 1]}
    started = time.monotonic()
    assert sampler.tick([job]) == {}
    for _ in range(20):
        assert sampler.tick([job]) == {}  # measuring: nothing yet, and no second measurement
    assert time.monotonic() - started < 0.5
    sampler.wait()
    ready = sampler.tick([job])["job_gpu"]
    assert ready["system/gpu1/power_w"] == 671.2 and "system/rss_mb" in ready
    assert not any(k.startswith("system/gpu2") for k in ready)


@pytest.fixture
def sampled_box(tmp_path, monkeypatch):
    """A box whose runner samples every half second (the default is 5 s)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    settings = Settings(data_dir=tmp_path / "data", gpus="none", cpu_slots=1, system_metrics_interval_s=0.5)
    box = Box.open(settings)
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        api = Api(client, key, box)
        yield api
        for job in api.store.jobs_with_status("queued", "provisioning", "running"):
            box.runner.cancel(job["id"])
        run_until(api, lambda: not api.store.jobs_holding_devices(), timeout=30)


def test_a_running_jobs_cpu_and_memory_appear_in_its_metrics(sampled_box, tiny_model):
    api = sampled_box
    job_id = grpo_job(api, tiny_model, max_steps=400)
    url = f"/v1/training_jobs/{job_id}/metrics?keys=system/cpu_percent,system/rss_mb&max_points=1000"

    def sampled_while_training() -> list[dict]:
        # Samples sit at the job's current step: those past step 0 were taken while it trained.
        return [p for p in api.get(url).json()["metrics"] if p["step"] >= 2 and "system/cpu_percent" in p["values"]]

    run_until(api, lambda: len(sampled_while_training()) >= 2, timeout=300)
    assert api.get(f"/v1/training_jobs/{job_id}").json()["status"] == "running"
    points = sampled_while_training()
    assert max(p["values"]["system/rss_mb"] for p in points) > 100, points  # torch, transformers, the model
    assert max(p["values"]["system/cpu_percent"] for p in points) > 10, points  # it trains on the CPU
    assert "system/cpu_percent" in api.get(f"/v1/training_jobs/{job_id}/metrics").json()["available_keys"]


def test_a_video_job_records_clips_per_second(box, tiny_pipeline):
    from test_video import upload_clips, video_job

    dataset = upload_clips(box)["id"]
    r = video_job(box, tiny_pipeline, dataset, num_epochs=1, validation_prompts=[], validation_steps=None)
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    assert job["status"] == "completed", job["error"]
    points = box.get(f"/v1/training_jobs/{job['id']}/metrics?keys=throughput/clips_per_s,step_time").json()["metrics"]
    assert len(points) == 4  # 4 clips, batch 1
    for p in points:  # one clip a step: clips per second is the inverse of the step's seconds
        assert p["values"]["throughput/clips_per_s"] == pytest.approx(1 / p["values"]["step_time"], rel=1e-6)
