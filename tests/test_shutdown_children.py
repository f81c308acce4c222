"""A server that stops takes its evaluation and merge children with it: a real `veri-box serve`,
a real tiny GRPO job on its cpu pool, then an evaluation whose reward function hangs (the real
trainers/evaluate.py in the sandbox), and the server stopped with SIGTERM as a service manager
does. Nothing it started is left running, and the next start reports the evaluation as failed
because the server stopped."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import KEY, Server, alive, descendants

from veri_box import demo

# The demo's reward, which hangs on a prompt that asks it to: an evaluation that never ends.
REWARD = """def reward(completions, prompts, **kwargs):
    if any("HANG" in p for p in prompts):
        import time
        time.sleep(600)
    return [c.count("a") / len(c) if c else 0.0 for c in completions]
"""
HP = {**demo.HYPERPARAMETERS, "max_steps": 2, "seed": 0}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    server.key = KEY.findall(server.start())[0]
    yield server
    server.stop()
    print(server.output()[-5000:])


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60)


def ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 202), f"{response.request.url}: {response.text}"
    return response.json()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def evaluation_children(server: Server) -> list[int]:
    """Host pids of the server's processes that run trainers.evaluate (the sandbox's too)."""
    found = []
    for pid in descendants(server.proc.pid):
        try:
            if b"trainers.evaluate" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.timeout(600)
def test_a_stopped_server_leaves_no_evaluation_running_and_reports_it_interrupted(server: Server):
    with client(server) as http:
        rows = "".join(json.dumps({"prompt": p}) + "\n" for p in demo.PROMPTS).encode()
        dataset = ok(http.post("/v1/datasets", data={"name": "d"}, files={"file": ("d.jsonl", rows)}))
        reward = ok(http.post("/v1/reward_functions", data={"name": "a"}, files={"file": ("a.py", REWARD.encode())}))
        job = ok(
            http.post(
                "/v1/training_jobs",
                json={
                    "base_model": demo.TINY_LM,
                    "dataset_id": dataset["id"],
                    "reward_function_id": reward["id"],
                    "output_name": "tiny",
                    "hyperparameters": HP,
                    "gpu": {"type": "cpu", "count": 1},
                },
            )
        )
        job_id = job["id"]
        done = wait_for(
            lambda: (j := ok(http.get(f"/v1/training_jobs/{job_id}")))["status"] in ("completed", "failed") and j,
            420,
            "the job to end",
        )
        assert done["status"] == "completed", done["error"]
        started = ok(http.post(f"/v1/training_jobs/{job_id}/evaluate", json={"prompts": ["HANG now"], "max_tokens": 4}))
        evaluation_id = started["id"]
        wait_for(
            lambda: ok(http.get(f"/v1/training_jobs/{job_id}/evaluations/{evaluation_id}"))["status"] == "running",
            60,
            "the evaluation to run",
        )
        children = wait_for(lambda: evaluation_children(server), 60, "the evaluation's child")
        everything = descendants(server.proc.pid)

    started_at = time.monotonic()
    # SIGTERM: it exits by itself (uvicorn re-raises the signal once shut down), not SIGKILLed.
    assert server.stop() in (0, -signal.SIGTERM), server.output()[-3000:]
    assert time.monotonic() - started_at < 15
    # The supervisor notices the server is gone at once; the child gets SIGTERM, SIGKILL 5 s later.
    wait_for(lambda: not [pid for pid in children if alive(pid)], 10, f"evaluation children {children} to end")
    wait_for(lambda: not [pid for pid in everything if alive(pid)], 10, "the processes the server started to end")

    server.start()
    with client(server) as http:
        got = ok(http.get(f"/v1/training_jobs/{job_id}/evaluations/{evaluation_id}"))
    assert got["status"] == "failed" and got["error"]["code"] == "evaluation_interrupted", got
    assert "server stopped" in got["error"]["message"], got
