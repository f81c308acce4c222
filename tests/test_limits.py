"""Bounds on disk and memory, the trainer's records distrusted, and the API's edges: each test
here reproduces a defect found on a fresh box (real files, real filesystems, real servers)."""

from __future__ import annotations

import errno
import io
import json
import re
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import Api, make_settings
from litestar.testing import TestClient
from serving import FAKE_TRAINERS, KEY, Server
from test_dataset_files import VIDEO, metadata
from test_serve import client_for, create_job, wait_until

from veri_box import datasets, logs, paths, progress
from veri_box.app import Box, create_app
from veri_box.devices import build_inventory


def open_api(settings) -> Iterator[Api]:
    box = Box.open(settings, build_inventory("A100-80GB:2", settings.cpu_slots))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("test")
        yield Api(client, key, box)


@pytest.fixture
def small_api(tmp_path: Path) -> Iterator[Api]:
    """A box that takes uploads of at most 1 MiB."""
    yield from open_api(make_settings(tmp_path, max_upload_mb=1))


def spool_files(api: Api) -> list[str]:
    spool = api.settings.data_dir / "tmp"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def zeros_zip(entries: dict[str, bytes], zeros: dict[str, int]) -> bytes:
    """A zip of `entries` plus entries of many zeros, written in chunks (they compress to almost nothing)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, size in zeros.items():
            with archive.open(name, "w", force_zip64=True) as out:
                chunk = bytes(1 << 20)
                for _ in range(size >> 20):
                    out.write(chunk)
    return buffer.getvalue()


# ---- 1. uploads leave nothing behind ----------------------------------------------------------


def test_an_oversize_upload_leaves_no_spool_file(small_api):
    r = small_api.upload_dataset(b'{"prompt": "x"}\n' * 100_000)  # 1.6 MB
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_too_large", r.text
    assert spool_files(small_api) == []


def test_a_refused_upload_leaves_no_spool_file(api):
    r = api.upload_dataset(b"not a dataset\x00", filename="x.bin")
    assert r.status_code == 400, r.text
    assert spool_files(api) == []


def test_cleanup_leftovers_removes_what_a_crash_left(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "tmp").mkdir(parents=True)
    (data_dir / "tmp" / "upload-abc123").write_bytes(b"half an upload")
    staging = data_dir / "datasets" / ".staging-ds_0123"
    (staging / "videos").mkdir(parents=True)
    (staging / "videos" / "a.mp4").write_bytes(VIDEO)
    kept = data_dir / "datasets" / "ds_0456"
    kept.mkdir()
    (kept / "data.jsonl").write_text('{"prompt": "x"}\n')
    assert datasets.cleanup_leftovers(data_dir) == 2
    assert list((data_dir / "tmp").iterdir()) == []
    assert [p.name for p in (data_dir / "datasets").iterdir()] == ["ds_0456"]
    assert datasets.cleanup_leftovers(tmp_path / "never-used") == 0


# ---- 2. zip datasets unpack only what their captions name ------------------------------------


GOOD_ROWS = metadata({"video": "a.mp4", "caption": "a"})


def test_a_zip_stores_only_the_clips_its_captions_name(small_api):
    content = zeros_zip({"metadata.jsonl": GOOD_ROWS, "a.mp4": VIDEO}, {"junk/zeros.bin": 64 << 20})
    assert len(content) < 1 << 20
    r = small_api.upload_dataset(content, filename="clips.zip")
    assert r.status_code == 200, r.text
    stored = small_api.settings.data_dir / "datasets" / r.json()["id"]
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()) == [
        "videos/a.mp4",
        "videos/metadata.jsonl",
    ]


def test_the_unpacked_clips_are_capped_by_the_upload_limit(small_api):
    # 1 MiB uploads: the clips may unpack to 256 MiB at most (4 x the limit, but at least 256 MiB).
    rows = metadata({"video": "a.mp4", "caption": "a"}, {"video": "b.mp4", "caption": "b"})
    content = zeros_zip({"metadata.jsonl": rows, "a.mp4": VIDEO}, {"b.mp4": 257 << 20})
    assert len(content) < 1 << 20
    r = small_api.upload_dataset(content, filename="clips.zip")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsafe_zip" and "--max-upload-mb" in error["message"], error
    stored = small_api.settings.data_dir / "datasets"
    assert spool_files(small_api) == [] and (not stored.exists() or not any(stored.iterdir()))


def test_limits_follow_the_upload_setting():
    from veri_box.dataset_files import Limits

    assert Limits.for_upload(2048 << 20).max_unpacked_bytes == 8 << 30
    assert Limits.for_upload(1 << 20).max_unpacked_bytes == 256 << 20


# ---- a real server: logs streamed, long lines, Last-Event-ID, revoked keys ------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `veri-box serve` with two cpu slots and the fake trainers."""
    base = tmp_path_factory.mktemp("limits")
    server = Server(
        base / "data", base / "serve.log", "--gpus", "none", "--cpu-slots", "2", "--trainers", FAKE_TRAINERS
    )
    try:
        server.key = KEY.findall(server.start())[0]
        yield server
    finally:
        with client_for(server) as http:
            for job in http.get("/v1/training_jobs?status=running").json()["data"]:
                http.post(f"/v1/training_jobs/{job['id']}/cancel")
        server.stop()


