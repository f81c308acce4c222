"""OpenReward environments as a GRPO reward source, against a real Open Reward Standard server
(tests/ors_env.py, the `openreward` package's own server side) on 127.0.0.1: the submit-time
checks, where the service is, and real jobs on the tiny model driven by the official client."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Api, finished, run_until
from serving import free_port

from veri_box import demo
from veri_box.openreward import Endpoints, endpoints

REPO = Path(__file__).resolve().parent.parent
# The demo's settings, with which the tiny model learns the letters environment's reward in 30 steps.
LEARNS = {**{k: v for k, v in demo.HYPERPARAMETERS.items() if k != "max_steps"}, "seed": 0}
KEY = "or_test_key_0123456789"


class OrsServer:
    """`python -m tests.ors_env PORT` on a free port; its output goes to a file shown on failure."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}
        with log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.ors_env", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> OrsServer:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"the ORS server did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[list[OrsServer]]:
    """Two servers started side by side (each takes seconds to import its stack): one the tests
    share, one that a test kills mid-run."""
    started = [OrsServer(tmp_path_factory.mktemp("ors") / "ors.log") for _ in range(2)]
    try:
        started[0].wait_ready()  # the other is waited for by the test that needs it, later
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def ors(servers) -> OrsServer:
    return servers[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def no_user_openreward_settings(monkeypatch):
    """The client honours these; a developer's own must not point the tests elsewhere."""
    for name in ("OPENREWARD_URL", "OPENREWARD_API_URL", "OPENREWARD_SESSION_URL", "OPENREWARD_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def connect(api: Api, url: str) -> None:
    r = api.put("/v1/settings/integrations/openreward", json={"api_key": KEY, "base_url": url})
    assert r.status_code == 200, r.text


def submit(api: Api, environments: dict, model: str | Path = "m", **hyperparameters) -> httpx.Response:
    return api.post(
        "/v1/training_jobs",
        json={
            "base_model": str(model),
            "dataset_id": api.dataset(),
            "output_name": "env-job",
            "gpu": {"type": "cpu", "count": 1},
            "environments": environments,
            "hyperparameters": hyperparameters,
        },
    )


def error_of(response: httpx.Response) -> dict:
    assert response.status_code == 400, (response.status_code, response.text)
    return response.json()["error"]


# ---- where the service is ------------------------------------------------------------------------


def test_endpoints_follow_the_official_client():
    platform = Endpoints("https://sessions.openreward.ai", "https://api.openreward.ai")
    assert endpoints(None, {}) == platform
    assert endpoints("https://openreward.ai", {}) == platform
    assert endpoints("https://api.openreward.ai/", {}) == platform  # either host pasted works
    assert endpoints(None, {"OPENREWARD_URL": "https://staging.example"}) == Endpoints(
        "https://sessions.staging.example", "https://api.staging.example"
    )
    assert endpoints("http://127.0.0.1:8080/", {}) == Endpoints("http://127.0.0.1:8080", "http://127.0.0.1:8080")
    env = {"OPENREWARD_SESSION_URL": "http://s.local/", "OPENREWARD_API_URL": "http://a.local"}
    assert endpoints("http://127.0.0.1:8080", env) == Endpoints("http://s.local", "http://a.local")


# ---- submit-time checks --------------------------------------------------------------------------


def test_submit_checks_environments_and_splits_against_the_service(box, ors):
    assert error_of(submit(box, {"letters": {"splits": ["train"]}}))["code"] == "integration_not_configured"
    connect(box, ors.url)

    job = submit(box, {"letters": {"splits": ["train", "test"]}, "reply": {}}).json()
    assert job["environments"] == {"letters": {"splits": ["train", "test"]}, "reply": {"splits": ["train"]}}
    assert job["status"] == "queued" and job["reward_function_id"] is None

    error = error_of(submit(box, {"letters": {"splits": ["train"]}, "nope": {"splits": ["train"]}}))
    assert (error["code"], error["param"]) == ("environment_not_found", "environments.nope")
    assert "'nope'" in error["message"] and "letters, reply, broken, toolbox" in error["message"]

    error = error_of(submit(box, {"letters": {"splits": ["train", "validation"]}}))
    assert (error["code"], error["param"]) == ("unknown_split", "environments.letters.splits")
    assert "'validation'" in error["message"] and "train, test" in error["message"]

    error = error_of(submit(box, {"../letters": {"splits": ["train"]}}))
    assert (error["code"], error["param"]) == ("invalid_value", "environments.../letters")


def test_a_service_that_is_down_or_failing_is_a_quick_4xx(box):
    connect(box, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    error = error_of(submit(box, {"letters": {"splits": ["train"]}}))
    assert time.monotonic() - started < 5
    assert (error["code"], error["param"]) == ("provider_error", "environments.letters")
    assert "could not be reached" in error["message"]

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"detail": "upstream is restarting"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        connect(box, f"http://127.0.0.1:{proxy.server_address[1]}")
        error = error_of(submit(box, {"letters": {"splits": ["train"]}}))
    finally:
        proxy.shutdown()
    assert error["code"] == "provider_error"
    assert "503" in error["message"] and "upstream is restarting" in error["message"]


# ---- training --------------------------------------------------------------------------------------


def test_environment_rewards_rise_on_the_tiny_model(box, ors, tiny_model):
    """Two environments in one job: prompts from both, each completion graded by its own task's
    environment, a metric per environment, and the demo's learning seen in the environment's reward."""
    connect(box, ors.url)
    environments = {"letters": {"splits": ["train", "test"]}, "reply": {"splits": ["validation"]}}
    r = submit(box, environments, tiny_model, **LEARNS, max_steps=30)
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    log = box.get(f"/v1/training_jobs/{job['id']}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert "environment letters: completions go to its tool 'answer' (answer)" in log
    assert "environment reply: completions go to its tool 'reply' (text)" in log
    assert "tasks: letters/train 16, letters/test 2, reply/validation 4; reading the prompts of 22" in log

    metrics = box.get(f"/v1/training_jobs/{job['id']}/metrics?max_points=1000").json()
    assert {"reward", "rewards/letters/mean", "rewards/letters/std", "rewards/reply/mean"} <= set(
        metrics["available_keys"]
    )
    reward = [p["values"]["rewards/letters/mean"] for p in metrics["metrics"] if "rewards/letters/mean" in p["values"]]
    assert len(reward) == 30
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last - first >= 0.1, reward

    samples = box.get(f"/v1/training_jobs/{job['id']}/samples?step=30&limit=100").json()["data"]
    assert len(samples) == 32
    samples += box.get(f"/v1/training_jobs/{job['id']}/samples?limit=1000").json()["data"]
    assert {name for s in samples for name, value in s["rewards"].items() if value is not None} == {"letters", "reply"}
    for s in samples:  # each completion is graded by its own task's environment only, with its own tool
        graded = [v for v in s["rewards"].values() if v is not None]
        assert len(graded) == 1 and s["reward"] == pytest.approx(graded[0])
        assert s["rewards"][s["environment"]] is not None
        assert s["task"].split("/")[0] in environments[s["environment"]]["splits"]
        assert ("Reply with the word" in s["prompt"]) == (s["rewards"]["reply"] is not None)
        if s["rewards"]["letters"] is not None:
            text = s["completion"]
            assert s["reward"] == pytest.approx(text.count("a") / len(text) if text else 0.0)


def trainer_side(ors: OrsServer, environments: dict):
    """The trainer's adapter on its own, without a model: what a job's trainer does with them."""
    from trainers.contract import OpenRewardConfig
    from trainers.environments import Environments

    ends = endpoints(ors.url, {})
    settings = OpenRewardConfig(api_key=KEY, base_url=ors.url, session_url=ends.session_url, api_url=ends.api_url)
    return Environments(settings, environments)


def test_an_environment_whose_tool_fails_stops_training_with_its_message(ors):
    from trainers.errors import TrainerError

    source = trainer_side(ors, {"broken": {"splits": ["train"]}})
    try:
        source.discover_tools()
        rows = source.prompt_rows(limit=2)
        assert [(r["prompt"], r["environment"], r["task_index"]) for r in rows] == [
            ("Say something:", "broken", 0),
            ("Tell me a number.", "broken", 1),
        ]
        (reward,) = source.reward_functions()
        columns = {k: [r[k] for r in rows] for k in ("environment", "split", "task_index")}
        with pytest.raises(TrainerError) as caught:
            reward(prompts=["p", "p"], completions=["aaa", "b"], **columns)
    finally:
        source.close()
    assert caught.value.code == "provider_error"
    message = caught.value.message
    assert message.startswith(f"OpenReward environment 'broken' at {ors.url} failed while grading a completion")
    assert "its tool failed: the grader lost its answer key" in message and "sid=" not in message


def test_a_multi_turn_environment_is_refused_by_name(ors):
    from trainers.errors import TrainerError

    source = trainer_side(ors, {"toolbox": {"splits": ["train"]}})
    try:
        with pytest.raises(TrainerError) as caught:
            source.discover_tools()
    finally:
        source.close()
    assert caught.value.code == "environment_not_supported"
    assert "'toolbox'" in caught.value.message and "bash, submit" in caught.value.message


def test_the_service_going_away_mid_run_fails_the_job_clearly(box, servers, tiny_model):
    server = servers[1].wait_ready()
    try:
        connect(box, server.url)
        r = submit(box, {"letters": {"splits": ["train"]}}, tiny_model, **LEARNS, max_steps=200)
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        run_until(box, lambda: (box.store.get_job(job_id)["current_step"] or 0) >= 2, timeout=300)
    finally:
        server.stop()
    killed = time.monotonic()
    job = finished(box, job_id, timeout=120)
    took = time.monotonic() - killed
    assert job["status"] == "failed" and job["error"]["code"] == "provider_error", job["error"]
    message = job["error"]["message"]
    assert f"OpenReward environment 'letters' at {server.url} failed after 2 attempts" in message, message
    assert "Cannot connect to host" in message and "Traceback" not in message
    assert took < 60, took
