"""Experiment trackers: the W&B integration's settings through the API, and real tiny jobs that
log to W&B (the `wandb` library in offline mode, its run read back from its own .wandb file) and
to TensorBoard (the event files read back with TensorBoard's own reader), in the sandbox."""

from __future__ import annotations

import http.server
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Api, finished, run_until
from test_grpo import grpo_job

from trainers import trackers
from veri_box import paths

KEY = "0123456789abcdef0123456789abcdef01234567"  # W&B's keys are 40 characters
ROUTE = "/v1/settings/integrations/wandb"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


# ---- reading what the trackers wrote, with the trackers' own formats ---------------------------


def wandb_records(job_dir: Path) -> list:
    """The records of the job's offline W&B run, parsed with wandb's own protobuf schema. The
    .wandb file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32,
    length, type; a record is one FULL chunk or FIRST, MIDDLE..., LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    records, pos, chunks, block = [], 7, b"", 32 * 1024
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_run(job_dir: Path) -> dict:
    """The run as W&B will know it once synced: its identity, config, and history by step."""
    run, config, history = None, {}, {}
    for record in wandb_records(job_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
    assert run is not None
    return {"id": run.run_id, "name": run.display_name, "project": run.project, "entity": run.entity}, config, history


def wandb_end(job_dir: Path) -> dict:
    """How the run ended, as `wandb sync` reports it to W&B: the exit record's code (0 is the
    Finished state, anything else Failed), the run's last tags, and its summary."""
    exits, tags, summary = [], [], {}
    for record in wandb_records(job_dir):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            exits.append(record.exit.exit_code)
        elif kind == "run":
            tags = list(record.run.tags)
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.summary.update})
    return {"exit_codes": exits, "tags": tags, "summary": summary}