def job_in(http: httpx.Client, status: str, base_model: str) -> str:
    job_id = create_job(http, base_model)["id"]
    assert wait_until(lambda: http.get(f"/v1/training_jobs/{job_id}").json()["status"] == status), job_id
    return job_id


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_the_full_log_is_streamed_not_read_whole(served):
    with client_for(served) as http:
        job_id = job_in(http, "completed", "fake:steps=1,step_s=0")
        http.get(f"/v1/training_jobs/{job_id}/logs/full").raise_for_status()  # warm up the routes
        with logged_in(served, served.key) as browser:
            browser.get(f"/jobs/{job_id}/log.txt").raise_for_status()
        log = served.data_dir / "jobs" / job_id / "train.log"
        line = b"x" * 1023 + b"\n"
        with log.open("wb") as out:
            for _ in range(64):
                out.write(line * 1024)  # 64 MiB
        # Read whole, the body alone was 64 MiB in the server (and copied once more).
        assert download_peak_kb(served, http, f"/v1/training_jobs/{job_id}/logs/full", 64 << 20) < 24 * 1024
        with logged_in(served, served.key) as browser:
            assert download_peak_kb(served, browser, f"/jobs/{job_id}/log.txt", 64 << 20) < 24 * 1024


@contextmanager
def logged_in(server: Server, key: str) -> Iterator[httpx.Client]:
    """A client with a dashboard session, logged in through the login form."""
    with httpx.Client(base_url=server.url, timeout=10) as browser:
        csrf = re.search(r'name="_csrf" value="([^"]+)"', browser.get("/login").text)
        assert csrf, "the login form has no CSRF field"
        assert browser.post("/login", data={"api_key": key, "_csrf": csrf.group(1)}).status_code == 303, "login failed"
        yield browser


def download_peak_kb(server: Server, client: httpx.Client, url: str, size: int) -> int:
    """How far the server's peak RSS rose while `client` downloaded `url` (`size` bytes)."""
    before, got = rss_peak_kb(server.proc.pid), 0
    with client.stream("GET", url) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.status_code
        assert r.headers["content-length"] == str(size)
        for chunk in r.iter_raw():
            got += len(chunk)
    assert got == size
    return rss_peak_kb(server.proc.pid) - before


def sse_events(response: httpx.Response) -> Iterator[dict]:
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def test_a_line_longer_than_the_read_window_is_cut_and_the_stream_goes_on(served):
    with client_for(served) as http:
        job_id = job_in(http, "completed", "fake:steps=1,step_s=0")
        log = served.data_dir / "jobs" / job_id / "train.log"
        log.write_bytes(b"before\n" + b"y" * (3 << 20) + b"\nafter\n")
        with http.stream("GET", f"/v1/training_jobs/{job_id}/logs") as r:
            events = list(sse_events(r))
        datas = [e["data"] for e in events]
        assert datas[0] == "before" and datas[2:] == ["after", "[Job completed]"], [d[:80] for d in datas]
        assert datas[1].startswith("y" * 1000) and datas[1].endswith("[line truncated: longer than 65,536 bytes]")
        assert len(datas[1]) < 70_000
        assert int(events[1]["id"]) == 7 + (3 << 20) + 1  # just past the long line
        # A reconnect after it resumes with the next line.
        headers = {"Last-Event-ID": events[1]["id"]}
        with http.stream("GET", f"/v1/training_jobs/{job_id}/logs", headers=headers) as r:
            assert [e["data"] for e in sse_events(r)] == ["after", "[Job completed]"]


