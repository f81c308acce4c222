"""The bubblewrap sandbox trainers run in: hostile reward functions inside real jobs (a real
`veri-box serve` with the hostile test trainer, and real GRPO on the tiny model), the box's
sandbox status, the reward time limit, and the bwrap command line itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import Api, finished
from litestar.testing import TestClient
from serving import KEY, VERI_BOX, Server, descendants

from trainers.contract import DatasetConfig, Devices, JobConfig
from veri_box import sandbox
from veri_box.app import Box, create_app
from veri_box.executors import process_start_time
from veri_box.settings import Settings

pytestmark = pytest.mark.skipif(sandbox.works() is not None, reason=f"bubblewrap does not work here: {sandbox.works()}")

MARKER_ENV = "VERI_BOX_TEST_SERVER_SECRET"

# Each attempt prints ALLOWED or DENIED into the job's log. Placeholders are filled per test.
HOSTILE = """
import os, shutil, signal, socket, sqlite3, subprocess, sys

DB, OTHER_DATASET, MODELS, PORT, SERVER_PID, SLEEPER = __DB__, __OTHER__, __MODELS__, __PORT__, __PID__, __SLEEPER__


def _attempt(what, action):
    try:
        print(f"HOSTILE {what}: ALLOWED {action()!r}", flush=True)
    except Exception as err:
        print(f"HOSTILE {what}: DENIED {type(err).__name__}: {err}", flush=True)


def _insert_key():
    db = sqlite3.connect(f"file:{DB}?mode=rw", uri=True)
    db.execute("INSERT INTO api_keys (id, name, key_hash, created_at) VALUES ('ak_evil', 'evil', 'x', 'now')")
    db.commit()


def _env():
    if MARKER in os.environ:
        return os.environ[MARKER]
    raise LookupError(f"not in the environment (it holds {sorted(os.environ)})")


def _kill_everyone():
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    if len(pids) > 20:  # no PID namespace: do not take the machine down, fail the test instead
        raise AssertionError(f"sees {len(pids)} processes: not sandboxed, refusing to kill them")
    for pid in pids + [SERVER_PID] + ([os.getppid()] if os.getppid() > 0 else []):
        os.kill(pid, signal.SIGKILL)
    return pids


def _sleeper():
    # Double fork and setsid: nothing of the job's process group, parent long gone.
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", SLEEPER])
        os._exit(0)
    return "started"


def _connect():
    with socket.create_connection(("127.0.0.1", PORT), timeout=3) as sock:
        return sock.getpeername()


MARKER = "__MARKER__"


def reward(completions, **kwargs):
    _attempt("read-db", lambda: len(open(DB, "rb").read()))
    _attempt("insert-key", _insert_key)
    _attempt("delete-dataset", lambda: shutil.rmtree(OTHER_DATASET))
    _attempt("write-models", lambda: open(os.path.join(MODELS, "evil"), "w").write("x"))
    _attempt("server-env", _env)
    _attempt("server-environ-file", lambda: open(f"/proc/{SERVER_PID}/environ", "rb").read())
    _attempt("connect", _connect)
    _attempt("shadow", lambda: open("/etc/shadow").read())
    _attempt("kill", _kill_everyone)
    _sleeper()
    return [0.5 for _ in completions]
"""


def hostile_source(data_dir: Path, other_dataset: str, port: int, server_pid: int, sleeper: str) -> str:
    values = {
        "__DB__": repr(str(data_dir / "veri-box.db")),
        "__OTHER__": repr(str(data_dir / "datasets" / other_dataset)),
        "__MODELS__": repr(str(data_dir / "models")),
        "__PORT__": str(port),
        "__PID__": str(server_pid),
        "__SLEEPER__": repr(sleeper),
        "__MARKER__": MARKER_ENV,
    }
    source = HOSTILE
    for placeholder, value in values.items():
        source = source.replace(placeholder, value)
    return source


def attempts(log: str) -> dict[str, str]:
    """{attempt: "ALLOWED ..." or "DENIED ..."} from the job's log."""
    found = {}
    for line in log.splitlines():
        if line.startswith("HOSTILE "):
            what, _, outcome = line[len("HOSTILE ") :].partition(": ")
            found[what] = outcome
    return found


