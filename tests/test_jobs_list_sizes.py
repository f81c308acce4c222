"""The jobs list's disk column: each job's size as its folder holds it, measured once for a finished
job (the list no longer walks every folder on every render) and again when it changes: a real
merge through the dashboard, a delete, a folder changed after the job ended, a running job or one
whose trainer is still stopping (measured again every LIVE_SIZE_S)."""

from __future__ import annotations

import re
import time

import pytest
from conftest import Api, finished
from test_dashboard import Browser
from test_merge import lora_job

from veri_box import artifacts
from veri_box.dashboard.rendering import size as shown


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def listed(web: Browser, url: str = "/jobs/table") -> dict[str, str]:
    """Each listed job's id and the size its row shows."""
    page = web.get(url).text
    return dict(re.findall(r'id="row-(job_[0-9a-f]+)".*?<td class="num job-size"[^>]*>([^<]*)</td>', page, re.S))


def on_disk(api: Api, job_id: str) -> str:
    return shown(artifacts.job_size(api.settings, job_id))


def put(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def settle() -> None:
    """Past RACY_S: a folder changed this recently is walked on every render, whatever its key."""
    time.sleep(artifacts.RACY_S + 0.1)


def test_a_finished_jobs_size_is_measured_once_and_again_after_a_merge_and_a_delete(box, tiny_model):
    job_id = lora_job(box, str(tiny_model))
    assert finished(box, job_id)["status"] == "completed"
    other = box.job()["id"]  # a job that never ran: its folder holds its config alone
    box.store.transition_job(other, "failed", allowed_from=["queued"], error_code="x", error_message="x")
    web = Browser(box)
    settle()
    before = artifacts.job_size(box.settings, job_id)
    assert listed(web) == {job_id: shown(before), other: on_disk(box, other)}
    measured = box.store.get_job(job_id)
    assert measured["disk_bytes"] == before
    # Renders after that read the stored size: the folder is not walked again.
    for url in ("/jobs", "/jobs/table", "/jobs?method=grpo"):
        assert listed(web, url)[job_id] == shown(before)
    assert box.store.get_job(job_id)["disk_bytes_at"] == measured["disk_bytes_at"]

    # A merge writes merged/ beside the adapter: the list shows the larger folder.
    r = web.post(f"/jobs/{job_id}/merge")
    assert 'data-merge="merging"' in r.text
    deadline = time.monotonic() + 300
    while 'data-merge="merging"' in (panel := web.get(f"/jobs/{job_id}/merge").text):
        assert time.monotonic() < deadline
        listed(web)  # the list polls meanwhile
        time.sleep(0.3)
    assert 'data-merge="completed"' in panel, panel
    after = artifacts.job_size(box.settings, job_id)
    assert after > before
    assert listed(web)[job_id] == shown(after)
    settle()
    assert listed(web)[job_id] == shown(after)
    assert f'<strong id="job-size">{shown(after)}</strong>' in web.get(f"/jobs/{job_id}").text

    # Deleted: gone from the list; the other job's size is still its own.
    r = web.post(f"/jobs/{job_id}/delete")
    assert r.headers.get("HX-Redirect") == "/jobs", r.text
    assert listed(web) == {other: on_disk(box, other)}


def test_a_folder_changed_after_its_job_ended_is_measured_again(web):
    api = web.api
    job_id = api.job()["id"]
    job_dir = api.settings.data_dir / "jobs" / job_id
    put(job_dir / "checkpoints" / "checkpoint-10" / "adapter_model.safetensors", b"w" * 5000)
    api.store.transition_job(job_id, "completed", allowed_from=["queued"])
    settle()
    assert listed(web)[job_id] == on_disk(api, job_id)

    # A new entry in the folder (as merged/ moved in), no event: the folder's mtime changed.
    put(job_dir / "merged" / "model.safetensors", b"m" * 300_000)
    settle()
    assert listed(web)[job_id] == on_disk(api, job_id) == shown(api.store.get_job(job_id)["disk_bytes"])

    # Deeper down, with an event recorded (what the box does when it changes a finished job's files).
    (job_dir / "checkpoints" / "checkpoint-10" / "adapter_model.safetensors").unlink()
    put(job_dir / "merged" / "model-2.safetensors", b"m" * 200_000)
    api.store.add_event(job_id, "merge_completed", {})
    assert listed(web)[job_id] == on_disk(api, job_id)

    # Its folder gone from under it: nothing on disk.
    settle()
    for path in sorted(job_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    job_dir.rmdir()
    assert listed(web)[job_id] == shown(0)


def test_a_live_jobs_size_is_measured_again_every_few_seconds(web, monkeypatch):
    api = web.api
    running = api.job()["id"]
    api.store.transition_job(running, "running", allowed_from=["queued"], devices=[0], pid=None)
    stopping = api.job()["id"]  # cancelled, its trainer still saving: it holds its devices
    api.store.transition_job(stopping, "cancelled", allowed_from=["queued"], devices=[1], pid=None)
    jobs_dir = api.settings.data_dir / "jobs"
    for job_id in (running, stopping):
        put(jobs_dir / job_id / "train.log", b"x" * 1000)
    first = listed(web)
    assert first[running] == on_disk(api, running) and first[stopping] == on_disk(api, stopping)

    for job_id in (running, stopping):
        put(jobs_dir / job_id / "checkpoints" / "checkpoint-5" / "model.safetensors", b"c" * 80_000)
    # Within LIVE_SIZE_S the list shows what it measured...
    assert listed(web) == first
    # ...and once that is older, what the folder holds now.
    monkeypatch.setattr(artifacts, "LIVE_SIZE_S", 0.2)
    time.sleep(0.3)
    now = listed(web)
    assert now[running] == on_disk(api, running) != first[running]
    assert now[stopping] == on_disk(api, stopping) != first[stopping]

    # The trainer gone (devices released): measured once more, then kept.
    api.store.update_job(stopping, devices=None)
    settle()
    put(jobs_dir / stopping / "checkpoints" / "checkpoint-5" / "optimizer.pt", b"o" * 50_000)
    assert listed(web)[stopping] == on_disk(api, stopping)
    kept = api.store.get_job(stopping)
    time.sleep(0.3)
    assert listed(web)[stopping] == on_disk(api, stopping)
    assert api.store.get_job(stopping)["disk_bytes_at"] == kept["disk_bytes_at"]


@pytest.fixture
def web(api: Api) -> Browser:
    return Browser(api)