def tensorboard_events(job_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


# ---- the settings routes -----------------------------------------------------------------------


def test_wandb_settings_as_the_official_client_sends_them_never_return_the_key(api: Api):
    assert api.get(ROUTE).json()["configured"] is False
    # client.integrations.set_wandb(api_key=...) sends project: null: the client's default project.
    r = api.put(ROUTE, json={"api_key": KEY, "project": None})
    assert r.status_code == 200, r.text
    assert r.json()["configured"] is True and r.json()["project"] == "veri-training"
    r = api.put(ROUTE, json={"api_key": KEY, "project": "my-runs", "entity": "my-team", "mode": "offline"})
    assert r.status_code == 200, r.text
    shown = api.get(ROUTE).json()
    assert {k: shown[k] for k in ("configured", "project", "entity", "mode")} == {
        "configured": True,
        "project": "my-runs",
        "entity": "my-team",
        "mode": "offline",
    }
    assert shown["key_hint"] == "..." + KEY[-4:]
    for response in (r, api.get(ROUTE)):
        assert KEY not in response.text
    # OpenReward is its own integration: untouched by W&B.
    assert api.get("/v1/settings/integrations/openreward").json()["configured"] is False

    r = api.delete(ROUTE)
    assert r.status_code == 200 and r.json()["configured"] is False and r.json()["project"] is None
    assert api.get(ROUTE).json()["configured"] is False
    assert api.store.get_integration("wandb") is None


@pytest.mark.parametrize(
    "body, param",
    [
        ({"project": "p"}, "api_key"),
        ({"api_key": ""}, "api_key"),
        ({"api_key": "two words"}, "api_key"),
        ({"api_key": KEY, "project": "a/b"}, "project"),
        ({"api_key": KEY, "project": "two\nlines"}, "project"),
        ({"api_key": KEY, "project": "x" * 129}, "project"),
        ({"api_key": KEY, "entity": "team:x"}, "entity"),
        ({"api_key": KEY, "base_url": "ftp://wandb.example"}, "base_url"),
        ({"api_key": KEY, "base_url": "http://["}, "base_url"),
        ({"api_key": KEY, "mode": "sideways"}, "mode"),
        ({"api_key": KEY, "api_token": KEY}, None),
    ],
)
def test_bad_wandb_settings_are_400s_and_keep_what_was_there(api: Api, body, param):
    assert api.put(ROUTE, json={"api_key": KEY, "project": "kept"}).status_code == 200
    r = api.put(ROUTE, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] in ("invalid_value", "missing_field", "invalid_request", "unknown_field"), error
    if param:
        assert error["param"] == param, error
    assert KEY not in r.text
    assert api.get(ROUTE).json()["project"] == "kept"


# ---- real jobs -------------------------------------------------------------------------------


def test_grpo_job_logs_metrics_rollouts_and_config_to_wandb_and_tensorboard(box: Api, tiny_model: Path):
    r = box.put(ROUTE, json={"api_key": KEY, "project": "veri-box-tests", "entity": "veri-team", "mode": "offline"})
    assert r.status_code == 200, r.text
    job_id = grpo_job(box, tiny_model, max_steps=12)
    job = finished(box, job_id)
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    job_dir = paths.job_dir(box.settings.data_dir, job_id)
    # The run has the job id as its id: its page is known before `wandb sync` uploads it.
    assert job["wandb_run_url"] == f"https://wandb.ai/veri-team/veri-box-tests/runs/{job_id}"
    assert f"W&B run {job_id} in project veri-box-tests (offline)" in log
    assert "stopped logging" not in log and "warning: W&B" not in log and "TensorBoard event" not in log, log[-3000:]

    metrics = box.get(f"/v1/training_jobs/{job_id}/metrics?max_points=1000").json()
    # The trainer's metrics (system/... are the box's own samples of the machine, not the trainer's).
    keys = {k for k in metrics["available_keys"] if not k.startswith("system/")}
    assert {"loss", "reward", "kl", "rewards/a_ratio/mean", "step_time"} <= keys
    reward = {p["step"]: p["values"]["reward"] for p in metrics["metrics"] if "reward" in p["values"]}
    assert sorted(reward) == list(range(1, 13))

    run, config, history = wandb_run(job_dir)
    assert run == {"id": job_id, "name": job_id, "project": "veri-box-tests", "entity": "veri-team"}
    assert config["job_id"] == job_id and config["method"] == "grpo" and config["base_model"] == str(tiny_model)
    assert config["learning_rate"] == job["hyperparameters"]["learning_rate"]
    assert config["max_steps"] == 12 and config["reward_functions"] == {"a_ratio": 1.0}
    assert all(step in history for step in range(1, 13))
    assert {step: history[step]["reward"] for step in range(1, 13)} == pytest.approx(reward)
    assert keys <= set(history[12])  # every metric the box has, W&B has
    # The rollout table at the first step, every ROLLOUT_EVERY (10) steps, and at the last.
    # The rollout table at the first step with rollouts, then after ROLLOUT_EVERY steps or more,
    # and at the last (TRL reuses one generation for several steps: not every step has rollouts).
    sampled = sorted({s["step"] for s in box.get(f"/v1/training_jobs/{job_id}/samples?limit=1000").json()["data"]})
    expected = [sampled[0]]
    for step in sampled:
        if step - expected[-1] >= trackers.ROLLOUT_EVERY or (step == sampled[-1] and step != expected[-1]):
            expected.append(step)
    assert len(expected) >= 2 and expected[-1] == 12
    assert sorted(step for step, row in history.items() if "rollouts/path" in row) == expected
    table = json.loads((next(job_dir.glob("wandb/offline-run-*/files")) / history[12]["rollouts/path"]).read_text())
    assert table["columns"] == ["step", "group", "prompt", "completion", "reward", "advantage"]
    samples = box.get(f"/v1/training_jobs/{job_id}/samples?step=12&limit=100").json()["data"]
    assert len(table["data"]) == len(samples) == 32
    assert {row[3] for row in table["data"]} == {s["completion"] for s in samples}

    assert wandb_end(job_dir)["exit_codes"] == [0] and wandb_end(job_dir)["tags"] == []  # Finished

    events = tensorboard_events(job_dir)
    assert keys <= set(events.Tags()["scalars"])
    assert {e.step: e.value for e in events.Scalars("reward")} == pytest.approx(reward)
    assert {"job/text_summary", "rollouts/text_summary"} <= set(events.Tags()["tensors"])

    # The event files are the job's files: listed with signed links that download them.
    listing = box.get(f"/v1/training_jobs/{job_id}/tensorboard").json()
    assert listing["object"] == "tensorboard" and listing["logdir"] == f"jobs/{job_id}/tensorboard"
    (event_file,) = listing["files"]
    assert event_file["path"].startswith("events.out.tfevents.")
    body = box.client.get(event_file["url"].removeprefix(box.settings.base_url))
    assert body.status_code == 200 and body.content == (job_dir / "tensorboard" / event_file["path"]).read_bytes()

    # The key reached the trainer through config.json alone: no file W&B or the trainer wrote holds it.
    holding = [p for p in job_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert holding == [job_dir / "config.json"]
    assert KEY not in box.get(f"/v1/training_jobs/{job_id}").text

    from test_dashboard import Browser

    page = Browser(box).get(f"/jobs/{job_id}").text
    assert f'id="wandb-run" href="{job["wandb_run_url"]}"' in page and 'id="tensorboard-note"' in page


def test_a_cancelled_job_ends_its_wandb_run_finished_and_tagged_stopped(box: Api, tiny_model: Path):
    """A cancel is SIGTERM, save and stop: W&B shows the run Finished (exit code 0), tagged
    `stopped` with the step it stopped at, not Failed as a crash would be."""
    from test_grpo import cpu_available

    r = box.put(ROUTE, json={"api_key": KEY, "project": "veri-box-tests", "mode": "offline"})
    assert r.status_code == 200, r.text
    job_id = grpo_job(box, tiny_model, max_steps=200)
    run_until(box, lambda: (box.store.get_job(job_id)["current_step"] or 0) >= 2, timeout=300)
    r = box.post(f"/v1/training_jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    run_until(box, lambda: cpu_available(box) == 1, timeout=60)  # the trainer has exited
    job = box.get(f"/v1/training_jobs/{job_id}").json()
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert job["status"] == "cancelled" and f"stopped on SIGTERM at step {job['current_step']}" in log, log[-3000:]

    end = wandb_end(paths.job_dir(box.settings.data_dir, job_id))
    assert end["exit_codes"] == [0], (end, log[-3000:])
    assert end["tags"] == ["stopped"]
    assert end["summary"]["stopped_at_step"] == job["current_step"]


@pytest.mark.parametrize(
    "end, exit_code, tags",
    [
        ("stopped", 0, ["stopped"]),  # SIGTERM, saved, the `interrupted` error: Finished
        ("failed", 1, []),  # a trainer error: Failed
        ("stopped_then_crashed", 1, []),  # SIGTERM, then an exception nobody caught: a crash
    ],
)
def test_how_a_trainer_ends_is_how_its_wandb_run_ends(tmp_path: Path, end, exit_code, tags):
    """Through trainers.progress.run as every trainer's main(), with a real offline W&B run:
    only a stop on SIGTERM that went as asked is Finished."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from trainers.contract import DatasetConfig, Devices, JobConfig, WandbConfig, write_config
from trainers.errors import TrainerError
from trainers import progress, trackers
job_dir = {str(tmp_path)!r}
config = JobConfig(
    job_id="job_x", method="grpo", trainer=None, base_model="m", output_name="o",
    dataset=DatasetConfig("ds", "prompt_only", ["prompt"], 1, "/nowhere"), reward_functions=[],
    environments=None, openreward=None, hyperparameters={{}}, seed=0, devices=Devices("cpu", 1, []),
    job_dir=job_dir, output_dir=job_dir + "/output", models_dir="/nowhere", checkpoints_dir=job_dir + "/c",
    wandb=WandbConfig(api_key={KEY!r}, project="p", mode="offline"),
)
write_config(job_dir, config)

def train(config, reported):
    reported = trackers.attach(config, reported)
    reported.started(total_steps=5)
    for step in (1, 2):
        reported.metrics(step, {{"loss": 1.0 / step}})
    if {end!r}.startswith("stopped"):
        os.kill(os.getpid(), signal.SIGTERM)
    if {end!r} == "stopped_then_crashed":
        raise OSError("No space left on device")
    code = "interrupted" if {end!r} == "stopped" else "reward_failed"
    raise TrainerError(code, "the end")

sys.exit(progress.run(job_dir, train))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    ended = wandb_end(tmp_path)
    assert (ended["exit_codes"], ended["tags"]) == ([exit_code], tags), (ended, done.stdout + done.stderr)
    assert ended["summary"].get("stopped_at_step") == (2 if tags else None)


def test_a_job_without_wandb_still_writes_tensorboard(box: Api, tiny_model: Path):
    job_id = grpo_job(box, tiny_model, max_steps=2)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    assert job["wandb_run_url"] is None
    job_dir = paths.job_dir(box.settings.data_dir, job_id)
    assert not (job_dir / "wandb").exists()
    events = tensorboard_events(job_dir)
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert box.get("/v1/training_jobs/job_nope/tensorboard").status_code == 404


def test_video_job_logs_to_wandb_and_tensorboard(box: Api, tmp_path: Path):
    from test_video import upload_clips, video_job

    from trainers.tiny_video import build_tiny_video_pipeline

    pipeline = build_tiny_video_pipeline(tmp_path / "pipeline", seed=0)
    assert box.put(ROUTE, json={"api_key": KEY, "project": "videos", "mode": "offline"}).status_code == 200
    dataset = upload_clips(box, n=2, frames=12)["id"]
    r = video_job(box, pipeline, dataset, num_epochs=2, validation_steps=4, save_steps=4)
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    log = box.get(f"/v1/training_jobs/{job['id']}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert job["wandb_run_url"] is None  # offline, and no entity: no address to give yet
    job_dir = paths.job_dir(box.settings.data_dir, job["id"])

    metrics = box.get(f"/v1/training_jobs/{job['id']}/metrics").json()
    keys = {k for k in metrics["available_keys"] if not k.startswith("system/")}
    assert {"loss", "learning_rate"} <= keys
    run, config, history = wandb_run(job_dir)
    assert run["id"] == job["id"] and config["method"] == "sft_video_gen" and config["num_frames"] == 9
    assert keys <= set(history[4])
    assert "validation/path" in history[4]  # the validation clip, as a W&B video
    assert keys <= set(tensorboard_events(job_dir).Tags()["scalars"])


def test_a_missing_tensorboard_is_one_warning_and_training_goes_on(tmp_path: Path):
    """The trainer's hook with the tensorboard package gone (as on a machine without it): one
    warning in the log, and progress.jsonl gets every record as before."""
    script = f"""
import sys
import threading
sys.modules["tensorboard"] = None  # import tensorboard now raises ImportError
sys.path.insert(0, {str(REPO)!r})
from trainers.contract import DatasetConfig, Devices, JobConfig
from trainers.progress import Progress
from trainers import trackers
job_dir = {str(tmp_path)!r}
config = JobConfig(
    job_id="job_x", method="grpo", trainer=None, base_model="m", output_name="o",
    dataset=DatasetConfig("ds", "prompt_only", ["prompt"], 1, "/nowhere"), reward_functions=[],
    environments=None, openreward=None, hyperparameters={{}}, seed=0, devices=Devices("cpu", 1, []),
    job_dir=job_dir, output_dir=job_dir + "/output", models_dir="/nowhere", checkpoints_dir=job_dir + "/c",
)
progress = trackers.attach(config, Progress(job_dir))
progress.started(total_steps=2)
for step in (1, 2):
    progress.metrics(step, {{"loss": 1.0 / step}})
    progress.sample(step, prompt="p", completion="c", reward=1.0, advantage=0.0, group=0)
progress.completed(steps=2)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("warning: no TensorBoard event files") == 1, done.stdout
    records = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["event", "metrics", "sample", "metrics", "sample", "event"]
    assert not (tmp_path / "tensorboard").exists()


def test_the_settings_page_sets_and_removes_wandb_without_showing_the_key(api: Api):
    from test_dashboard import Browser

    web = Browser(api)
    page = web.get("/settings").text
    assert 'id="wandb"' in page and 'id="integration"' in page
    bad = web.post("/settings/wandb", data={"api_key": KEY, "project": "a/b"})
    assert 'data-code="invalid_value"' in bad.text and "<code>project</code>" in bad.text
    assert api.store.get_integration("wandb") is None
    r = web.post("/settings/wandb", data={"api_key": KEY, "project": "runs", "entity": "", "mode": "offline"})
    assert "Configured" in r.text and "..." + KEY[-4:] in r.text and KEY not in r.text and "offline" in r.text
    assert api.get(ROUTE).json() | {"updated_at": None} == {
        "configured": True,
        "project": "runs",
        "entity": None,
        "base_url": None,
        "mode": "offline",
        "key_hint": "..." + KEY[-4:],
        "updated_at": None,
        "provider": "wandb",
        "object": "integration",
    }
    assert KEY not in web.get("/settings").text
    assert "Not configured" in web.post("/settings/wandb/delete").text
    assert api.get(ROUTE).json()["configured"] is False


@pytest.mark.parametrize(
    "url, kept",
    [
        ("https://wandb.ai/team/p/runs/job_1", True),
        ("http://wandb.lab:8080/team/p/runs/job_1", True),
        ("javascript:alert(1)", False),
        ("data:text/html,hi", False),
        ("https://wandb.ai/a b", False),
        ("https://" + "x" * 2000, False),
        ("http://[not-an-ipv6", False),  # urlparse raises: the record is kept, the link dropped
        (42, False),
    ],
)
def test_the_run_url_a_trainer_reports_is_kept_only_as_a_plain_http_link(url, kept):
    """A reward function runs inside the trainer and could write any record: the dashboard makes
    wandb_run_url a link, so only http(s) URLs are stored."""
    from veri_box import progress

    line = json.dumps({"type": "event", "event": "running", "total_steps": 3, "metadata": {"wandb_run_url": url}})
    batch, _ = progress.parse((line + "\n").encode(), "job_x")
    assert batch.fields.get("wandb_run_url") == (url if kept else None)
    assert batch.running["total_steps"] == 3


def test_only_an_online_wandb_job_gets_the_network_in_its_sandbox(tmp_path: Path):
    from dataclasses import replace

    from test_sandbox import fake_host, job_config

    from trainers.contract import WandbConfig
    from veri_box import sandbox

    plain = job_config(tmp_path)
    online = replace(plain, wandb=WandbConfig(api_key=KEY, project="p"))
    offline = replace(plain, wandb=WandbConfig(api_key=KEY, project="p", mode="offline"))
    shares = {
        name: "--share-net" in sandbox.command(config, {}, fake_host(tmp_path))[0]
        for name, config in (("plain", plain), ("online", online), ("offline", offline))
    }
    assert shares == {"plain": False, "online": True, "offline": False}
    # The key is not in the trainer's environment either: config.json is its one way in.
    assert all(KEY not in v for v in sandbox.command(online, {"WANDB_API_KEY": KEY}, fake_host(tmp_path))[1].values())


class _RefusingWandb(http.server.BaseHTTPRequestHandler):
    """A W&B server that refuses every key, as W&B answers a revoked one: 401 on its GraphQL API,
    here quoting the key (as a proxy or a self-hosted server may), which must not reach the event."""

    def _refuse(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"errors": [{"message": f"user is not logged in (api key {KEY})"}]}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


def test_a_key_wandb_refuses_is_a_wandb_failed_event_and_the_job_trains_on(box: Api, tiny_model: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert box.put(ROUTE, json={"api_key": KEY, "project": "p", "base_url": url}).status_code == 200
        job_id = grpo_job(box, tiny_model, max_steps=2)
        job = finished(box, job_id)
    finally:
        server.shutdown()
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert job["wandb_run_url"] is None
    failed = [
        e for e in box.get(f"/v1/training_jobs/{job_id}/events").json()["items"] if e["event_type"] == "wandb_failed"
    ]
    assert len(failed) == 1 and "not logged in" in failed[0]["metadata"]["message"]
    assert KEY not in failed[0]["metadata"]["message"] and KEY not in log
    assert "warning: W&B run not started" in log
    assert [e.step for e in tensorboard_events(paths.job_dir(box.settings.data_dir, job_id)).Scalars("loss")] == [1, 2]


def test_the_official_client_and_cli_set_read_and_remove_wandb_on_a_real_server(tmp_path: Path, monkeypatch):
    """`client.integrations.set_wandb/get_wandb/delete_wandb` and `veri wandb set/status/remove`
    against `veri-box serve`: the key never printed, a bad key a 400 the client raises."""
    import os

    from serving import FAKE_TRAINERS, Server
    from serving import KEY as KEY_LINE
    from veri_sdk import Client
    from veri_sdk.client import VeriRequestError

    monkeypatch.setenv("HOME", str(tmp_path))
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--trainers", FAKE_TRAINERS)
    try:
        api_key = KEY_LINE.search(server.start()).group(0)
        client = Client(api_key=api_key, base_url=server.url)
        assert client.integrations.get_wandb()["configured"] is False
        shown = client.integrations.set_wandb(api_key=KEY, project="from-sdk")
        assert (shown["configured"], shown["project"]) == (True, "from-sdk")
        assert client.integrations.get_wandb()["project"] == "from-sdk"
        with pytest.raises(VeriRequestError) as bad:
            client.integrations.set_wandb(api_key="two words")
        assert bad.value.code == "invalid_value"
        assert client.integrations.delete_wandb()["configured"] is False

        env = {**os.environ, "VERI_API_URL": server.url, "VERI_API_KEY": api_key, "NO_COLOR": "1", "COLUMNS": "200"}
        env["VERI_CONFIG_PATH"] = str(tmp_path / "veri.toml")
        veri = Path(sys.executable).parent / "veri"

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(veri), *args], capture_output=True, text=True, timeout=120, env=env)

        done = cli("wandb", "set", "--api-key", KEY, "--project", "from-cli")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "W&B connected" in done.stdout and KEY not in done.stdout
        done = cli("wandb", "status")
        assert done.returncode == 0 and "from-cli" in done.stdout and KEY not in done.stdout, done.stdout
        done = cli("wandb", "remove")
        assert done.returncode == 0 and client.integrations.get_wandb()["configured"] is False
    finally:
        server.stop()