def processes_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes() and process_start_time(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return found


def box_data(db: Path) -> dict:
    """What a reward must not change: the keys and the box's secrets."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        keys = conn.execute("SELECT id, key_hash FROM api_keys ORDER BY id").fetchall()
        secrets = hashlib.sha256(repr(conn.execute("SELECT * FROM box").fetchall()).encode()).hexdigest()
    return {"keys": keys, "box": secrets}


# ---- a hostile reward inside a real server's job --------------------------------------------


@pytest.fixture
def hostile_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MARKER_ENV, "the-servers-own-secret")
    server = Server(
        tmp_path / "data",
        tmp_path / "serve.log",
        *("--gpus", "none", "--cpu-slots", "1", "--trainers", "grpo=tests.hostile_trainer"),
    )
    first = server.start()
    server.key = KEY.findall(first)[0]
    yield server, first
    server.stop()
    print(server.output())


def upload(http: httpx.Client, name: str) -> str:
    body = json.dumps({"prompt": "What is 2+2?", "answer": "4"}).encode() + b"\n"
    r = http.post("/v1/datasets", data={"name": name}, files={"file": (f"{name}.jsonl", body, "application/jsonl")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def submit(http: httpx.Client, source: str, **hyperparameters) -> str:
    dataset = upload(http, "own")
    r = http.post("/v1/reward_functions", data={"name": "hostile"}, files={"file": ("reward.py", source.encode())})
    assert r.status_code == 200, r.text
    body = {
        "base_model": "veri-box/tiny-lm",
        "dataset_id": dataset,
        "reward_function_id": r.json()["id"],
        "output_name": "hostile",
        "gpu": {"type": "cpu", "count": 1},
        "hyperparameters": hyperparameters,
    }
    r = http.post("/v1/training_jobs", json=body)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def wait_finished(http: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/training_jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"{job_id} did not finish within {timeout}s")


def test_a_hostile_reward_function_reaches_nothing_of_the_box(hostile_server):
    server, first = hostile_server
    assert "sandbox: bwrap" in first and "WARNING" not in first
    sleeper = f"sleeper-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as http:
        other = upload(http, "someone-elses")
        before = box_data(server.data_dir / "veri-box.db")
        source = hostile_source(server.data_dir, other, server.port, server.proc.pid, sleeper)
        job_id = submit(http, source)
        job = wait_finished(http, job_id)
        log = http.get(f"/v1/training_jobs/{job_id}/logs/full").text
        assert job["status"] == "completed", (job["error"], log[-3000:])

        seen = attempts(log)
        expected = {
            "read-db",
            "insert-key",
            "delete-dataset",
            "write-models",
            "server-env",
            "server-environ-file",
            "connect",
            "shadow",
            "kill",
        }
        assert set(seen) == expected, log[-3000:]
        allowed = {what: outcome for what, outcome in seen.items() if not outcome.startswith("DENIED")}
        assert not allowed, allowed
        assert "ProcessLookupError" in seen["kill"] or "No such process" in seen["kill"], seen["kill"]
        assert "the-servers-own-secret" not in log

        # The box keeps answering, its data is intact, nothing of the job outlives it.
        assert http.get("/healthz").status_code == 200 and server.proc.poll() is None
        assert http.get(f"/v1/datasets/{other}").status_code == 200
        assert (server.data_dir / "datasets" / other).is_dir()
    assert box_data(server.data_dir / "veri-box.db") == before
    assert not (server.data_dir / "models" / "evil").exists()
    time.sleep(0.5)
    assert processes_with(sleeper) == [], "a process the reward started outlived its job"


def test_the_box_says_when_it_runs_without_a_sandbox(tmp_path: Path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--sandbox", "none")
    try:
        first = server.start()
        assert "sandbox: none" in first and "WARNING" in first and "apt-get install bubblewrap" in first
    finally:
        server.stop()


def test_sandbox_bwrap_without_bwrap_is_a_clear_start_up_error(tmp_path: Path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no bwrap on it
    done = subprocess.run(
        [str(VERI_BOX), "serve", "--data-dir", str(tmp_path / "data"), "--gpus", "none", "--sandbox", "bwrap"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "bwrap is not installed" in done.stderr and "apt-get install bubblewrap" in done.stderr


# ---- sandbox=none, and the box's sandbox as the API and the dashboard show it ----------------


def open_box(tmp_path: Path, **settings) -> tuple[TestClient, Api]:
    box = Box.open(Settings(data_dir=tmp_path / "data", gpus="none", cpu_slots=1, **settings))
    client = TestClient(create_app(box, run_jobs=False))
    client.__enter__()
    return client, Api(client, box.store.create_api_key("t")[1], box)


def dashboard_settings(api: Api) -> str:
    page = api.client.get("/login")
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
    r = api.client.post("/login", data={"_csrf": csrf, "api_key": api.key, "next": "/settings"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return api.client.get("/settings").text


@pytest.fixture
def fake_trainers(monkeypatch: pytest.MonkeyPatch) -> str:
    repo = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    return "grpo=tests.fake_trainer"


def test_sandbox_none_still_runs_jobs_and_says_so(tmp_path: Path, fake_trainers: str):
    client, api = open_box(tmp_path, sandbox="none", trainers=fake_trainers)
    try:
        info = api.get("/v1/gpu/availability").json()["box"]
        assert info["sandbox"] == "none" and "apt-get install bubblewrap" in info["warning"]
        assert "No sandbox." in dashboard_settings(api)
        job = api.job(base_model="fake:steps=2")
        done = finished(api, job["id"], timeout=30)
        assert done["status"] == "completed", done["error"]
        env = json.loads((api.settings.data_dir / "jobs" / job["id"] / "env.json").read_text())
        assert env["pid"] > 1, "a plain process, in the server's PID namespace"
    finally:
        client.__exit__(None, None, None)


def test_the_sandbox_is_on_by_default_where_bwrap_works(tmp_path: Path, fake_trainers: str, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, "the-servers-own-secret")
    client, api = open_box(tmp_path, trainers=fake_trainers)
    try:
        assert api.get("/v1/gpu/availability").json()["box"] == {"sandbox": "bwrap", "warning": None}
        page = dashboard_settings(api)
        assert "No sandbox." not in page and "bubblewrap" in page
        job = api.job(base_model="fake:steps=2")
        done = finished(api, job["id"], timeout=30)
        assert done["status"] == "completed", done["error"]
        env = json.loads((api.settings.data_dir / "jobs" / job["id"] / "env.json").read_text())
        assert env["pid"] == 1, "the trainer is the init of its own PID namespace"
    finally:
        client.__exit__(None, None, None)


def test_sigterm_reaches_the_trainer_in_the_sandbox_and_it_saves(tmp_path: Path, fake_trainers: str):
    client, api = open_box(tmp_path, trainers=fake_trainers, cancel_grace_s=10)
    try:
        job = api.job(base_model="fake:steps=100000,step_s=0.05,save_every=100000")
        job_id = job["id"]
        deadline = time.monotonic() + 30
        while (api.store.get_job(job_id)["current_step"] or 0) < 3 and time.monotonic() < deadline:
            api.box.runner.tick()
            time.sleep(0.1)
        assert api.post(f"/v1/training_jobs/{job_id}/cancel").json()["status"] == "cancelled"
        started = time.monotonic()
        while api.store.jobs_holding_devices() and time.monotonic() - started < 15:
            api.box.runner.tick()
            time.sleep(0.1)
        assert time.monotonic() - started < 8, "stopped by its SIGTERM handler, not the SIGKILL after the grace"
        checkpoints = api.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"]
        assert checkpoints, "the trainer saved on SIGTERM"
        log = (api.settings.data_dir / "jobs" / job_id / "train.log").read_text()
        assert "stopping: SIGTERM received" in log
    finally:
        client.__exit__(None, None, None)


def test_an_unusable_bwrap_is_a_start_up_error_or_none(tmp_path: Path):
    with pytest.raises(sandbox.SandboxError, match="bwrap"):
        sandbox.resolve("bwrap", bwrap="/nonexistent/bwrap")
    assert sandbox.resolve("auto", bwrap="/nonexistent/bwrap") == sandbox.Mode.NONE
    assert sandbox.resolve("none") == sandbox.Mode.NONE
    with pytest.raises(sandbox.SandboxError, match="auto"):
        sandbox.resolve("maybe")


# ---- real GRPO: a hostile reward, and a reward past reward_timeout_s ------------------------

TINY_GRPO = {
    "max_steps": 1,
    "rollouts_per_prompt": 2,
    "global_batch_size": 2,
    "max_response_length": 8,
    "max_prompt_length": 64,
}


def grpo_job(api: Api, source: str, name: str, **hyperparameters) -> str:
    dataset = api.dataset([{"prompt": "Say a", "answer": "a"}, {"prompt": "Say b", "answer": "b"}])
    rf = api.reward_function(source, name=name)
    hp = {**TINY_GRPO, **hyperparameters}
    return api.job(base_model="veri-box/tiny-lm", dataset_id=dataset, reward_function_id=rf, hyperparameters=hp)["id"]


def test_real_grpo_jobs_with_a_hostile_and_a_slow_reward(box: Api):
    db = box.settings.data_dir / "veri-box.db"
    before = box_data(db)
    snoop = f"""
import os

def reward(completions, **kwargs):
    for path in ({str(db)!r}, {str(box.settings.data_dir / "models" / "evil")!r}):
        try:
            open(path, "ab").write(b"x")
            print("HOSTILE write", path, "ALLOWED", flush=True)
        except OSError as err:
            print("HOSTILE write", path, "DENIED", type(err).__name__, flush=True)
    return [float(len(c)) for c in completions]
"""
    job_id = grpo_job(box, snoop, "snoop")
    job = finished(box, job_id, timeout=300)
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert "ALLOWED" not in log and log.count("DENIED") >= 2, log[-3000:]
    assert "building the built-in model veri-box/tiny-lm" in log  # the first job builds it...
    assert box_data(db) == before and not (box.settings.data_dir / "models" / "evil").exists()

    slow = """
import time

def reward(completions, **kwargs):
    time.sleep(60)
    return [0.0 for _ in completions]
"""
    job_id = grpo_job(box, slow, "sleepy", reward_timeout_s=1)
    job = finished(box, job_id, timeout=300)
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert job["status"] == "failed" and job["error"]["code"] == "reward_function_error", job["error"]
    assert "'sleepy'" in job["error"]["message"] and "reward_timeout_s" in job["error"]["message"]
    assert "Say " in job["error"]["message"], "the prompt it was scoring"
    assert "building the built-in model" not in log  # ...and the next one reuses it, read-only


# ---- the command line (no GPU here: a fake /dev) ------------------------------------------


def job_config(tmp_path: Path, kind: str = "cpu", environments: dict | None = None, base_model: str = "x") -> JobConfig:
    data = tmp_path / "data"
    job_dir = data / "jobs" / "job_1"
    return JobConfig(
        job_id="job_1",
        method="grpo",
        trainer="trainers.grpo",
        base_model=base_model,
        output_name="o",
        dataset=DatasetConfig(id="ds_1", format="prompt_only", columns=["prompt"], num_rows=1, path=str(data / "d")),
        reward_functions=[],
        environments=environments,
        openreward=None,
        hyperparameters={},
        seed=None,
        devices=Devices(type=kind, count=1, indices=[0]),
        job_dir=str(job_dir),
        output_dir=str(job_dir / "output"),
        models_dir=str(data / "models"),
        checkpoints_dir=str(job_dir / "checkpoints"),
    )


def fake_host(tmp_path: Path) -> sandbox.Host:
    return sandbox.Host(
        bwrap="bwrap",
        data_dir=tmp_path / "data",
        home="/root",
        python_dirs=("/opt/venv",),
        code_dirs=("/src",),
        hf_home="/root/.cache/huggingface",
        hf_hub_cache="/root/.cache/huggingface/hub",
        system=(("/usr", None), ("/lib", "usr/lib")),
        dev_entries=("null", "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps", "dri", "tty", "kvm"),
    )


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_a_gpu_job_gets_the_nvidia_devices_and_a_cpu_job_none(tmp_path: Path):
    gpu, _ = sandbox.command(job_config(tmp_path, kind="A100-80GB"), {}, fake_host(tmp_path))
    assert pairs(gpu, "--dev-bind") == [
        "/dev/dri",
        "/dev/nvidia-caps",
        "/dev/nvidia-uvm",
        "/dev/nvidia0",
        "/dev/nvidia1",
        "/dev/nvidiactl",
    ]
    cpu, _ = sandbox.command(job_config(tmp_path), {}, fake_host(tmp_path))
    assert pairs(cpu, "--dev-bind") == []


def test_the_command_line_shares_only_what_the_job_needs(tmp_path: Path):
    config = job_config(tmp_path, base_model="/")
    environ = {"PATH": "/x", "AWS_SECRET_ACCESS_KEY": "k", "VERI_API_KEY": "vk", "PYTHONPATH": "/src", "LANG": "C"}
    argv, env = sandbox.command(config, environ, fake_host(tmp_path))
    assert argv[0] == "bwrap" and argv[-1] == "--"
    assert {"--unshare-all", "--die-with-parent", "--as-pid-1"} <= set(argv) and "--share-net" not in argv
    assert pairs(argv, "--cap-drop") == ["ALL"]
    assert set(env) <= {*sandbox.KEPT_ENV, "HOME", "PATH", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE"}
    assert "AWS_SECRET_ACCESS_KEY" not in env and "VERI_API_KEY" not in env and env["HOME"] == "/tmp"
    data = str(tmp_path / "data")
    # The data directory is an empty tmpfs; only the job's own directory is writable.
    assert pairs(argv, "--bind") == [config.job_dir]
    assert argv.index(data) < argv.index(config.job_dir)
    assert "/" not in pairs(argv, "--ro-bind"), "a base_model of '/' must not bind the whole machine"
    # Of the data directory only the job's dataset comes back read-only (its models folder when it exists).
    assert [p for p in pairs(argv, "--ro-bind") if Path(data) in Path(p).parents] == [config.dataset.path]

    argv, _ = sandbox.command(job_config(tmp_path, environments={"e": {}}), environ, fake_host(tmp_path))
    assert "--share-net" in argv, "OpenReward environments are a web service"


def test_the_first_job_of_a_built_in_model_may_build_it(tmp_path: Path):
    config = job_config(tmp_path, base_model="veri-box/tiny-lm")
    Path(config.models_dir).mkdir(parents=True)
    built = Path(config.models_dir) / "tiny-lm"
    built.mkdir()
    argv, _ = sandbox.command(config, {}, fake_host(tmp_path))
    assert pairs(argv, "--bind") == [str(built), config.job_dir], "that one model's folder, not the others"
    assert config.models_dir in pairs(argv, "--ro-bind")
    (built / "config.json").write_text("{}")
    argv, _ = sandbox.command(config, {}, fake_host(tmp_path))
    assert pairs(argv, "--bind") == [config.job_dir] and config.models_dir in pairs(argv, "--ro-bind")


def test_killing_the_group_ends_the_whole_sandbox(tmp_path: Path, fake_trainers: str):
    """SIGKILL to the process group the runner holds ends the shell, bwrap and the trainer."""
    client, api = open_box(tmp_path, trainers=fake_trainers)
    try:
        job = api.job(base_model="fake:hang=1,child=1")
        deadline = time.monotonic() + 30
        while api.store.get_job(job["id"])["status"] != "running" and time.monotonic() < deadline:
            api.box.runner.tick()
            time.sleep(0.1)
        pid = api.store.get_job(job["id"])["pid"]
        tree = descendants(pid)
        assert len(tree) >= 3, "bwrap, the trainer and its grandchild"
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(process_start_time(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in tree if process_start_time(p)], "a process of the sandbox outlived the SIGKILL"
    finally:
        for j in api.store.jobs_with_status("queued", "provisioning", "running"):
            api.box.runner.cancel(j["id"])
        client.__exit__(None, None, None)
