"""Jobs on rented GPUs, end to end: a real `veri-box serve` whose cloud providers are set through
its own API (PUT /v1/settings/providers/{name} with base_url pointing at a stand-in,
tests/provider_standins.py), and whose "instances" are real OpenSSH servers on this machine.

What a user would notice: a job for a GPU type the box does not have goes to the cheapest
provider that has it in stock (and to the next one when the first has no capacity after all),
trains there with the same metrics, samples, checkpoints, logs and model as a local job, costs
the instance's price for the time it was rented, and leaves nothing behind: a cancel stops the
remote trainer and terminates the instance, a dead instance fails the job naming it, a box that
crashes re-attaches without losing or repeating a step, and instances left over from an earlier
run are terminated at start. Provider keys stay in the box's database.

Every instance boots an "image": a home of its own, and a python3 with the training stack on
its PATH, as a provider's PyTorch image has; here that python is this test run's own venv, so the
box's bootstrap finds the stack at its versions and installs nothing. Jobs other than the first
run the stdlib test trainer (tests/fake_trainer.py, behaviour set by base_model).
"""

from __future__ import annotations

import base64
import getpass
import http.server
import json
import os
import signal
import statistics
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from provider_standins import LambdaStandIn, PrimeStandIn, RunPodGpu, RunPodStandIn, StandIn
from serving import FAKE_TRAINERS, KEY, Server, alive, descendants

from veri_box import demo

# The cloud jobs ask for a type this box (`--gpus none`) does not have, so placement rents one.
GPU = {"type": "A100-80GB", "count": 1}
FAKE_ARGS = ("--gpus", "none", "--cpu-slots", "1", "--trainers", FAKE_TRAINERS, "--cancel-grace-s", "2")
REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [float('4' in c) for c in completions]\n"
ROWS = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "What is 3+1?", "answer": "4"}]
TERMINAL = ("completed", "failed", "cancelled")
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # W&B's keys are 40 characters


# ---- the clouds ------------------------------------------------------------------------------


def boot_the_image(stand_in: StandIn) -> StandIn:
    """Every instance `stand_in` launches boots an image whose python3 is this venv's (sshd sets
    its HOME and PATH, as a provider's image does), for the keys the launch authorizes."""
    stand_in.image_bin = str(Path(sys.executable).parent)
    return stand_in


@dataclass
class Clouds:
    """A RunPod and a Prime Intellect stand-in (Prime quotes the A100 cheaper: $1.45 vs $1.64/h),
    and a Lambda one (no A100 80GB: an H100 at $2.49/h)."""

    directory: Path
    runpod: RunPodStandIn
    prime: PrimeStandIn
    lambda_: LambdaStandIn

    def by_name(self, name: str) -> StandIn:
        return {"runpod": self.runpod, "prime_intellect": self.prime, "lambda": self.lambda_}[name]

    def remote_dirs(self) -> list[Path]:
        """Every instance's home: where the box put its files on the instance."""
        return sorted(self.directory.glob("*/instance-*/home"))


@pytest.fixture
def clouds(tmp_path: Path) -> Iterator[Clouds]:
    stand_ins = Clouds(
        tmp_path / "clouds",
        boot_the_image(RunPodStandIn.start(tmp_path / "clouds" / "runpod")),
        boot_the_image(PrimeStandIn.start(tmp_path / "clouds" / "prime")),
        boot_the_image(LambdaStandIn.start(tmp_path / "clouds" / "lambda")),
    )
    # Lambda's instances accept one login name, which its API does not report (on Lambda it is
    # `ubuntu`; here the user running the tests, the only one that exists to log in as).
    stand_ins.lambda_.ssh_user = getpass.getuser()
    yield stand_ins
    # Terminates every instance still up, and with each its sshd and whatever it started.
    stand_ins.runpod.stop()
    stand_ins.prime.stop()
    stand_ins.lambda_.stop()


# ---- boxes -----------------------------------------------------------------------------------


@dataclass
class Box:
    server: Server
    http: httpx.Client
    bodies: list[bytes] = field(default_factory=list)  # every response body the tests received

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def restart(self) -> None:
        self.server.start()  # on a new free port
        self.http.base_url = self.server.url


def _recorder(bodies: list[bytes]) -> Callable[[httpx.Response], None]:
    def record(response: httpx.Response) -> None:
        bodies.append(response.read())

    return record