def test_a_huge_last_event_id_is_a_400(served):
    with client_for(served) as http:
        job_id = job_in(http, "completed", "fake:steps=1,step_s=0")
        for value in (b"9" * 10_000, "²".encode(), b"12a", b"-1"):
            r = http.get(f"/v1/training_jobs/{job_id}/logs", headers={"Last-Event-ID": value})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_last_event_id", r.text


def test_revoking_a_key_ends_its_open_log_streams(served):
    with client_for(served) as http:
        job_id = job_in(http, "running", "fake:hang=1")
        key = http.post("/v1/api_keys", json={"name": "doomed"}).json()
        with client_for(served, key["key"]) as doomed:
            doomed.timeout = httpx.Timeout(10)  # keep-alives come every 15 s: a stream left open times out
            with doomed.stream("GET", f"/v1/training_jobs/{job_id}/logs") as r:
                assert r.status_code == 200
                assert http.delete(f"/v1/api_keys/{key['id']}").status_code == 200
                started = time.monotonic()
                list(sse_events(r))
                assert time.monotonic() - started < 8
        http.post(f"/v1/training_jobs/{job_id}/cancel")


def test_revoking_a_key_ends_its_dashboard_log_streams(served):
    with client_for(served) as http:
        job_id = job_in(http, "running", "fake:hang=1")
        key = http.post("/v1/api_keys", json={"name": "doomed"}).json()
        with logged_in(served, key["key"]) as browser:
            with browser.stream("GET", f"/jobs/{job_id}/log") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                assert http.delete(f"/v1/api_keys/{key['id']}").status_code == 200
                started = time.monotonic()
                events = list(sse_events(r))
                assert time.monotonic() - started < 8
                assert events[-1].get("event") == "done"
        http.post(f"/v1/training_jobs/{job_id}/cancel")


# ---- 4, 5. progress.jsonl: long records, partial lines, untrusted fields ---------------------


def progress_line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def metrics_line(step: int, **values: float) -> bytes:
    return progress_line({"type": "metrics", "step": step, "values": values or {"loss": 1.0}})


@pytest.fixture
def queued_job(api) -> dict:
    """A job whose progress.jsonl the test writes; the runner's read loop ingests it."""
    job = api.job()
    paths.job_dir(api.settings.data_dir, job["id"]).mkdir(parents=True)
    return job


def ingest(api, job_id: str, data: bytes, drain: bool = False) -> dict:
    with paths.progress_file(api.settings.data_dir, job_id).open("ab") as out:
        out.write(data)
    return api.box.runner._ingest(api.store.get_job(job_id), drain=drain)


def steps(api, job_id: str) -> list[int]:
    return [m["step"] for m in api.get(f"/v1/training_jobs/{job_id}/metrics").json()["metrics"]]


@pytest.mark.parametrize("drain", [False, True])
def test_a_record_longer_than_a_read_is_skipped_and_ingestion_goes_on(api, queued_job, drain):
    huge = progress_line({"type": "sample", "step": 2, "completion": "z" * (5 << 20)})
    job = ingest(api, queued_job["id"], metrics_line(1) + huge + metrics_line(3) + b'{"type": "metr', drain)
    for _ in range(4):  # a tick reads 4 MiB at a time
        job = api.box.runner._ingest(job, drain=drain)
    assert steps(api, queued_job["id"]) == [1, 3]
    size = paths.progress_file(api.settings.data_dir, queued_job["id"]).stat().st_size
    assert job["progress_offset"] == size - len(b'{"type": "metr')  # the partial line waits
    rest = b'ics", "step": 4, "values": {"loss": 2.0}}\n'
    job = ingest(api, queued_job["id"], rest, drain)
    assert steps(api, queued_job["id"]) == [1, 3, 4] and job["progress_offset"] == size + len(rest)


def test_parse_keeps_a_partial_line_and_skips_only_a_full_window():
    assert progress.parse(b'{"type": "metrics"', "job_x", window=64)[1] == 0
    assert progress.parse(b"x" * 64, "job_x", window=64)[1] == 64
    batch, used = progress.parse(metrics_line(1) + b'{"type"', "job_x", window=64)
    assert used == len(metrics_line(1)) and batch.points == [(1, {"loss": 1.0})]


