"""The remote executor driven as the runner drives it (start, poll, cancel, release, reattach),
against a real SQLite store, the RunPod and Prime Intellect stand-ins (tests/provider_standins.py)
whose instances are real sshd servers, and the stdlib test trainer running on the "instance".

The instance's python is made warm the way a second job on an image finds it: the venv the
box builds for its pinned requirements is already there (here, one whose python is the box's
own interpreter), so bootstrap takes the cached-venv path without a network.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path

import msgspec
import pytest
from conftest import Api
from litestar.testing import TestClient
from provider_standins import HubStandIn, PrimeStandIn, RunPodGpu, RunPodStandIn
from serving import FAKE_TRAINERS, REPO, descendants, free_port
from sshd import Sshd

from trainers.contract import read_config
from veri_box import paths, remote, ssh
from veri_box.app import Box, create_app
from veri_box.devices import build_inventory
from veri_box.providers import Providers
from veri_box.remote import RemoteExecutor
from veri_box.settings import Settings
from veri_box.store import stamp_seconds

GPU = {"type": "H100-80GB", "count": 1}


class World:
    """A box (in-process API over a real store, runner not ticking), provider stand-ins, and the
    instances' warm venv, for one test."""

    def __init__(self, tmp_path: Path, **settings_kw):
        self.tmp_path = tmp_path
        self.remote_root = str(tmp_path / "instance-root")
        self.settings = Settings(
            data_dir=tmp_path / "data",
            gpus="none",
            trainers=FAKE_TRAINERS,
            cancel_grace_s=1.0,
            **settings_kw,
        )
        self.box = Box.open(self.settings, build_inventory("none", 0))
        self.client = TestClient(create_app(self.box, run_jobs=False))
        self.client.__enter__()
        self.api = Api(self.client, self.box.store.create_api_key("t")[1], self.box)
        self.store = self.box.store
        self.stand_ins: dict[str, RunPodStandIn | PrimeStandIn] = {}
        self.executors: list[RemoteExecutor] = []
        warm_venv(self.remote_root)

    def provider(self, name: str, **kwargs):
        cls = {"runpod": RunPodStandIn, "prime_intellect": PrimeStandIn}[name]
        stand_in = cls.start(self.tmp_path / name, **kwargs)
        self.stand_ins[name] = stand_in
        self.store.put_integration(name, stand_in.api_key, stand_in.url, None)
        return stand_in

    def executor(self) -> RemoteExecutor:
        executor = RemoteExecutor(self.settings, self.store, Providers(self.store, self.settings), self.remote_root)
        self.executors.append(executor)
        return executor

    def job(self, base_model: str, providers: tuple[str, ...] | None = None) -> tuple[dict, object]:
        """A submitted job placed as the runner places a cloud job: its offers (cheapest first)
        on the row, its job directory and config.json written."""
        job = self.api.job(base_model=base_model, gpu=GPU, provider=None if providers else "runpod")
        offers = Providers(self.store, self.settings).offers(GPU["type"], GPU["count"], only=providers)
        assert offers, "the stand-ins quote no offer"
        state = {"offers": [msgspec.to_builtins(o) for o in offers]}
        self.store.update_job(job["id"], executor_state=state, devices=[], provider=offers[0].provider, gpu=GPU)
        row = self.store.get_job(job["id"])
        config = self.box.runner._write_config(row, "tests.fake_trainer", [0])
        return row, config

    def start(self, executor: RemoteExecutor, job: dict, config) -> dict:
        """executor.start as the runner calls it, and the fields it stores."""
        started = executor.start(job, config)
        assert started["executor_state"]
        self.store.update_job(job["id"], **started)
        return self.store.get_job(job["id"])

    def close(self) -> None:
        for executor in self.executors:
            for job_id in list(executor._runs):
                executor.release(self.store.get_job(job_id))
        for stand_in in self.stand_ins.values():
            stand_in.stop()
        self.client.__exit__(None, None, None)