@pytest.fixture
def start_box(tmp_path: Path, clouds: Clouds) -> Iterator[Callable[..., Box]]:
    """start_box(*serve_args, providers=("runpod",)) -> a started box on a fresh data dir, its key
    set, and those providers configured through the API at the stand-ins. At teardown every
    server is stopped (the stand-ins then terminate what is left), and its log is shown."""
    boxes: list[Box] = []

    def start(*args: str, providers: tuple[str, ...] = ("runpod",)) -> Box:
        base = tmp_path / f"box{len(boxes)}"
        base.mkdir()
        server = Server(base / "data", base / "serve.log", *args)
        first = server.start()
        keys = KEY.findall(first)
        assert len(keys) == 1, f"expected the first start to print one API key:\n{first}"
        server.key = keys[0]
        bodies: list[bytes] = []
        http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.key}"},
            timeout=60,
            event_hooks={"response": [_recorder(bodies)]},
        )
        box = Box(server, http, bodies)
        boxes.append(box)
        for name in providers:
            stand_in = clouds.by_name(name)
            r = http.put(f"/v1/settings/providers/{name}", json={"api_key": stand_in.api_key, "base_url": stand_in.url})
            assert r.status_code == 200, r.text
            assert r.json()["configured"] and r.json()["warning"] is None, r.json()
        return box

    yield start
    for box in boxes:
        box.http.close()
        box.server.stop()
        print(f"---- {box.server.log_path} ----\n{box.server.output()}")


# ---- helpers ---------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def upload_dataset(http: httpx.Client) -> str:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    return ok(http.post("/v1/datasets", data={"name": "math"}, files={"file": ("m.jsonl", body, "application/jsonl")}))[
        "id"
    ]


def create_job(http: httpx.Client, base_model: str, **fields) -> dict:
    """A GRPO job of the test trainer (or whatever base_model says) for an A100: a cloud job."""
    job = ok(
        http.post(
            "/v1/training_jobs",
            json={
                "base_model": base_model,
                "dataset_id": upload_dataset(http),
                "reward_source": REWARD_SOURCE,
                "output_name": "remote-test",
                "gpu": GPU,
                **fields,
            },
        )
    )
    assert job["status"] == "queued", job
    return job


def get_job(http: httpx.Client, job_id: str) -> dict:
    return ok(http.get(f"/v1/training_jobs/{job_id}"))


def events(http: httpx.Client, job_id: str) -> list[dict]:
    return ok(http.get(f"/v1/training_jobs/{job_id}/events", params={"limit": 1000}))["items"]


def event(http: httpx.Client, job_id: str, kind: str) -> dict:
    found = [e for e in events(http, job_id) if e["event_type"] == kind]
    assert len(found) == 1, f"expected one {kind} event: {[e['event_type'] for e in events(http, job_id)]}"
    return found[0]


def metrics(http: httpx.Client, job_id: str) -> dict:
    return ok(http.get(f"/v1/training_jobs/{job_id}/metrics", params={"max_points": 10_000}))


def wait_status(http: httpx.Client, job_id: str, status: str, timeout: float = 90) -> dict:
    """Wait for `status`; a job that ends in another terminal status fails at once."""
    job = wait_until(lambda: (j := get_job(http, job_id))["status"] in (status, *TERMINAL) and j, timeout)
    assert job and job["status"] == status, f"{job_id} is not {status}: {get_job(http, job_id)}"
    return job


def wait_steps(http: httpx.Client, job_id: str, steps: int, timeout: float = 90) -> int:
    def ready() -> int | None:
        latest = metrics(http, job_id)["latest_step"]
        return latest if get_job(http, job_id)["status"] == "running" and (latest or 0) >= steps else None

    latest = wait_until(ready, timeout)
    assert latest, f"{job_id} never ran {steps} steps: {get_job(http, job_id)}"
    return latest


def every_step_once(http: httpx.Client, job_id: str) -> int:
    got = metrics(http, job_id)
    last = got["latest_step"]
    steps = [p["step"] for p in got["metrics"]]
    assert steps == list(range(1, last + 1)), f"steps should be 1..{last} once each, got {steps}"
    return last


def instance_of(http: httpx.Client, job_id: str) -> dict:
    """The instance_launched event's metadata, once the provider has answered the launch."""
    found = wait_until(lambda: [e for e in events(http, job_id) if e["event_type"] == "instance_launched"])
    assert found, f"{job_id} launched no instance: {events(http, job_id)}"
    return found[-1]["metadata"]