def test_a_record_nested_too_deep_is_skipped(api, queued_job):
    deep = b'{"type": "sample", "step": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    ingest(api, queued_job["id"], deep + metrics_line(2))
    assert steps(api, queued_job["id"]) == [2]


def test_checkpoints_outside_the_job_dir_are_ignored(api, queued_job, caplog):
    job_dir = paths.job_dir(api.settings.data_dir, queued_job["id"])
    (job_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (job_dir / "checkpoints" / "step-1" / "weights.bin").write_bytes(b"w")
    (job_dir / "checkpoints" / "step-4").symlink_to(api.settings.data_dir)  # a link out: no files listed
    records = [
        {"type": "checkpoint", "step": 1, "path": "checkpoints/step-1"},
        {"type": "checkpoint", "step": 2, "path": "../../"},
        {"type": "checkpoint", "step": 3, "path": str(api.settings.data_dir)},
        {"type": "checkpoint", "step": 4, "path": "checkpoints/step-4"},
    ]
    ingest(api, queued_job["id"], b"".join(map(progress_line, records)))
    listed = api.get(f"/v1/training_jobs/{queued_job['id']}/checkpoints").json()["data"]
    assert [(c["step"], [f["path"] for f in c["files"]]) for c in listed] == [(4, []), (1, ["weights.bin"])]
    assert "ignored a checkpoint outside the job directory" in caplog.text
    events = api.get(f"/v1/training_jobs/{queued_job['id']}/events").json()["items"]
    assert [e["metadata"]["path"] for e in events if e["event_type"] == "checkpoint_saved"] == [
        "checkpoints/step-1",
        "checkpoints/step-4",
    ]


def test_steps_must_be_sane(api, queued_job):
    lines = [metrics_line(step) for step in (-1, 2**53, 2**64, 5, 3)]
    lines.append(progress_line({"type": "sample", "step": -5, "prompt": "p"}))
    job = ingest(api, queued_job["id"], b"".join(lines))
    assert steps(api, queued_job["id"]) == [3, 5]
    assert job["current_step"] == 5  # a step logged again later does not move it back
    assert api.get(f"/v1/training_jobs/{queued_job['id']}/samples").json()["data"] == []


def test_metric_keys_are_bounded(api, queued_job):
    values = {f"k{i:04d}": float(i) for i in range(1500)} | {"x" * 201: 1.0}
    ingest(api, queued_job["id"], progress_line({"type": "metrics", "step": 1, "values": values}))
    keys = api.get(f"/v1/training_jobs/{queued_job['id']}/metrics").json()["available_keys"]
    assert len(keys) == 1000 and "x" * 201 not in keys


def test_samples_are_bounded_and_long_strings_cut(api, queued_job):
    records = [
        {"type": "sample", "step": 1, "prompt": "p", "completion": "c" * 200_000, "reward": 1.0},
        {"type": "sample", "step": 1, **{f"f{i}": i for i in range(20_000)}},  # too big without long strings
        {"type": "error", "code": "e" * 500, "message": "m" * 100_000},
    ]
    job = ingest(api, queued_job["id"], b"".join(map(progress_line, records)))
    data = api.get(f"/v1/training_jobs/{queued_job['id']}/samples").json()["data"]
    assert len(data) == 1 and data[0]["prompt"] == "p" and data[0]["reward"] == 1.0
    assert data[0]["completion"].startswith("c" * 1000) and data[0]["completion"].endswith(" [truncated]")
    assert len(json.dumps(data[0])) <= 64 * 1024 + 100
    assert len(job["reported_error"]["code"]) <= 100 and len(job["reported_error"]["message"]) <= 16 * 1024


# ---- 6. a full disk: writes are 507, reads go on -------------------------------------------


@pytest.fixture
def full_disk_api(tmp_path: Path) -> Iterator[Api]:
    """A box whose data directory is a small tmpfs of its own; the test fills it up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield from open_api(make_settings(mount))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    # Unbuffered: a buffered file would raise ENOSPC again when it is closed.
    with (directory / "filler").open("wb", buffering=0) as out:
        try:
            while True:
                out.write(bytes(1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_disk_refuses_writes_with_507_and_reads_go_on(full_disk_api):
    api = full_disk_api
    dataset_id = api.dataset()
    # The write-ahead log would otherwise have room left from earlier writes.
    api.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill(api.settings.data_dir.parent)
    time.sleep(1.1)  # past the second of the last use: the next request would record one
    for path in ("/v1/api_keys", "/v1/datasets", f"/v1/datasets/{dataset_id}", "/v1/training_jobs"):
        assert api.get(path).status_code == 200, api.get(path).text
    r = api.post("/v1/api_keys", json={"name": "more"})
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "insufficient_storage" and "disk is full" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "server_error"
    r = api.upload_dataset([{"prompt": "x" * 1000}] * 200)
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage", r.text
    assert spool_files(api) == []
    # Once there is room again, writes work and the key's use is recorded again.
    (api.settings.data_dir.parent / "filler").unlink()
    assert api.post("/v1/api_keys", json={"name": "more"}).status_code == 200


# ---- 7. JSON edges ----------------------------------------------------------------------------

JOB = '{"base_model": "m", "dataset_id": "ds_x", "gpu": {"type": "cpu"}'
DEEP = "[" * 100_000 + "]" * 100_000


def post_json(api, path: str, body: str, method: str = "post"):
    return getattr(api, method)(path, content=body.encode(), headers={"content-type": "application/json"})


def error_of(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize(
    "path, body, method",
    [
        ("/v1/training_jobs", JOB + f', "hyperparameters": {{"x": {DEEP}}}}}', "post"),
        ("/v1/training_jobs", JOB + f', "environments": {{"a/b": {DEEP}}}}}', "post"),
        ("/v1/api_keys", f'{{"name": {DEEP}}}', "post"),
        ("/v1/settings/integrations/openreward", f'{{"api_key": {DEEP}}}', "put"),
    ],
)
def test_deeply_nested_json_is_a_400(api, path, body, method):
    error = error_of(post_json(api, path, body, method))
    assert error["code"] == "json_too_deep" and "deep" in error["message"]


def test_a_json_body_over_its_limit_names_the_json_limit(api):
    error = error_of(post_json(api, "/v1/training_jobs", JOB + ', "x": "' + "a" * (9 << 20) + '"}'))
    assert (
        error["code"] == "body_too_large" and "8 MiB" in error["message"] and "--max-upload-mb" not in error["message"]
    )
    # Uploads keep their own code.
    r = api.post("/v1/reward_functions", data={"name": "big"}, files={"file": ("r.py", b"#" * (9 << 20))})
    assert error_of(r)["code"] == "file_too_large"


def test_a_number_too_large_for_a_float_names_its_field(api):
    error = error_of(post_json(api, "/v1/training_jobs", JOB + ', "hyperparameters": {"learning_rate": 1e400}}'))
    assert error["param"] == "hyperparameters.learning_rate" and error["code"] == "invalid_hyperparameter"
    error = error_of(post_json(api, "/v1/training_jobs", JOB + ', "reward_weights": [1, 1e400]}'))
    assert error["param"] == "reward_weights[1]" and error["code"] == "invalid_value"


def test_truncated_json_is_invalid_json(api):
    for body in (JOB + ', "hyper', JOB, '{"name": "x'):
        assert error_of(post_json(api, "/v1/training_jobs", body))["code"] == "invalid_json"


def test_read_lines_waits_for_a_long_line_to_end_then_cuts_it(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"a\n" + b"y" * (2 * logs.WINDOW))
    assert logs.read_lines(log, 0) == ([("a", 2)], 2)
    assert logs.read_lines(log, 2) == ([], 2)  # still being written: nothing yet
    with log.open("ab") as out:
        out.write(b"y\nb\n")
    lines, offset = logs.read_lines(log, 2)
    end = 2 + 2 * logs.WINDOW + 2
    assert [(len(text), position) for text, position in lines] == [
        (logs.LINE_LIMIT + len(" [line truncated: longer than 65,536 bytes]"), end)
    ]
    assert logs.read_lines(log, offset) == ([("b", end + 2)], end + 2)


def test_a_line_without_end_is_cut_at_max_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "MAX_SKIP", 3 * logs.WINDOW)
    log = tmp_path / "train.log"
    log.write_bytes(b"y" * (5 * logs.WINDOW))
    lines, offset = logs.read_lines(log, 0)
    assert offset == 3 * logs.WINDOW and lines[0][0].endswith("[line truncated: longer than 65,536 bytes]")
