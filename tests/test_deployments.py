"""Deployments through a real `veri-box serve` on the cpu pool: the built-in tiny model and a
real tiny GRPO job's adapter served by trainers/serve.py in the sandbox, chatted with through the
official `openai` client and veri-sdk's `deployments.chat`, streamed, 8 requests at once; a
stopped deployment frees its device for a queued job; bad deployments and bad chats are 4xx in
OpenAI's error shape; an idle deployment stops by itself."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serving import KEY, Server, alive, descendants, veri
from veri_sdk.client import Client as VeriClient

from veri_box import demo

HP = {**demo.HYPERPARAMETERS, "max_steps": 2}
FAILS = "def reward(completions, **kwargs):\n    raise KeyError('score')\n"
HELLO = [{"role": "user", "content": "Say something:"}]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("deploy")
    server = Server(root / "data", root / "serve.log", "--gpus", "none", "--cpu-slots", "2")
    server.key = KEY.search(server.start()).group(0)
    yield server
    server.stop()


def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=120)


def submit(client: httpx.Client, reward: str = demo.REWARD, gpu: dict | None = None, **hp) -> str:
    rows = "".join(f'{{"prompt": "{p}"}}\n' for p in demo.PROMPTS).encode()
    dataset = client.post("/v1/datasets", data={"name": "d"}, files={"file": ("d.jsonl", rows)}).json()["id"]
    rf = client.post("/v1/reward_functions", data={"name": "r"}, files={"file": ("r.py", reward.encode())}).json()
    body = {
        "base_model": "veri-box/tiny-lm",
        "dataset_id": dataset,
        "reward_function_id": rf["id"],
        "hyperparameters": {**HP, **hp},
        "gpu": gpu or {"type": "cpu", "count": 1},
    }
    response = client.post("/v1/training_jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def wait(client: httpx.Client, url: str, *statuses: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{url} never became {statuses}: {body}")


def deploy(client: httpx.Client, model: str, source: str, **gpu) -> httpx.Response:
    return client.post(
        "/v1/deployments",
        json={
            "model": model,
            "source": source,
            "name": f"try-{source}",
            "gpu": gpu or {"gpu_type": "cpu", "gpu_count": 1},
        },
    )


def cpu_free(client: httpx.Client) -> int:
    rows = client.get("/v1/gpu/availability", params={"provider": "local", "gpu_type": "cpu"}).json()["availability"]
    return rows[0]["available"]


def openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    if param:
        assert error["param"] == param, error
    return error


def test_deploy_chat_stream_concurrency_and_stop_frees_the_device(box: Server, tmp_path: Path):
    client = http(box)
    trained, failed = submit(client), submit(client, FAILS)
    assert wait(client, f"/v1/training_jobs/{failed}", "completed", "failed")["status"] == "failed"
    assert wait(client, f"/v1/training_jobs/{trained}", "completed", "failed")["status"] == "completed"

    # A failed job, a job that does not exist, a model the box lacks, a device it lacks: 4xx, nothing stored.
    assert openai_error(deploy(client, failed, "training_job"), 400, "model")["code"] == "job_not_completed"
    assert openai_error(deploy(client, "job_nope", "training_job"), 404, "model")["code"] == "training_job_not_found"
    assert openai_error(deploy(client, "nobody/no-model", "huggingface"), 400, "model")["code"] == "model_not_found"
    bad_gpu = deploy(client, "veri-box/tiny-lm", "huggingface", type="H100-80GB", count=1)
    assert openai_error(bad_gpu, 400, "gpu.gpu_type")["code"] == "gpu_unavailable"
    assert client.get("/v1/deployments").json()["data"] == []

    # veri-sdk creates one (its {gpu_type, gpu_count}); the seed's {type, count} creates the other.
    sdk = VeriClient(api_key=box.key, base_url=box.url)
    base = sdk.deployments.create(
        "veri-box/tiny-lm", "tiny", gpu={"gpu_type": "cpu", "gpu_count": 1}, source="huggingface"
    )
    assert base.status == "queued" and base.provider == "local" and base.gpu["gpu_type"] == "cpu"
    tuned = deploy(client, trained, "training_job", type="cpu", count=1)
    assert tuned.status_code == 200, tuned.text
    tuned = tuned.json()
    assert (
        tuned["base_model"] == "veri-box/tiny-lm" and tuned["endpoint_url"] == f"{box.url}/v1/deployments/{tuned['id']}"
    )
    for dep in (base.id, tuned["id"]):
        served = wait(client, f"/v1/deployments/{dep}", "serving", "failed", timeout=240)
        assert served["status"] == "serving", served
    assert base.wait(poll_interval=1, timeout=30).status == "serving"  # the SDK's own wait settles on it
    assert cpu_free(client) == 0

    # The official openai client, pointed at the deployment's endpoint with the box's key.
    oa = openai.OpenAI(base_url=tuned["endpoint_url"], api_key=box.key)
    answer = oa.chat.completions.create(model="tuned", messages=HELLO, max_tokens=8, temperature=0.7, n=2)
    assert [c.index for c in answer.choices] == [0, 1] and all(c.message.role == "assistant" for c in answer.choices)
    assert answer.usage.completion_tokens >= 2 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    greedy = [oa.chat.completions.create(model="t", messages=HELLO, max_tokens=6, temperature=0) for _ in range(2)]
    assert greedy[0].choices[0].message.content == greedy[1].choices[0].message.content  # temperature 0 is greedy
    assert greedy[0].choices[0].finish_reason in ("length", "stop")

    # Streaming: role first, content deltas, a finish_reason, usage on request, then [DONE].
    stream = oa.chat.completions.create(
        model="t", messages=HELLO, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == greedy[0].choices[0].message.content  # the same greedy answer, in pieces
    assert any(c.choices and c.choices[0].finish_reason for c in chunks) and chunks[-1].usage.completion_tokens > 0
    with client.stream(
        "POST", f"/v1/deployments/{base.id}/chat/completions", json={"messages": HELLO, "max_tokens": 4, "stream": True}
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]", lines

    # veri-sdk's deployments.chat on the base model.
    reply = sdk.deployments.chat(base.id, HELLO, model="tiny", max_tokens=5, temperature=0)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"

    # 8 requests at once all answer (batched in the serving process).
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        many = list(
            pool.map(
                lambda i: oa.chat.completions.create(
                    model="t", messages=[{"role": "user", "content": f"Count to {i}:"}], max_tokens=8
                ),
                range(8),
            )
        )
    assert len(many) == 8 and all(r.usage.completion_tokens > 0 for r in many), time.monotonic() - started
    # Chats are model reads: the audit trail keeps the deployment's writes, not every inference call.
    actions = {row["action"] for row in client.get("/v1/audit?limit=100").json()["data"]}
    assert "POST /v1/deployments" in actions and not any("chat/completions" in a for a in actions), actions

    # Bad chats: 4xx in OpenAI's shape; the client raises its BadRequestError.
    url = f"/v1/deployments/{tuned['id']}/chat/completions"
    assert openai_error(client.post(url, json={"messages": []}), 400, "messages")["type"] == "invalid_request_error"
    openai_error(client.post(url, json={"messages": HELLO, "temperature": 5}), 400, "temperature")
    openai_error(client.post(url, json={"messages": HELLO, "n": 50}), 400, "n")
    openai_error(client.post(url, json={"messages": [{"role": "robot", "content": "x"}]}), 400, "messages[0].role")
    openai_error(client.post(url, json={"prompt": "no messages"}), 400)
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="t", messages=HELLO, max_tokens=0)
    openai_error(httpx.post(f"{box.url}{url}", json={"messages": HELLO}), 401)  # the key guards it

    # Its request log and metrics, as veri-sdk and `veri deployments requests/metrics` read them:
    # the 12 answers with the tokens the client got, and the 5 refusals the proxy saw (a body that
    # fails the schema, or no key, never reaches it).
    refusals = ["invalid_max_tokens", "invalid_messages", "invalid_n", "invalid_role", "invalid_temperature"]
    got = answer.usage.completion_tokens + sum(r.usage.completion_tokens for r in [*greedy, *many])
    got += chunks[-1].usage.completion_tokens
    deadline = time.monotonic() + 10  # rows are written once each answer is over, off its path
    while len(log := sdk.deployments.requests(tuned["id"], limit=100)) < 17 and time.monotonic() < deadline:
        time.sleep(0.2)
    answered = [r for r in log if r["status_code"] == 200]
    # The requests it answered; the refused ones are not counted.
    assert client.get(f"/v1/deployments/{tuned['id']}").json()["total_requests"] == 1 + 2 + 1 + 8
    assert len(log) == 17 and len(answered) == 12, [(r["status_code"], r["error_category"]) for r in log]
    assert sorted(r["error_category"] for r in log if r["status_code"] == 400) == refusals
    assert sum(r["completion_tokens"] for r in answered) == got
    assert all(r["usage_reported"] and 0 < r["ttfb_ms"] <= r["latency_ms"] for r in answered)
    assert [r["created_at"] for r in log] == sorted((r["created_at"] for r in log), reverse=True)  # newest first
    (streamed_row,) = [r for r in answered if r["streamed"]]
    assert 0 < streamed_row["ttft_ms"] <= streamed_row["latency_ms"] and streamed_row["finish_reason"]
    page = sdk.deployments.requests(tuned["id"], limit=10)
    rest = sdk.deployments.requests(tuned["id"], limit=10, after=page[-1]["id"])
    assert [r["id"] for r in page + rest] == [r["id"] for r in log]
    errors = sdk.deployments.requests(tuned["id"], errors_only=True)
    assert sorted(r["error_category"] for r in errors) == refusals
    metrics = sdk.deployments.metrics(tuned["id"])
    assert (metrics["total_requests"], metrics["requests_24h"], metrics["errors_24h"]) == (12, 17, 5), metrics
    assert metrics["total_completion_tokens"] == got and metrics["error_rate_24h"] == round(5 / 17, 4)
    assert metrics["latency_sample_24h"] == 12 and 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p99"]
    series = sdk.deployments.metrics_timeseries(tuned["id"], interval="minute", from_time=log[-1]["created_at"])
    assert series["interval"] == "minute" and sum(b["requests"] for b in series["buckets"]) == 17, series
    hourly = sdk.deployments.metrics_timeseries(tuned["id"])  # auto over the default 7 days: the hourly sums
    assert hourly["interval"] == "hour" and sum(b["requests"] for b in hourly["buckets"]) == 17, hourly
    assert sum(b["completion_tokens"] for b in hourly["buckets"]) == got
    too_fine = client.get(f"/v1/deployments/{tuned['id']}/metrics/timeseries", params={"interval": "minute"})
    assert openai_error(too_fine, 400, "interval")["code"] == "invalid_value"  # 10,080 buckets
    logged = f"/v1/deployments/{tuned['id']}/requests"
    assert openai_error(client.get(logged, params={"from": "yesterday"}), 400, "from")["code"] == "invalid_value"
    assert openai_error(client.get(logged, params={"after": "req_nope"}), 400, "after")["code"] == "invalid_value"
    assert openai_error(client.get("/v1/deployments/dep_nope/metrics"), 404)["code"] == "deployment_not_found"
    cli = veri(box, tmp_path, "-o", "json", "deployments", "metrics", tuned["id"])
    assert cli.returncode == 0 and json.loads(cli.stdout)["requests_24h"] == 17, cli.stdout + cli.stderr
    cli = veri(box, tmp_path, "deployments", "requests", tuned["id"], "--limit", "3")
    assert cli.returncode == 0 and cli.stdout.count("req_") == 3, cli.stdout + cli.stderr

    # A running job cannot be deployed; while both cpu slots serve, a new job waits...
    running = submit(client, max_steps=500)
    time.sleep(3)
    assert client.get(f"/v1/training_jobs/{running}").json()["status"] == "queued"
    assert openai_error(deploy(client, running, "training_job"), 400, "model")["code"] == "job_not_completed"
    assert openai_error(client.delete(f"/v1/deployments/{base.id}"), 409)["code"] == "deployment_running"
    # ...and starts once a deployment is stopped (its device freed).
    stopped = sdk.deployments.stop(base.id)
    assert stopped.status == "stopped"
    wait(client, f"/v1/training_jobs/{running}", "running", timeout=60)
    assert openai_error(deploy(client, running, "training_job"), 400, "model")["code"] == "job_not_completed"
    assert client.post(f"/v1/deployments/{base.id}/chat/completions", json={"messages": HELLO}).status_code == 409
    client.post(f"/v1/training_jobs/{running}/cancel")
    listed = [d.id for d in sdk.deployments.list()]
    assert listed == [tuned["id"], base.id]
    sdk.deployments.delete(base.id)
    assert client.get(f"/v1/deployments/{base.id}").status_code == 404

    # A restarted box re-attaches to the serving process: it still answers.
    box.stop(keep_deployments=True)
    box.start()  # on a new port
    client = http(box)
    oa = openai.OpenAI(base_url=f"{box.url}/v1/deployments/{tuned['id']}", api_key=box.key)
    assert client.get(f"/v1/deployments/{tuned['id']}").json()["status"] == "serving"
    again = oa.chat.completions.create(model="t", messages=HELLO, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == greedy[0].choices[0].message.content
    client.post(f"/v1/deployments/{tuned['id']}/stop")
    wait(client, f"/v1/training_jobs/{running}", "cancelled", timeout=60)
    deadline = time.monotonic() + 30
    while cpu_free(client) != 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert cpu_free(client) == 2


def test_an_idle_deployment_stops_by_itself_and_says_so(tmp_path: Path):
    server = Server(
        tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1", "--deployment-idle-stop-s", "2"
    )
    server.key = KEY.search(server.start()).group(0)
    try:
        client = http(server)
        dep = deploy(client, "veri-box/tiny-lm", "huggingface").json()
        wait(client, f"/v1/deployments/{dep['id']}", "serving", timeout=240)
        stopped = wait(client, f"/v1/deployments/{dep['id']}", "stopped", "failed", timeout=30)
        assert stopped["status"] == "stopped" and stopped["stop_reason"] == "idle", stopped
        assert "idle_stopped" in [e["type"] for e in stopped["events"]]
    finally:
        server.stop()


def serving_pids(server: Server, dep: str) -> list[int]:
    mark = f"{server.data_dir / 'deployments' / dep}".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"trainers.serve" in (text := cmdline.read_bytes()) and mark in text:
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


def test_a_deployment_stopped_just_before_the_box_stops_ends_with_it(tmp_path: Path):
    """Serving processes outlive a box that stops (the next start re-attaches them), but not one
    the user had stopped and the supervisor had not ended yet: it would hold its device while
    the box is down."""
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    server.key = KEY.search(server.start()).group(0)
    try:
        client = http(server)
        kept = deploy(client, "veri-box/tiny-lm", "huggingface").json()["id"]
        wait(client, f"/v1/deployments/{kept}", "serving", timeout=240)
        assert client.post(f"/v1/deployments/{kept}/stop").json()["status"] == "stopped"
        pids = serving_pids(server, kept)
        assert pids
        server.stop(keep_deployments=True)  # at once: before a tick of the supervisor ends it
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in pids), pids
    finally:
        server.stop()


CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_playground_deploys_a_job_in_one_click_and_streams_a_chat(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    server.key = KEY.search(server.start()).group(0)
    try:
        client = http(server)
        job = submit(client)
        assert wait(client, f"/v1/training_jobs/{job}", "completed", "failed")["status"] == "completed"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            expect = sync_api.expect
            page.goto(server.url + "/login")
            page.fill("[name=api_key]", server.key)
            page.click("button[type=submit]")
            page.goto(server.url + "/playground")
            expect(page.locator("#deploy-job")).to_contain_text(job)
            page.select_option("#deploy-job", job)
            page.click("#deploy")  # one click: the job's adapter deployed on the cpu pool
            page.wait_for_url(lambda url: "/playground?deployment=dep_" in url)
            compare = page.locator("#compare")
            compare.locator("textarea[name=prompts]").fill("Say something:")  # typed while it loads
            expect(page.locator("#send")).to_be_enabled(timeout=240_000)  # polled until it serves
            # no reload on the way: what was typed in Compare is still there
            expect(compare.locator("textarea[name=prompts]")).to_have_value("Say something:")
            expect(page.locator("#chosen-status")).to_have_text("serving")
            expect(page.locator("#deployments .badge")).to_have_text("serving")  # the list's too
            page.fill("#system", "You are terse.")
            page.fill("#max-tokens", "12")
            page.fill("#prompt", "Say something:")
            page.click("#send")
            expect(page.locator(".turn.assistant[data-done=true]")).to_have_count(1, timeout=60_000)
            expect(page.locator(".turn.user")).to_contain_text("Say something:")
            assert page.locator("#chat-error").is_hidden(), page.locator("#chat-error").text_content()
            # The chat is in the deployment's request log, shown under it: the API's own figures.
            expect(page.locator("#requests-table tbody tr")).to_have_count(1, timeout=10_000)
            deployed = page.url.split("deployment=")[1].split("#")[0]
            (logged,) = client.get(f"/v1/deployments/{deployed}/requests").json()["data"]
            row = page.locator(f"#requests-table tr[data-request={logged['id']}]")
            expect(row).to_contain_text(f"/ {logged['completion_tokens']}")
            expect(row).to_contain_text("stream")
            expect(page.locator("#requests-24h")).to_have_text("1")
            expect(page.locator("#errors-24h")).to_have_text("0")
            # Is it better? Compare, on this page: the deployed job is the one picked, its base and
            # trained model answer the typed prompt, each answer scored by the job's reward.
            page.click("#compare-hint a")
            expect(compare.locator("#compare-job")).to_have_value(job)
            compare.locator("input[name=source][value=prompts]").check()
            compare.locator("input[name=max_tokens]").fill("8")
            compare.locator("#evaluate-job").click()
            expect(compare.locator("#evaluation-table")).to_be_visible(timeout=180_000)  # polled, no reload
            evaluation = client.get(f"/v1/training_jobs/{job}/evaluations").json()["data"][0]
            assert evaluation["status"] == "completed" and len(evaluation["rows"]) == 1, evaluation
            cells = compare.locator("#evaluation-table tbody tr td")
            expect(cells.nth(0)).to_have_text("Say something:")
            expect(cells.nth(1)).to_have_text(evaluation["rows"][0]["base"]["answer"])
            expect(cells.nth(3)).to_have_text(evaluation["rows"][0]["trained"]["answer"])
            expect(compare.locator("#base-mean")).to_have_text(f"{evaluation['base_mean']:.3f}")
            expect(compare.locator("#trained-mean")).to_have_text(f"{evaluation['trained_mean']:.3f}")
            browser.close()
        deployment = client.get("/v1/deployments").json()["data"][0]
        assert deployment["model"] == job and deployment["total_requests"] == 1, deployment
        assert not errors, errors
        client.post(f"/v1/deployments/{deployment['id']}/stop")
    finally:
        server.stop()


def test_a_serving_process_that_dies_fails_its_deployment_with_its_log_and_frees_the_device(tmp_path: Path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    server.key = KEY.search(server.start()).group(0)
    try:
        client = http(server)
        dep = deploy(client, "veri-box/tiny-lm", "huggingface").json()
        wait(client, f"/v1/deployments/{dep['id']}", "serving", timeout=240)
        assert cpu_free(client) == 0
        serving = [
            pid
            for pid in descendants(server.proc.pid)
            if b"trainers.serve" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        ]
        assert serving, "the serving process runs below the box"
        os.kill(serving[-1], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        failed = wait(client, f"/v1/deployments/{dep['id']}", "failed", "stopped", timeout=30)
        assert failed["status"] == "failed" and failed["failure_code"] == "server_crashed", failed
        assert "serving veri-box/tiny-lm" in failed["error"]  # the last lines of its log
        chat = client.post(f"/v1/deployments/{dep['id']}/chat/completions", json={"messages": HELLO})
        assert openai_error(chat, 409)["code"] == "deployment_not_serving"
        deadline = time.monotonic() + 15
        while cpu_free(client) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cpu_free(client) == 1
    finally:
        server.stop()


def test_the_serving_process_serves_a_full_fine_tune_without_its_base(tmp_path: Path):
    """A full fine-tune's output is the whole model: the child loads it alone (the base it names
    need not be on the box), and speaks its socket protocol: token lines, then the choices."""
    import json
    import subprocess
    import sys

    from trainers.tiny import build_tiny_lm

    model = build_tiny_lm(tmp_path / "model", seed=0)
    work = tmp_path / "dep"
    work.mkdir()
    (work / "serve.json").write_text(json.dumps({"base_model": "nobody/gone", "adapter_dir": str(model)}))
    child = subprocess.Popen([sys.executable, "-m", "trainers.serve", str(work)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (work / "ready").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the serving process did not start"
            time.sleep(0.1)
        direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(work / "serve.sock")), base_url="http://s")
        body = {"messages": HELLO, "max_tokens": 5, "temperature": 0, "n": 2}
        lines = [json.loads(line) for line in direct.post("/generate", json=body, timeout=60).text.splitlines()]
        done = lines[-1]
        assert done["done"] and [c["index"] for c in done["choices"]] == [0, 1], done
        assert done["choices"][0]["text"] == done["choices"][1]["text"]  # greedy: both the same
        assert 1 <= done["usage"]["completion_tokens"] <= 2 * 5, done["usage"]
        assert "".join(x["text"] for x in lines[:-1] if x["index"] == 0) == done["choices"][0]["text"]
        assert direct.post("/generate", content=b"{not json").status_code == 400
        assert direct.get("/health").json()["status"] == "ok"
    finally:
        child.kill()
        child.wait()


def test_the_serving_process_splits_a_model_across_gpus_only_when_it_sees_several():
    """transformers on a deployment's GPUs: device_map "auto" (accelerate's split by layers) on
    two or more visible, the model whole on one device otherwise. The load on several real GPUs
    is not run here (no GPU); the box giving the process all of them is (test_deployments_vllm)."""
    from trainers.serve import device_map

    assert [device_map(n) for n in (0, 1, 2, 4)] == [None, None, "auto", "auto"]