def warm_venv(root: str) -> Path:
    """The cached venv of the box's pinned requirements, as a first job on this image leaves it;
    its python is the box's own interpreter (which has exactly those versions)."""
    pins = remote.requirements_text(remote.requirements())
    venv = Path(root) / "venvs" / remote.digest(pins)
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    # The box's venv python by its venv path (its realpath is the base interpreter, without the
    # venv's packages: huggingface_hub among them, which the instance downloads models with).
    python.write_text(f'#!/bin/sh\nexec {os.path.abspath(os.sys.executable)} "$@"\n')
    python.chmod(0o755)
    (venv / ".ready").touch()
    return venv


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO))  # the test trainer's package, uploaded like trainers/
    made: list[World] = []

    def make(**settings_kw) -> World:
        made.append(World(tmp_path, **settings_kw))
        return made[-1]

    yield make
    for w in made:
        w.close()


def wait(predicate, timeout: float = 30.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s")


def until_done(executor: RemoteExecutor, job: dict, timeout: float = 60.0) -> int | None:
    wait(lambda: not executor.poll(job)[0], timeout)
    return executor.poll(job)[1]


def events(world: World, job_id: str) -> dict[str, dict]:
    return {e["event_type"]: e["metadata"] for e in world.store.list_events(job_id, 100)}


def remote_job_dir(world: World, job_id: str) -> Path:
    return Path(world.remote_root) / "jobs" / job_id


def local_job_dir(world: World, job_id: str) -> Path:
    return paths.job_dir(world.settings.data_dir, job_id)


def trainer_processes(sshd: Sshd) -> list[str]:
    """Command lines of the test trainer's processes on the instance (seen from the host)."""
    found = []
    for pid in descendants(sshd.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "fake_trainer" in cmdline or "run.sh" in cmdline:
            found.append(cmdline)
    return found


def instance_of(world: World, job_id: str):
    row = world.store.instance_for_job(job_id)
    return row, world.stand_ins[row["provider"]].instances.get(row["provider_instance_id"])


# -- the key pair and the pinned host key ----------------------------------------------------------


def test_the_box_key_pair_is_made_once_and_readable_by_its_owner_only(tmp_path: Path):
    first = ssh.key_pair(tmp_path)
    key_file = paths.ssh_key(tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert first.public.startswith("ssh-ed25519 ")
    assert key_file.with_name("id_ed25519.pub").read_text().split()[:2] == first.public.split()[:2]
    key_file.chmod(0o644)  # loosened by a copy: tightened, and still the same key
    again = ssh.key_pair(tmp_path)
    assert again.public == first.public
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_host_key_other_than_the_pinned_one_is_refused(tmp_path: Path):
    keys = ssh.key_pair(tmp_path)
    server = Sshd.start(tmp_path / "instance")
    other = Sshd.start(tmp_path / "impostor")
    try:
        server.authorize(keys.public)
        other.authorize(keys.public)

        async def attempt(port: int, pinned: str | None):
            conn, host_key = await ssh.connect(server.host, port, server.user, keys, pinned)
            conn.close()
            return host_key

        first_contact = asyncio.run(attempt(server.port, None))
        assert first_contact == server.host_key_line
        assert asyncio.run(attempt(server.port, first_contact)) == first_contact
        with pytest.raises(ssh.HostKeyMismatch):
            asyncio.run(attempt(other.port, first_contact))  # same address and user, another machine
    finally:
        server.stop()
        other.stop()


# -- a job on an instance ------------------------------------------------------------------------------


def test_a_job_runs_on_a_rented_instance_and_its_files_are_mirrored_home(world):
    w = world()
    runpod = w.provider("runpod")
    executor = w.executor()
    job, config = w.job("fake:steps=6,step_s=0.2,save_every=2")
    job = w.start(executor, job, config)
    instance, _ = instance_of(w, job["id"])
    assert instance["price_per_hr"] == 2.99 and instance["status"] in ("launching", "booting", "ready")
    assert executor.poll(job) == (True, None)  # provisioning in the executor's own thread

    local = local_job_dir(w, job["id"])
    progress = local / "progress.jsonl"
    latencies = []
    seen = 0
    deadline = time.monotonic() + 60
    while executor.poll(job)[0] and time.monotonic() < deadline:
        # Every checkpoint line that has arrived has its folder here already.
        lines = progress.read_bytes().splitlines() if progress.exists() else []
        for line in lines[seen:]:
            record = json.loads(line)
            if record["type"] == "checkpoint":
                assert (local / record["path"] / "weights.bin").is_file(), record
            if record["type"] == "metrics":
                latencies.append(time.time() - record["time"])
        seen = len(lines)
        time.sleep(0.02)
    assert executor.poll(job) == (False, 0)

    remote_dir = remote_job_dir(w, job["id"])
    assert progress.read_bytes() == (remote_dir / "progress.jsonl").read_bytes()
    assert (local / "train.log").read_bytes() == (remote_dir / "train.log").read_bytes()
    steps = [json.loads(x)["step"] for x in progress.read_bytes().splitlines() if b'"metrics"' in x]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (local / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    assert (executor.collect(job) / "model.bin").read_bytes() == bytes(range(256)) * 4
    assert max(latencies) < 3.0, latencies  # trainer write -> local file, through the mirror

    # The trainer on the instance read config.json with the instance's paths.
    remote_config = read_config(remote_dir)
    assert remote_config.job_dir == str(remote_dir)
    assert remote_config.dataset.path.startswith(str(remote_dir / "dataset"))
    assert Path(remote_config.dataset.path).read_bytes() == Path(config.dataset.path).read_bytes()
    assert all(Path(rf.path).is_file() and rf.path.startswith(str(remote_dir)) for rf in remote_config.reward_functions)
    assert json.loads((remote_dir / "env.json").read_text())["CUDA_VISIBLE_DEVICES"] == "0"
    # Only the code the trainer needs went: the trainers package and the one test module, not
    # the rest of tests/ (its fixtures, stand-ins, other fake trainers).
    (code,) = (Path(w.remote_root) / "code").iterdir()
    uploaded = {p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert "trainers/grpo.py" in uploaded and "trainers/progress.py" in uploaded, uploaded
    assert {p for p in uploaded if not p.startswith("trainers/")} == {"tests/fake_trainer.py"}, uploaded

    instance = w.store.get_instance(instance["id"])
    seen_events = events(w, job["id"])
    launched = seen_events["instance_launched"]
    assert launched["provider"] == "runpod" and launched["price_per_hr"] == 2.99
    assert launched["instance_id"] == instance["provider_instance_id"] and launched["gpu_type"] == "H100-80GB"
    assert seen_events["bootstrap_done"]["python"] == "cached venv"
    assert {"instance_ready", "trainer_started"} <= seen_events.keys()

    pinned = w.store.get_instance(instance["id"])
    assert pinned["host_key"] == runpod.instances[instance["provider_instance_id"]].sshd.host_key_line
    assert pinned["ready_at"] and pinned["launched_at"] and not pinned["terminated_at"]

    executor.release(job)
    executor.release(job)  # safe twice
    assert runpod.running() == []
    ended = w.store.get_instance(instance["id"])
    assert ended["status"] == "terminated" and ended["terminated_at"]
    billed = stamp_seconds(ended["terminated_at"]) - stamp_seconds(ended["launched_at"])
    assert executor.cost(job, 1.0) == pytest.approx(2.99 * billed / 3600, abs=1e-6)
    assert executor.failure(job) is None

    # The provider's key went nowhere but the database.
    for root in (w.settings.data_dir, Path(w.remote_root)):
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("veri-box.db"):
                assert runpod.api_key.encode() not in path.read_bytes(), path


def test_the_upload_set_is_the_trainer_module_and_what_it_imports_of_its_package(tmp_path, monkeypatch):
    package = tmp_path / "lab"
    files = {
        "__init__.py": "",
        "unused.py": "x = 1\n",
        "notes.txt": "not code\n",
        "util.py": "import json\nfrom lab.deep import leaf\n",
        "deep/__init__.py": "",
        "deep/leaf.py": "import trainers.progress\n",
        "train/__init__.py": "",
        "train/main.py": "from ..util import helper\nfrom . import sibling\nimport lab.missing\n",
        "train/sibling.py": "from lab import util\n",
        "train/other.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = remote.code_files("lab.train.main")
    names = [name for _, name in found]
    assert [n for n in names if not n.startswith("trainers/")] == [
        "lab/__init__.py",
        "lab/deep/__init__.py",
        "lab/deep/leaf.py",
        "lab/train/__init__.py",
        "lab/train/main.py",
        "lab/train/sibling.py",
        "lab/util.py",
    ]
    assert "trainers/contract.py" in names and all(path.is_file() for path, _ in found)
    # The digest follows the content: a changed file is new code on the instance.
    before = remote.tree_digest(found)
    (package / "util.py").write_text("import json\nfrom lab.deep import leaf\nchanged = True\n")
    assert remote.tree_digest(remote.code_files("lab.train.main")) != before
    with pytest.raises(OSError, match="lab.nope"):
        remote.code_files("lab.nope")


def hub_cache(root: Path, repo_id: str, revision: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache holding `repo_id` at `revision` as huggingface_hub lays it out: the
    snapshot's files are links into the repo's blobs, refs/main names the revision."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_a_hub_model_the_instance_cannot_download_is_uploaded_into_its_cache(world, tmp_path, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    files = {"config.json": b'{"model_type": "llama"}', "weights/model.safetensors": b"w" * 5000}
    snapshot = hub_cache(tmp_path / "hf-cache", "veri-test/tiny", revision, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    w = world(hf_endpoint=f"http://127.0.0.1:{free_port()}")  # the instance cannot reach this Hub
    runpod = w.provider("runpod")
    runpod.own_home = True
    executor = w.executor()
    job, config = w.job("veri-test/tiny")
    job = w.start(executor, job, config)
    assert until_done(executor, job) == 0
    seen = events(w, job["id"])
    assert seen["model_ready"]["source"] == "uploaded" and seen["model_ready"]["seconds"] >= 0, seen

    # In the instance's own cache, as the Hub would have left it: the trainer, offline, asks for
    # the repo's main and gets the box's revision.
    (home,) = runpod.directory.glob("instance-*/home")
    cached = home / ".cache/huggingface/hub/models--veri-test--tiny"
    assert (cached / "refs" / "main").read_text() == revision
    for name, data in files.items():
        assert (cached / "snapshots" / revision / name).read_bytes() == data
    assert read_config(remote_job_dir(w, job["id"])).base_model == "veri-test/tiny"  # an id, as given
    env = json.loads((remote_job_dir(w, job["id"]) / "env.json").read_text())
    assert env["argv"] and snapshot.is_dir()


def test_a_hub_model_is_downloaded_by_the_instance_at_the_revision_the_box_has(world, tmp_path, monkeypatch):
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    files = {"config.json": b'{"model_type": "llama"}', "weights/model.safetensors": b"w" * 5000}
    hub_cache(tmp_path / "hf-cache", "veri-test/tiny", revision, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub = HubStandIn.start("veri-test/tiny", revision, files)
    try:
        w = world(hf_endpoint=hub.url)
        runpod = w.provider("runpod")
        runpod.own_home = True
        executor = w.executor()
        job, config = w.job("veri-test/tiny")
        job = w.start(executor, job, config)
        assert until_done(executor, job) == 0
    finally:
        hub.stop()
    assert events(w, job["id"])["model_ready"]["source"] == "hub"
    fetched = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {f"/veri-test/tiny/resolve/{revision}/{name}" for name in files}, hub.requests
    (home,) = runpod.directory.glob("instance-*/home")
    cached = home / ".cache/huggingface/hub/models--veri-test--tiny"
    assert (cached / "refs" / "main").read_text() == revision  # what the offline trainer asks for
    for name, data in files.items():
        assert (cached / "snapshots" / revision / name).read_bytes() == data


def test_a_model_folder_of_the_box_is_uploaded_without_what_its_links_lead_to_outside(world, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for a rented machine")
    folder = tmp_path / "my-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"x" * 100)
    (folder / "alias.bin").symlink_to(folder / "sub" / "weights.bin")  # inside: uploaded as a file
    (folder / "leak.txt").symlink_to(secret)  # outside: left out
    w = world()
    w.provider("runpod")
    executor = w.executor()
    job, config = w.job(str(folder))
    job = w.start(executor, job, config)
    assert until_done(executor, job) == 0
    assert events(w, job["id"])["model_ready"]["source"] == "uploaded"
    remote_model = Path(read_config(remote_job_dir(w, job["id"])).base_model)
    assert remote_model.name == "my-model" and remote_model.is_relative_to(w.remote_root), remote_model
    assert sorted(p.relative_to(remote_model).as_posix() for p in remote_model.rglob("*") if p.is_file()) == [
        "alias.bin",
        "config.json",
        "sub/weights.bin",
    ]
    assert (remote_model / "alias.bin").read_bytes() == b"x" * 100 and not (remote_model / "alias.bin").is_symlink()
    assert not any(b"not for a rented machine" in p.read_bytes() for p in Path(w.remote_root).rglob("*") if p.is_file())


def test_no_capacity_falls_through_to_the_next_offer(world):
    w = world()
    runpod = w.provider("runpod")
    prime = w.provider("prime_intellect")
    runpod.catalogue = [RunPodGpu("NVIDIA H100 80GB HBM3", 80, 1.99)]  # cheaper than Prime's 2.49...
    runpod.capacity_error = True  # ...but sold out when the launch comes
    executor = w.executor()
    job, config = w.job("fake:steps=2", providers=("runpod", "prime_intellect"))
    assert [o["provider"] for o in job["executor_state"]["offers"]] == ["runpod", "prime_intellect"]
    job = w.start(executor, job, config)
    assert until_done(executor, job) == 0
    row = w.store.get_job(job["id"])
    assert row["provider"] == "prime_intellect"
    fallback = events(w, job["id"])["provider_fallback"]
    assert fallback["from"] == "runpod" and fallback["to"] == "prime_intellect"
    assert "no longer any instances available" in fallback["reason"]
    assert events(w, job["id"])["instance_launched"]["provider"] == "prime_intellect"
    assert runpod.instances == {}
    executor.release(job)
    assert prime.running() == []


def test_cancel_stops_the_remote_trainer_and_release_terminates_the_instance(world):
    w = world()
    runpod = w.provider("runpod")
    executor = w.executor()
    job, config = w.job("fake:steps=1000,step_s=0.1,save_every=1000")
    job = w.start(executor, job, config)
    progress = local_job_dir(w, job["id"]) / "progress.jsonl"
    wait(lambda: progress.exists() and b'"metrics"' in progress.read_bytes())
    _, instance = instance_of(w, job["id"])
    assert trainer_processes(instance.sshd)

    assert executor.cancel(job)  # SIGTERM: the trainer saves and exits 0
    assert until_done(executor, job, timeout=20) == 0
    assert trainer_processes(instance.sshd) == []
    saved = [json.loads(x) for x in progress.read_bytes().splitlines() if b'"checkpoint"' in x]
    assert saved and (local_job_dir(w, job["id"]) / saved[-1]["path"] / "weights.bin").is_file()
    executor.release(job)
    assert runpod.running() == []


def test_a_trainer_that_ignores_sigterm_is_killed(world):
    w = world()
    runpod = w.provider("runpod")
    executor = w.executor()
    job, config = w.job("fake:steps=1000,step_s=0.1,ignore_sigterm=1,child=1")
    job = w.start(executor, job, config)
    wait(lambda: (remote_job_dir(w, job["id"]) / "grandchild.pid").exists())
    _, instance = instance_of(w, job["id"])
    assert executor.cancel(job)
    time.sleep(1.0)
    assert executor.poll(job)[0] and trainer_processes(instance.sshd)  # still running, as it chose
    assert executor.cancel(job, force=True)
    assert until_done(executor, job, timeout=20) == -9
    assert trainer_processes(instance.sshd) == []
    grandchild = int((remote_job_dir(w, job["id"]) / "grandchild.pid").read_text())
    assert not Path(f"/proc/{grandchild}").exists() or "sleep" not in Path(f"/proc/{grandchild}/cmdline").read_text()
    executor.release(job)
    assert runpod.running() == []


def test_cancel_while_provisioning_terminates_the_instance(world):
    w = world()
    runpod = w.provider("runpod", boot_polls=10_000)  # never boots
    executor = w.executor()
    job, config = w.job("fake:steps=2")
    job = w.start(executor, job, config)
    wait(lambda: runpod.instances)
    assert executor.cancel(job)
    assert until_done(executor, job, timeout=10) is None
    executor.release(job)
    assert runpod.instances == {}
    assert w.store.instance_for_job(job["id"])["terminated_at"]


def test_reattach_after_a_restart_loses_and_doubles_no_record(world):
    w = world()
    runpod = w.provider("runpod")
    first = w.executor()
    job, config = w.job("fake:steps=25,step_s=0.15,save_every=5")
    job = w.start(first, job, config)
    progress = local_job_dir(w, job["id"]) / "progress.jsonl"
    wait(lambda: progress.exists() and progress.read_bytes().count(b'"metrics"') >= 3)

    # The box dies: its executor's thread stops where it is, mid-job.
    first._loop.call_soon_threadsafe(first._loop.stop)
    time.sleep(1.0)
    behind = progress.stat().st_size
    wait(lambda: (remote_job_dir(w, job["id"]) / "progress.jsonl").stat().st_size > behind)

    second = w.executor()
    assert second.reattach(w.store.get_job(job["id"]))
    assert until_done(second, job) == 0
    remote_progress = remote_job_dir(w, job["id"]) / "progress.jsonl"
    assert progress.read_bytes() == remote_progress.read_bytes()
    steps = [json.loads(x)["step"] for x in progress.read_bytes().splitlines() if b'"metrics"' in x]
    assert steps == list(range(1, 26))
    train_log = local_job_dir(w, job["id"]) / "train.log"
    assert train_log.read_bytes() == (remote_job_dir(w, job["id"]) / "train.log").read_bytes()
    assert [e["event_type"] for e in w.store.list_events(job["id"], 100)].count("trainer_started") == 1
    second.release(job)
    assert runpod.running() == []


def test_a_changed_host_key_is_refused_on_reattach(world):
    w = world()
    w.provider("runpod")
    first = w.executor()
    job, config = w.job("fake:steps=1000,step_s=0.1")
    job = w.start(first, job, config)
    wait(lambda: "trainer" in (w.store.get_job(job["id"])["executor_state"] or {}))
    first._loop.call_soon_threadsafe(first._loop.stop)

    instance, _ = instance_of(w, job["id"])
    impostor = Sshd.start(w.tmp_path / "impostor")  # another machine's key, recorded as the pinned one
    w.store.update_instance(instance["id"], host_key=impostor.host_key_line)
    impostor.stop()
    second = w.executor()
    assert second.reattach(w.store.get_job(job["id"]))
    until_done(second, job)
    code, message = second.failure(job)
    assert code == "provider_error"
    assert "host key" in message and instance["provider_instance_id"] in message
    second.release(job)


def test_an_instance_that_dies_fails_the_job_with_provider_error(world):
    w = world()
    runpod = w.provider("runpod")
    executor = w.executor()
    job, config = w.job("fake:steps=1000,step_s=0.1")
    job = w.start(executor, job, config)
    wait(lambda: "trainer" in (w.store.get_job(job["id"])["executor_state"] or {}))
    instance, _ = instance_of(w, job["id"])
    runpod.kill(instance["provider_instance_id"])
    assert until_done(executor, job, timeout=40) is None
    code, message = executor.failure(job)
    assert code == "provider_error"
    assert "RunPod" in message and instance["provider_instance_id"] in message
    # Also after a restart of the box, before the runner recorded the failure.
    assert w.executor().failure(w.store.get_job(job["id"])) == (code, message)
    executor.release(job)
    assert runpod.instances == {}


def test_provisioning_past_its_deadline_fails_and_terminates(world):
    w = world(provisioning_timeout_s=3.0)
    runpod = w.provider("runpod", boot_polls=10_000)
    executor = w.executor()
    job, config = w.job("fake:steps=2")
    job = w.start(executor, job, config)
    assert until_done(executor, job, timeout=20) is None
    code, message = executor.failure(job)
    assert code == "provisioning_timeout" and "3 s" in message
    executor.release(job)
    assert runpod.instances == {}


def test_orphans_of_this_box_are_terminated_and_others_left_alone(world, caplog):
    w = world()
    runpod = w.provider("runpod")
    executor = w.executor()
    adapter = Providers(w.store, w.settings).adapter("runpod")
    offer = Providers(w.store, w.settings).offers(GPU["type"], 1, only=("runpod",))[0]
    key = ssh.key_pair(w.settings.data_dir).public
    ended = w.api.job(base_model="fake:steps=1", gpu=GPU, provider="runpod")
    orphan = adapter.launch(offer, executor.prefix + ended["id"], key, None)
    owned = adapter.launch(offer, executor.prefix + "job_active", key, None)
    foreign = adapter.launch(offer, "veri-box-someoneelse-job_x", key, None)
    # A handler of the test's own: earlier tests in the process may have configured logging.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("veri_box.remote")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="veri_box.remote"):
            executor.recover_orphans({"job_active"})
    finally:
        logger.removeHandler(handler)
    assert sorted(runpod.instances) == sorted([owned.instance_id, foreign.instance_id])
    logged = "\n".join(r.getMessage() for r in records)
    assert "orphan_terminated" in logged and orphan.instance_id in logged
    assert events(w, ended["id"])["orphan_terminated"] == {"provider": "runpod", "instance_id": orphan.instance_id}


# -- through the runner ------------------------------------------------------------------------------


def runner_world(world, **settings_kw) -> World:
    """A world whose runner sends cloud jobs to an executor with this test's instance root."""
    w = world(**settings_kw)
    w.provider("runpod")
    executor = w.executor()
    w.box.runner.executors.update({name: executor for name in ("runpod", "lambda", "prime_intellect")})
    return w


def tick_until(w: World, job_id: str, predicate, timeout: float = 60.0) -> dict:
    def check():
        w.box.runner.tick()
        job = w.api.get(f"/v1/training_jobs/{job_id}").json()
        return job if predicate(job) else None

    return wait(check, timeout, every=0.2)


def test_a_runpod_job_through_the_runner_completes_with_metrics_model_and_cost(world):
    w = runner_world(world)
    job = w.api.job(base_model="fake:steps=5,step_s=0.2,save_every=2", gpu=GPU, provider="runpod")
    assert job["status"] == "queued"
    done = tick_until(w, job["id"], lambda j: j["status"] in ("completed", "failed", "cancelled"))
    assert done["status"] == "completed", done
    assert done["provider"] == "runpod"
    metrics = w.api.get(f"/v1/training_jobs/{job['id']}/metrics").json()
    assert metrics, metrics
    assert paths.model_archive(w.settings.data_dir, job["id"]).is_file()
    instance = w.store.instance_for_job(job["id"])
    assert instance["terminated_at"] and w.stand_ins["runpod"].running() == []
    billed = stamp_seconds(instance["terminated_at"]) - stamp_seconds(instance["launched_at"])
    assert done["cost_usd"] == pytest.approx(2.99 * billed / 3600, abs=1e-5)
    assert {"instance_launched", "instance_ready", "bootstrap_done"} <= events(w, job["id"]).keys()


def test_a_runpod_job_whose_instance_dies_fails_with_provider_error(world):
    w = runner_world(world)
    job = w.api.job(base_model="fake:steps=1000,step_s=0.1", gpu=GPU, provider="runpod")
    tick_until(w, job["id"], lambda j: j["status"] == "running")
    instance = w.store.instance_for_job(job["id"])
    w.stand_ins["runpod"].kill(instance["provider_instance_id"])
    done = tick_until(w, job["id"], lambda j: j["status"] in ("completed", "failed", "cancelled"))
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_error", done["error"]
    assert instance["provider_instance_id"] in done["error"]["message"]
    assert w.stand_ins["runpod"].instances == {}


def test_cancelling_a_runpod_job_through_the_runner_leaves_nothing_running(world):
    w = runner_world(world)
    job = w.api.job(base_model="fake:steps=1000,step_s=0.1", gpu=GPU, provider="runpod")
    tick_until(w, job["id"], lambda j: j["status"] == "running")
    instance = w.store.instance_for_job(job["id"])
    sshd = w.stand_ins["runpod"].instances[instance["provider_instance_id"]].sshd
    assert w.api.post(f"/v1/training_jobs/{job['id']}/cancel").status_code == 200
    wait(lambda: (w.box.runner.tick(), not w.store.jobs_holding_devices())[1], 30, every=0.2)
    assert not sshd.alive and w.stand_ins["runpod"].instances == {}
    assert w.store.get_job(job["id"])["status"] == "cancelled"