def assert_terminated(stand_in: StandIn, instance_id: str) -> None:
    """The provider no longer has it: nothing of it runs, nothing of it is billed."""
    assert wait_until(lambda: instance_id not in stand_in.instances, timeout=30), (
        f"instance {instance_id} was not terminated: {stand_in.instances.get(instance_id)}"
    )


def trainer_processes(stand_in: StandIn, instance_id: str, job_id: str) -> list[int]:
    """Host pids of the job's wrapper and trainer on the instance (under its sshd)."""
    instance = stand_in.instances.get(instance_id)
    if instance is None or not instance.sshd.alive:
        return []
    found = []
    for pid in descendants(instance.sshd.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if job_id.encode() in cmdline and (
            b"run.sh" in cmdline or b"fake_trainer" in cmdline or b"trainers." in cmdline
        ):
            found.append(pid)
    return found


def sigkill(server: Server) -> None:
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    server.proc = None


# ---- a real trainer on a rented GPU ----------------------------------------------------------


@pytest.mark.timeout(900)  # real training: as long as its own wait for completed (a loaded 2-core machine)
def test_a_tiny_grpo_job_trains_on_a_runpod_instance_and_comes_back_whole(start_box, clouds, tmp_path):
    box = start_box("--gpus", "none", "--cpu-slots", "1")
    http = box.http
    rows = "".join(json.dumps({"prompt": p}) + "\n" for p in demo.PROMPTS).encode()
    dataset = ok(
        http.post("/v1/datasets", data={"name": "demo"}, files={"file": ("d.jsonl", rows, "application/jsonl")})
    )
    reward = ok(http.post("/v1/reward_functions", data={"name": "a"}, files={"file": ("a.py", demo.REWARD.encode())}))
    job = ok(
        http.post(
            "/v1/training_jobs",
            json={
                "base_model": demo.TINY_LM,
                "dataset_id": dataset["id"],
                "reward_function_id": reward["id"],
                "output_name": "tiny-remote",
                "hyperparameters": {**demo.HYPERPARAMETERS, "save_steps": 10},
                "gpu": GPU,
            },
        )
    )
    job_id = job["id"]
    launched = instance_of(http, job_id)
    assert launched["provider"] == "runpod" and launched["gpu_type"] == "A100-80GB", launched
    assert launched["price_per_hr"] == pytest.approx(1.64) and launched["region"], launched
    # Trains on the instance while we watch: the cost so far is an estimate, the job says where.
    running = wait_status(http, job_id, "running", timeout=300)
    assert running["provider"] == "runpod" and running["gpu"] == GPU, running

    done = wait_status(http, job_id, "completed", timeout=900)
    assert done["error"] is None and done["current_step"] == 30 == done["total_steps"], done
    assert done["cost_usd"] > 0 and done["duration_seconds"] > 0, done
    kinds = [e["event_type"] for e in events(http, job_id)]
    order = ["created", "submitted", "instance_launched", "instance_ready", "bootstrap_done", "running", "completed"]
    assert [k for k in kinds if k in order] == order, kinds
    assert event(http, job_id, "bootstrap_done")["metadata"]["seconds"] >= 0

    # The reward rises as on the cpu pool (tests/test_demo.py).
    got = ok(http.get(f"/v1/training_jobs/{job_id}/metrics", params={"keys": "reward"}))
    rewards = [p["values"]["reward"] for p in got["metrics"]]
    assert len(rewards) == 30 and statistics.mean(rewards[-5:]) - statistics.mean(rewards[:5]) >= 0.1, rewards
    samples = ok(http.get(f"/v1/training_jobs/{job_id}/samples", params={"limit": 1000}))["data"]
    assert samples and all(s["completion"] is not None and s["prompt"] for s in samples), samples[:2]
    checkpoints = ok(http.get(f"/v1/training_jobs/{job_id}/checkpoints"))["data"]
    assert sorted(c["step"] for c in checkpoints) == [10, 20, 30], checkpoints
    for checkpoint in checkpoints:  # fetched from the instance as they were reported
        assert checkpoint["files"] and all(f["bytes"] > 0 for f in checkpoint["files"]), checkpoint
    log = http.get(f"/v1/training_jobs/{job_id}/logs/full")
    assert log.status_code == 200 and "building the built-in model veri-box/tiny-lm" in log.text, log.text[-2000:]

    # model.tar.gz, built here from the output fetched from the instance, loads with PEFT.
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(httpx.get(done["download_url"], timeout=60).content)
    adapter = tmp_path / "adapter"
    with tarfile.open(archive) as tar:
        tar.extractall(adapter, filter="data")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.models import built_in

    base = built_in(demo.TINY_LM, tmp_path / "models")  # the same built-in model, built here
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    out = model.generate(**tokenizer("Say something:", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(tokenizer("Say something:")["input_ids"])

    assert_terminated(clouds.runpod, launched["instance_id"])


# ---- where a job goes ------------------------------------------------------------------------


def test_the_cheapest_offer_wins_and_a_capacity_error_falls_through_to_the_next(start_box, clouds):
    box = start_box(*FAKE_ARGS, providers=("runpod", "prime_intellect"))
    http = box.http
    first = create_job(http, "fake:steps=3,step_s=0.05")["id"]
    done = wait_status(http, first, "completed")
    assert done["provider"] == "prime_intellect", done  # $1.45/h against RunPod's $1.64
    assert instance_of(http, first)["price_per_hr"] == pytest.approx(1.45)

    # Prime still quotes the A100 in stock, but refuses the launch: the job goes to RunPod.
    clouds.prime.capacity_error = True
    second = create_job(http, "fake:steps=3,step_s=0.05")["id"]
    done = wait_status(http, second, "completed")
    assert done["provider"] == "runpod" and done["gpu"] == GPU, done
    fallback = event(http, second, "provider_fallback")["metadata"]
    assert (fallback["from"], fallback["to"]) == ("prime_intellect", "runpod"), fallback
    launched = event(http, second, "instance_launched")["metadata"]
    assert launched["provider"] == "runpod" and launched["price_per_hr"] == pytest.approx(1.64), launched
    assert done["cost_usd"] > 0, done
    assert not clouds.prime.running() and not clouds.runpod.running()


def test_a_lambda_job_logs_in_as_the_ssh_user_set_for_lambda(start_box, clouds):
    box = start_box(*FAKE_ARGS, "--provisioning-timeout-s", "12", providers=())
    http = box.http
    lambda_ = clouds.lambda_
    h100 = {"type": "H100-80GB", "count": 1}

    def configure(**options) -> dict:
        body = {"api_key": lambda_.api_key, "base_url": lambda_.url, **options}
        return ok(http.put("/v1/settings/providers/lambda", json=body))

    # Saved without ssh_user, the box logs in as Lambda's `ubuntu`, which this instance refuses:
    # the job fails in provisioning saying so, and the instance is terminated.
    assert configure()["ssh_user"] == "ubuntu"
    refused = create_job(http, "fake:steps=3,step_s=0.05", provider="lambda", gpu=h100)["id"]
    launched = instance_of(http, refused)
    assert (launched["provider"], launched["region"], launched["price_per_hr"]) == ("lambda", "us-east-1", 2.49)
    job = wait_status(http, refused, "failed", timeout=60)
    assert job["error"]["code"] == "provisioning_timeout", job["error"]
    assert "ubuntu@" in job["error"]["message"] and "login was refused" in job["error"]["message"], job["error"]
    assert_terminated(lambda_, launched["instance_id"])

    # With the instance's user set, the same job trains there and comes back whole.
    assert configure(ssh_user=lambda_.ssh_user)["ssh_user"] == lambda_.ssh_user
    job_id = create_job(http, "fake:steps=3,step_s=0.05,save_every=3", provider="lambda", gpu=h100)["id"]
    launched = instance_of(http, job_id)
    done = wait_status(http, job_id, "completed")
    assert done["provider"] == "lambda" and done["gpu"] == h100 and done["cost_usd"] > 0, done
    assert every_step_once(http, job_id) == 3
    assert ok(http.get(f"/v1/training_jobs/{job_id}/checkpoints"))["data"][0]["files"]
    assert ok(http.get(f"/v1/training_jobs/{job_id}/model"))["files"]
    assert_terminated(lambda_, launched["instance_id"])
    assert not lambda_.running()


# ---- stopping, losing and finding instances --------------------------------------------------


def test_cancel_stops_the_remote_trainer_and_terminates_the_instance(start_box, clouds):
    box = start_box(*FAKE_ARGS)
    http = box.http
    job_id = create_job(http, "fake:steps=100000,step_s=0.1,save_every=100000")["id"]
    wait_steps(http, job_id, 3)
    instance_id = instance_of(http, job_id)["instance_id"]
    instance = clouds.runpod.instances[instance_id]
    trainer = trainer_processes(clouds.runpod, instance_id, job_id)
    assert trainer, "the trainer should be running under the instance's sshd"

    ok(http.post(f"/v1/training_jobs/{job_id}/cancel"))
    # Watch the instance: the trainer must be gone while the machine still runs (it stopped on
    # the SIGTERM to its group, not because the instance was terminated under it).
    stopped_first = False
    deadline = time.monotonic() + 60
    while instance.sshd.alive and time.monotonic() < deadline:
        if not any(alive(pid) for pid in trainer):
            stopped_first = True
        time.sleep(0.05)
    assert stopped_first, "the trainer was still running when its instance went away"
    assert_terminated(clouds.runpod, instance_id)
    assert not instance.sshd.alive and not descendants(instance.sshd.process.pid)

    job = wait_until(lambda: (j := get_job(http, job_id))["cost_usd"] is not None and j)
    assert job["status"] == "cancelled" and job["cost_usd"] > 0, job
    # It saved on SIGTERM, and the checkpoint came home before the instance went.
    assert "stopping: SIGTERM received" in http.get(f"/v1/training_jobs/{job_id}/logs/full").text
    checkpoints = ok(http.get(f"/v1/training_jobs/{job_id}/checkpoints"))["data"]
    assert len(checkpoints) == 1 and checkpoints[0]["files"], checkpoints


def test_an_instance_that_dies_mid_run_fails_the_job_naming_the_provider_and_instance(start_box, clouds):
    box = start_box(*FAKE_ARGS, "--instance-lost-s", "10")
    http = box.http
    job_id = create_job(http, "fake:steps=100000,step_s=0.1")["id"]
    wait_steps(http, job_id, 2)
    instance_id = instance_of(http, job_id)["instance_id"]

    clouds.runpod.kill(instance_id)  # the machine dies, and RunPod says so (EXITED)
    job = wait_status(http, job_id, "failed", timeout=60)
    assert job["error"]["code"] == "provider_error", job["error"]
    assert "RunPod" in job["error"]["message"] and instance_id in job["error"]["message"], job["error"]
    assert event(http, job_id, "failed")["metadata"]["code"] == "provider_error"
    assert_terminated(clouds.runpod, instance_id)  # billing stops too
    assert wait_until(lambda: get_job(http, job_id)["cost_usd"], timeout=10), get_job(http, job_id)


def test_a_sigkilled_box_reattaches_to_the_remote_trainer_and_loses_or_repeats_no_step(start_box, clouds):
    box = start_box(*FAKE_ARGS)
    http = box.http
    job_id = create_job(http, "fake:steps=40,step_s=0.15")["id"]
    noted = wait_steps(http, job_id, 5)
    instance_id = instance_of(http, job_id)["instance_id"]
    trainer = trainer_processes(clouds.runpod, instance_id, job_id)
    assert trainer

    sigkill(box.server)
    time.sleep(1)  # the trainer goes on without the box meanwhile
    assert all(alive(pid) for pid in trainer), "a crash of the box must not stop the remote trainer"
    box.restart()
    job = get_job(http, job_id)
    assert job["status"] == "running" and job["error"] is None, job
    assert every_step_once(http, job_id) >= noted

    job = wait_status(http, job_id, "completed")
    assert job["current_step"] == 40 and every_step_once(http, job_id) == 40, job
    assert ok(http.get(f"/v1/training_jobs/{job_id}/model"))["files"]
    counts = Counter(e["event_type"] for e in events(http, job_id))
    # One instance, followed across the crash: never launched or started twice.
    for kind in ("instance_launched", "instance_ready", "bootstrap_done", "running", "completed"):
        assert counts[kind] == 1, counts
    assert job["cost_usd"] > 0, job
    assert_terminated(clouds.runpod, instance_id)


def test_instances_of_this_box_that_no_active_job_owns_are_terminated_at_start(start_box, clouds):
    box = start_box(*FAKE_ARGS)
    http = box.http
    finished = create_job(http, "fake:steps=2,step_s=0.05")["id"]
    wait_status(http, finished, "completed")
    running = create_job(http, "fake:steps=100000,step_s=0.1")["id"]
    wait_steps(http, running, 1)
    own = instance_of(http, running)["instance_id"]
    name = clouds.runpod.instances[own].name
    assert name.endswith(running), name
    prefix = name[: -len(running)]

    # Left at the provider: an instance of the finished job (its terminate lost, say) and one of
    # another user of the account, created through RunPod's own API.
    def create_pod(pod_name: str) -> str:
        r = httpx.post(
            f"{clouds.runpod.url}/v2/pods",
            headers={"Authorization": f"Bearer {clouds.runpod.api_key}"},
            json={"name": pod_name, "image": "runpod/base", "gpu": {"id": "NVIDIA A100 80GB PCIe", "count": 1}},
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    orphan = create_pod(prefix + finished)
    foreign = create_pod("someone-elses-pod")

    assert box.server.stop() in (0, -signal.SIGTERM)  # a clean stop leaves the running job running
    box.restart()
    assert_terminated(clouds.runpod, orphan)
    assert f"orphan_terminated: runpod instance {orphan}" in box.server.output()
    orphaned = event(http, finished, "orphan_terminated")["metadata"]
    assert orphaned == {"provider": "runpod", "instance_id": orphan}, orphaned
    assert foreign in clouds.runpod.instances and own in clouds.runpod.instances
    assert get_job(http, running)["status"] == "running"


# ---- secrets ---------------------------------------------------------------------------------


def test_a_provider_key_is_nowhere_but_the_database_and_the_ssh_key_is_private(start_box, clouds):
    box = start_box(*FAKE_ARGS)
    http = box.http
    job_id = create_job(http, "fake:steps=4,step_s=0.05,save_every=2")["id"]
    wait_status(http, job_id, "completed")
    # Everything a user reads of it, and the settings themselves.
    for path in ("", "/events", "/metrics", "/samples", "/checkpoints", "/model", "/logs/full"):
        assert http.get(f"/v1/training_jobs/{job_id}{path}").status_code == 200
    for path in ("/v1/settings/providers/runpod", "/v1/gpu/availability", "/v1/training_jobs"):
        assert http.get(path).status_code == 200
    assert http.get("/v1/cost/estimate", params={"gpu_type": "A100-80GB"}).status_code == 200
    assert ok(http.get("/v1/settings/providers/runpod"))["key_hint"]

    key = clouds.runpod.api_key.encode()
    assert not [i for i, body in enumerate(box.bodies) if key in body], "a response carried the provider key"
    database = {box.data_dir / n for n in ("veri-box.db", "veri-box.db-wal", "veri-box.db-shm")}
    remote = clouds.remote_dirs()
    assert remote and any((home / "veri-box" / "jobs" / job_id).is_dir() for home in remote), remote
    searched = [box.server.log_path]
    for top in (box.data_dir, *(home.parent for home in remote)):  # each instance: home, sshd files
        searched += [p for p in top.rglob("*") if p.is_file() and not p.is_symlink() and p not in database]
    assert len(searched) > 20, searched
    leaked = [p for p in searched if key in p.read_bytes()]
    assert not leaked, f"the provider key is in {leaked}"

    private = box.data_dir / "ssh" / "id_ed25519"
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert private.stat().st_mode & 0o777 == 0o600


class _RefusingWandb(http.server.BaseHTTPRequestHandler):
    """A W&B server that refuses every key, as W&B answers a revoked one (401, the key not quoted:
    wandb's own debug log keeps what the server says), and records the Authorization header each
    request came with: the key the trainer really sent."""

    seen: list[str] = []

    def _refuse(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(self.headers.get("authorization") or "")
        body = json.dumps({"errors": [{"message": "user is not logged in"}]}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


def test_the_wandb_key_reaches_the_remote_trainer_but_never_the_instances_disk(start_box, clouds):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        box = start_box("--gpus", "none", "--cpu-slots", "1", "--trainers", "grpo=tests.tracking_trainer")
        http_ = box.http
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ok(http_.put("/v1/settings/integrations/wandb", json={"api_key": WANDB_KEY, "project": "p", "base_url": url}))
        job_id = create_job(http_, "fake:steps=2")["id"]
        launched = instance_of(http_, job_id)
        done = wait_status(http_, job_id, "completed", timeout=300)
    finally:
        server.shutdown()
    assert done["error"] is None, done
    # The trainer on the instance had the key: W&B was asked with it (basic auth "api:KEY")...
    sent = {base64.b64decode(a.split()[1]).decode() for a in _RefusingWandb.seen if a.lower().startswith("basic ")}
    assert f"api:{WANDB_KEY}" in sent, (_RefusingWandb.seen, box.server.output()[-3000:])
    # ...and what W&B said back reached the job, as a local job's does.
    failed = event(http_, job_id, "wandb_failed")["metadata"]["message"]
    assert "not logged in" in failed and WANDB_KEY not in failed, failed
    # The instance is a third party's machine: the key is in none of the files the box left there.
    remote = [home for home in clouds.remote_dirs() if (home / "veri-box" / "jobs" / job_id).is_dir()]
    assert remote, clouds.remote_dirs()
    uploaded = remote[0] / "veri-box" / "jobs" / job_id
    assert json.loads((uploaded / "config.json").read_text())["wandb"]["project"] == "p"
    searched = [p for p in remote[0].parent.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(searched) > 10, searched
    leaked = [p for p in searched if WANDB_KEY.encode() in p.read_bytes()]
    assert not leaked, f"the W&B key is on the instance's disk in {leaked}"
    assert_terminated(clouds.runpod, launched["instance_id"])


# ---- asking before submitting: the SDK, and the 400s -----------------------------------------


def test_the_sdk_reads_the_cost_estimate_and_the_availability(start_box, clouds):
    from veri_sdk import Client
    from veri_sdk.client import VeriRequestError

    clouds.runpod.catalogue = [
        RunPodGpu("NVIDIA A100 80GB PCIe", 80, 1.64),
        RunPodGpu("NVIDIA H100 80GB HBM3", 80, 2.99, availability="NONE", data_centers=()),
    ]
    box = start_box(*FAKE_ARGS)
    client = Client(api_key=box.server.key, base_url=box.server.url)

    estimate = client.cost.estimate(gpu_type="A100-80GB", gpu_count=2, duration_minutes=90)
    assert estimate["provider"] == "runpod" and estimate["available"] is True, estimate
    assert estimate["price_per_hr"] == pytest.approx(3.28) and estimate["estimated_cost_usd"] == pytest.approx(4.92)
    local = client.cost.estimate(gpu_type="cpu")
    assert local["provider"] == "local" and local["estimated_cost_usd"] == 0, local

    rows = client.gpu.availability()["availability"]
    assert any(r["provider"] == "local" and r["gpu_type"] == "cpu" for r in rows), rows
    quoted = {
        (r["gpu_type"], r["status"], r["price_per_hr"])
        for r in rows
        if r["provider"] == "runpod" and r["gpu_count"] == 1
    }
    assert ("A100-80GB", "available", 1.64) in quoted and ("H100-80GB", "unavailable", 2.99) in quoted, rows
    only = client.gpu.availability(provider="runpod", gpu_type="a100-80gb")["availability"]
    assert only and {(r["provider"], r["gpu_type"]) for r in only} == {("runpod", "A100-80GB")}, only

    # Named, but this box has no key for it: the SDK gets the code.
    with pytest.raises(VeriRequestError) as raised:
        client.cost.estimate(gpu_type="A100-80GB", provider="prime_intellect")
    assert raised.value.code == "provider_not_configured", raised.value


def test_a_job_for_a_provider_without_a_key_or_a_type_in_stock_nowhere_is_a_400(start_box, clouds):
    clouds.runpod.catalogue = [
        RunPodGpu("NVIDIA A100 80GB PCIe", 80, 1.64),
        RunPodGpu("NVIDIA H100 80GB HBM3", 80, 2.99, availability="NONE", data_centers=()),
    ]
    box = start_box(*FAKE_ARGS)
    http = box.http
    dataset = upload_dataset(http)

    def submit(**fields) -> httpx.Response:
        body = {"base_model": "fake:steps=1", "dataset_id": dataset, "reward_source": REWARD_SOURCE, "output_name": "x"}
        return http.post("/v1/training_jobs", json={**body, **fields})

    r = submit(gpu=GPU, provider="lambda")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("provider_not_configured", "provider"), error
    assert "PUT /v1/settings/providers/lambda" in error["message"], error

    r = submit(gpu={"type": "H100-80GB", "count": 1})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("gpu_unavailable", "gpu.type"), error
    # What there is instead: this box's cpu pool, and the A100 RunPod has in stock.
    assert "cpu" in error["message"] and "A100-80GB x1 at runpod $1.64/h" in error["message"], error
    assert ok(http.get("/v1/training_jobs"))["data"] == [], "a refused job must not be stored"
