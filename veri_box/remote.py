"""Jobs on a rented GPU: the remote executor.

One job, one instance. `start` records the instance in SQLite and returns; the rest happens in
this executor's one asyncio thread, where every job is a task:

    launch      the first offer (cheapest); on no capacity the next one         instance_launched
    boot        provider status until running, then SSH (host key pinned)       instance_ready
    upload      the trainer's code and the job directory (config.json pointing at remote paths,
                dataset, reward functions, resume checkpoint), as one tar stream
    bootstrap   the instance's python if it has the training stack at the box's versions, else a
                venv built once per requirements set and kept on the instance   bootstrap_done
    start       run.sh (below), detached in its own session                      trainer_started
    follow      every MIRROR_S: progress.jsonl and train.log appended to the LOCAL job directory
                from their byte offsets (the local file sizes), each checkpoint or sample video
                fetched before the line that reports it; provider status now and then
    collect     the output directory, when the trainer exited 0

The runner then reads the local files as it does for a local trainer: there is no second path
for metrics, logs, samples or checkpoints. A box restart re-attaches from the saved state: the
instance row (id, SSH endpoint, pinned host key), the trainer's pid in executor_state, and the
local files' sizes as offsets, so no record is lost or read twice.

The instance is terminated in `release`, however the job ended; a lost instance (the provider
says terminated or error, or SSH is unreachable for --instance-lost-s) fails the job with
provider_error, and one not training within --provisioning-timeout-s with provisioning_timeout.
Provider API keys stay in this process: an instance gets the box's public SSH key and the job's
files, nothing else. The W&B key, which the trainer needs, is not in those files: the uploaded
config.json has it blank, and it reaches the trainer on the start command's stdin, into its
environment (WANDB_KEY_VAR), never onto the instance's disk or a command line there.

On the instance (ROOT is ~/veri-box unless the executor is given another):

    ROOT/code/DIGEST/trainers/...   the trainer's code (code_files), by content (a re-upload is a no-op)
    ROOT/venvs/DIGEST/              a venv for one set of pinned requirements (DIGEST.txt), .ready
    ROOT/models/                    the built-in tiny models, built by trainers on first use
    ROOT/jobs/JOB_ID/               config.json, run.sh, dataset/, reward_functions/, resume/,
                                    progress.jsonl, train.log, checkpoints/, output/, pid, exit_code
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import posixpath
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncssh
import msgspec

from trainers.contract import CONFIG_FILE, JobConfig, read_config
from trainers.progress import PROGRESS_FILE

from . import job_config, models, paths, python_source, ssh
from .inventory import CPU
from .progress import READ_PER_TICK, safe_relative_path
from .providers import TITLES, Offer, ProviderError, Providers
from .settings import Settings
from .store import Store, now, stamp_seconds

log = logging.getLogger("veri_box.remote")

MIRROR_S = 1.0  # how often the trainer's files are read; metrics reach the API within ~2 ticks
STATUS_EVERY_S = 15.0  # provider status while the trainer runs (SSH trouble asks at once)
BOOT_POLL_S = 2.0
RETRY_S = 5.0  # after a transient provider error
CALL_TIMEOUT_S = 20.0  # a runner-thread call (cancel, release) waits this long for the loop
BOOTSTRAP_TIMEOUT_S = 3600.0  # pip installing the training stack (provisioning's deadline still applies)
TERMINATE_RETRIES = 10
REMOTE_ROOT = "veri-box"  # under the instance user's home
# The instance's Hugging Face model cache, under its home: where huggingface_hub looks with HOME
# set and no HF_* variable (every command, the trainer too, runs under `env -i`).
HF_CACHE = ".cache/huggingface/hub"

# The training stack the box's trainers import, pinned on the instance at the box's own versions.
STACK = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "diffusers",
    "bitsandbytes",
    "av",
    "openreward",
)

# Files of the job directory that the trainer writes and the box mirrors: never uploaded.
TRAIN_LOG = paths.TRAIN_LOG
EXIT_CODE = "exit_code"
PID_FILE = "pid"

# -- the remote side --------------------------------------------------------------------------------

# The wrapper around the trainer, written into the remote job dir. It leads its own session and
# process group (started with setsid), so the box signals the whole group: SIGTERM asks the
# trainer to save and stop, SIGKILL ends everything. Its exit code file, written last and by
# rename, is how the box learns the trainer ended (a dead process can look alive as a zombie).
RUN_SH = """\
#!/bin/sh
# veri-box: runs this job's trainer ("$@") here and records how it ended.
echo "$$ $(cut -d' ' -f22 /proc/$$/stat)" >pid.tmp && mv pid.tmp pid
# A trap that runs a command (an empty one would be inherited by the trainer as "ignore") keeps
# this shell alive through the group's SIGTERM, so it still waits for the trainer's exit code.
trap ':' TERM
"$@" >>train.log 2>&1
echo "$?" >exit_code.tmp && mv exit_code.tmp exit_code
"""

# The variable the trainer finds the W&B key in (trainers/trackers.py reads and unsets it).
WANDB_KEY_VAR = "VERI_BOX_WANDB_API_KEY"

# $1 the job dir, $2... the trainer's command line; stdin one line, the W&B key or nothing. `cd`,
# the detached start and `echo $!` are separate lines: on one line the backgrounded subshell
# keeps the SSH channel open and $! is the subshell's pid. A job dir with a pid file has a
# trainer already (the box restarted between starting it and saving its pid): that one is
# followed, never a second one started. The key is read by the shell's builtin and exported, so
# it is in the trainer's environment only: not in a file, nor on a command line `ps` shows.
START_SH = f"""\
cd "$1" || exit 1
shift
if [ -s pid ]; then read pid started <pid; echo "veri-box-pid=$pid"; echo "veri-box-started=$started"; exit 0; fi
IFS= read -r key || true
if [ -n "$key" ]; then {WANDB_KEY_VAR}=$key; export {WANDB_KEY_VAR}; fi
unset key
setsid nohup /bin/sh run.sh "$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "veri-box-pid=$pid"
echo "veri-box-started=$(cut -d' ' -f22 /proc/$pid/stat)"
"""

# $1 the signal, $2 the trainer's pid (its group's id), $3 its start time. The group id cannot be
# reused while any member lives, so a group whose leader has exited is still the trainer's; only
# a pid that now belongs to a process started later is left alone.
SIGNAL_SH = """\
now=$(cut -d' ' -f22 "/proc/$2/stat" 2>/dev/null)
if [ -n "$now" ] && [ "$now" != "$3" ]; then exit 0; fi
kill -s "$1" -- "-$2" 2>/dev/null || true
"""

# Run by the instance's python: exit 0 if it has every package of argv[1] ({name: version}) at
# that version (a local build tag such as +cu128 aside), else 3.
CHECK_STACK_PY = """\
import json, sys
from importlib import metadata
def have(name):
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return None
sys.exit(0 if all(have(n) == v for n, v in json.loads(sys.argv[1]).items()) else 3)
"""

# $1 the instance's python, $2 the venv dir, $3 the pins as JSON, $4 CHECK_STACK_PY.
BOOTSTRAP_SH = """\
if "$1" -c "$4" "$3" 2>/dev/null; then echo "veri-box-python=$1"; echo "veri-box-how=instance"; exit 0; fi
if [ -f "$2/.ready" ]; then echo "veri-box-python=$2/bin/python"; echo "veri-box-how=cached venv"; exit 0; fi
exit 3
"""

# $1 the instance's python, $2 the venv dir, $3 its requirements file. The venv sees the
# instance's own packages, so pip adds only what the image lacks or has at other versions;
# .ready, written last, makes it the cached venv of every later job on this image.
BUILD_VENV_SH = """\
rm -rf "$2" && "$1" -m venv --system-site-packages "$2" || exit 1
"$2/bin/python" -m pip install --disable-pip-version-check --no-input -r "$3" >"$2.log" 2>&1 ||
    { tail -n 30 "$2.log" >&2; exit 1; }
touch "$2/.ready"
"""


# $1 the instance's python, $2 DOWNLOAD_PY, $3 the repo id, $4 the revision (a commit), $5 the
# cache. The instance downloads the model from the Hub at the revision the box has, then names
# that revision `main`: the trainer resolves a Hub id offline as the box's trainer does
# (trainers.models.resolve asks the cache for main), so it loads exactly the box's weights.
MODEL_SH = '"$1" -c "$2" "$3" "$4" "$5"'
DOWNLOAD_PY = """\
import pathlib, sys
from huggingface_hub import snapshot_download
repo, revision, cache = sys.argv[1:4]
path = snapshot_download(repo, revision=revision, cache_dir=cache)
ref = pathlib.Path(path).parent.parent / "refs" / "main"
ref.parent.mkdir(parents=True, exist_ok=True)
ref.write_text(revision)
print("veri-box-path=" + path)
"""


class Failed(Exception):
    """Why the executor could not run the job, or lost it: the job's error code and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def requirements() -> dict[str, str]:
    """The training stack as this box has it installed: {distribution: version}, without local
    build tags (a "+cu128" wheel is not on the package index under that name)."""
    pins = {}
    for name in STACK:
        try:
            pins[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
    return pins


def requirements_text(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in pins.items())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _package_dir(name: str, module: str | None) -> Path:
    """The folder of the top-level package `name`, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(f"package {name} (of trainer {module}) is not importable on this box")
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(package_dir: Path, name: str) -> Path | None:
    """The file of module `name` (dotted, starting with the package's own name) under its package."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts) if parts else package_dir
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _imports(path: Path, name: str) -> set[str]:
    """The absolute names a module's import statements name (relative ones resolved; each
    `from M import x` also as M.x, which is a module when x is one)."""
    tree = python_source.parse(path.read_bytes(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def code_files(module: str | None) -> list[tuple[Path, str]]:
    """(local file, its path on the instance's PYTHONPATH) for what `python -m module` needs there:
    the whole `trainers` package (the box's trainers; they also import one another by name, as
    the built-in models are), and for a trainer in another package (a custom one from
    --trainers) only its own file, the modules of that package it imports (read from its
    import statements, transitively) and their packages' __init__.py: never the rest of that
    package (for tests.fake_trainer, not the whole tests/ folder)."""
    trainers_dir = _package_dir("trainers", module)
    files = {
        path: f"trainers/{path.relative_to(trainers_dir).as_posix()}"
        for path in sorted(trainers_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }
    top = (module or "").split(".")[0]
    if top and top != "trainers":
        package_dir = _package_dir(top, module)
        if _module_file(package_dir, module) is None:
            raise OSError(f"trainer module {module} is not in {package_dir}")
        todo, seen = [module], set()
        while todo:
            name = todo.pop()
            if name in seen or name.split(".")[0] != top:
                continue
            seen.add(name)
            path = _module_file(package_dir, name)
            if path is None:
                continue  # a name imported from a module (M.x), or not a module of this package
            files[path] = f"{top}/{path.relative_to(package_dir).as_posix()}"
            parts = name.split(".")
            todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))  # its packages' __init__.py
            todo.extend(_imports(path, name))
    return sorted(files.items(), key=lambda item: item[1])


def tree_digest(files: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256()
    for path, name in files:
        h.update(f"{name}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def model_on_box(base_model: str) -> tuple[str, Path] | None:
    """Where the model a job names is on this box, when the instance needs a copy of it:
    ("hub", its snapshot in the box's Hugging Face cache) or ("local", a folder). None for the
    built-in models (the trainer builds them on the instance) and for names the box does not
    have (a custom trainer's own base_model, such as the test trainer's "fake:...")."""
    name = base_model.strip()
    if name in models.BUILT_IN:
        return None
    local = Path(name).expanduser()
    if local.is_dir():
        return "local", local
    if name.startswith(("/", "~", ".")):
        return None
    snapshot = models._snapshot(name, models.hf_cache_dir())
    return ("hub", snapshot) if snapshot else None


def folder_members(folder: Path, inside: Path, prefix: str) -> list[tuple[Path, str]]:
    """The files of `folder` as tar members under `prefix`, links resolved (a Hub snapshot's
    files are links into the repo's blobs) but only to files inside `inside`: a link leading
    elsewhere on the box is left out, never uploaded to a rented machine."""
    inside = inside.resolve()
    members = []
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            target = path.resolve()
            if not target.is_file() or not target.is_relative_to(inside):
                log.warning("not uploading %s: it leads outside %s", path, inside)
                continue
            members.append((target, f"{prefix}/{path.relative_to(folder).as_posix()}"))
    return members


def _exit_code(text: str) -> int | None:
    """The wrapper's $?: 128 + N for a trainer killed by signal N, read back as -N."""
    try:
        code = int(text.strip())
    except ValueError:
        return None
    return -(code - 128) if 128 < code < 128 + 65 else code


@dataclass
class Remote:
    """Where things are on the instance, and the environment commands run in."""

    home: str
    python: str  # the interpreter the trainer runs with (the instance's, or the cached venv's)
    root: str

    @property
    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "PATH": f"{posixpath.dirname(self.python)}:{ssh.BASE_PATH}", "LANG": "C.UTF-8"}

    def job(self, job_id: str) -> str:
        return f"{self.root}/jobs/{job_id}"

    def code(self, code_digest: str) -> str:
        return f"{self.root}/code/{code_digest}"

    def venv(self, pins_digest: str) -> str:
        return f"{self.root}/venvs/{pins_digest}"


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class _Run:
    """One job as this executor follows it. `state` is the job's executor_state, saved with
    every change that a restart needs."""

    job_id: str
    config: JobConfig
    state: dict
    stored: bool  # the runner has saved what start() returned: later saves may go in
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # a launch's result vs release
    future: concurrent.futures.Future | None = None
    conn: asyncssh.SSHClientConnection | None = None
    sftp: asyncssh.SFTPClient | None = None
    handles: dict[str, asyncssh.SFTPClientFile] = field(default_factory=dict)
    remote: Remote | None = None
    exit_code: int | None = None
    launch_done: threading.Event = field(default_factory=_set_event)  # no launch call in flight
    released: bool = False
    killed: bool = False  # SIGKILL sent: an end without an exit code is ours
    ssh_error: str | None = None  # the last failed SSH attempt, "user@host:port: why"
    model: tuple[str, Path] | None = None  # model_on_box(base_model), found at upload

    @property
    def done(self) -> bool:
        return self.finished.is_set()


class RemoteExecutor:
    def __init__(self, settings: Settings, store: Store, providers: Providers, remote_root: str | None = None):
        """`remote_root`: where on the instance the box keeps its files (default ~/veri-box)."""
        self.settings = settings
        self.store = store
        self.providers = providers
        self.remote_root = remote_root
        self.data_dir = settings.data_dir
        self._runs: dict[str, _Run] = {}
        self._failures: dict[str, tuple[str, str]] = {}  # kept after release: the runner asks then
        self._keys: ssh.KeyPair | None = None
        self._pins = requirements()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="remote-executor", daemon=True).start()

    # -- the executor interface ------------------------------------------------------------------

    @property
    def keys(self) -> ssh.KeyPair:
        if self._keys is None:
            self._keys = ssh.key_pair(self.data_dir)
        return self._keys

    @property
    def prefix(self) -> str:
        """The start of every instance name this box gives: its own id, so orphan cleanup never
        touches instances of another box on the same account."""
        return f"veri-box-{self.store.box_id()}-"

    def start(self, job: dict, config: JobConfig) -> dict:
        offers = (job.get("executor_state") or {}).get("offers") or []
        if not offers:
            raise OSError("no cloud offer was placed with the job")
        self.keys  # made now, on first use, so a key problem fails the start, not a task later
        instance = self._new_instance(job["id"], offers[0])
        state = {"offers": offers, "offer": 0, "instance": instance["id"], "since": now()}
        run = _Run(job["id"], config, state, stored=False)
        self._follow(run)
        return {"executor_state": state}

    def poll(self, job: dict) -> tuple[bool, int | None]:
        run = self._runs.get(job["id"])
        if run is None:
            return False, None
        return (True, None) if not run.done else (False, run.exit_code)

    def read_progress(self, job: dict, offset: int, limit: int) -> bytes:
        try:
            with paths.progress_file(self.data_dir, job["id"]).open("rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""

    def cancel(self, job: dict, force: bool = False) -> bool:
        """SIGTERM (or SIGKILL) to the trainer's process group on the instance; before the trainer
        started, the provisioning is abandoned (release then terminates the instance)."""
        run = self._runs.get(job["id"])
        if run is None or run.done:
            return False
        if "trainer" not in run.state:
            run.future.cancel()
            return True
        run.killed = run.killed or force
        try:
            return self._call(self._signal(run, "KILL" if force else "TERM"))
        except Exception as err:  # unreachable now: the instance is terminated at release anyway
            log.warning("%s: could not signal the trainer: %s", job["id"], err)
            return False

    def collect(self, job: dict) -> Path:
        return paths.output_dir(self.data_dir, job["id"])

    def reattach(self, job: dict) -> bool:
        state = job.get("executor_state") or {}
        instance = self.store.get_instance(state["instance"]) if state.get("instance") else None
        if instance is None:
            return False  # the box stopped inside start(): nothing was launched
        try:
            config = read_config(paths.job_dir(self.data_dir, job["id"]))
        except (OSError, ValueError) as err:
            log.warning("%s: cannot re-attach, config.json unreadable: %s", job["id"], err)
            return False
        run = _Run(job["id"], config, dict(state), stored=True)
        if state.get("failure"):
            self._failures[job["id"]] = tuple(state["failure"])  # type: ignore[assignment]
            self._runs[job["id"]] = run
            run.finished.set()
        elif instance["terminated_at"]:
            return False
        else:
            self._follow(run)
        return True

    def release(self, job: dict) -> None:
        """The task stops and the instance is terminated (its end time recorded for cost). Safe
        twice; a provider that fails to terminate is asked again in the background."""
        run = self._runs.pop(job["id"], None)
        if run is not None:
            with run.lock:
                run.released = True
            if run.future is not None and not run.future.done():
                run.future.cancel()
            run.finished.wait(CALL_TIMEOUT_S)
            # A launch the provider is still answering (its thread outlives the cancelled task):
            # its instance id is needed to terminate it.
            run.launch_done.wait(CALL_TIMEOUT_S)
        instance = self.store.instance_for_job(job["id"])
        if instance is None or instance["terminated_at"]:
            return
        if not instance["provider_instance_id"]:  # never launched (or its launch is being answered:
            self.store.update_instance(instance["id"], status="terminated", terminated_at=now())
            return  # _launch_now terminates that one itself, as the run is released)
        try:
            self._terminate(instance)
        except ProviderError as err:
            log.error(
                "%s: terminating %s instance %s failed (%s); retrying",
                job["id"],
                instance["provider"],
                instance["provider_instance_id"],
                err,
            )
            asyncio.run_coroutine_threadsafe(self._terminate_later(instance), self._loop)

    def failure(self, job: dict) -> tuple[str, str] | None:
        if job["id"] in self._failures:
            return self._failures[job["id"]]
        saved = (job.get("executor_state") or {}).get("failure")
        return tuple(saved) if saved else None  # type: ignore[return-value]

    def cost(self, job: dict, seconds: float) -> float | None:
        """Price per hour at launch x (terminated - launched): what the provider bills, whatever
        the trainer's own wall time. An instance never launched cost nothing."""
        instance = self.store.instance_for_job(job["id"])
        if instance is None:
            return None
        if not instance["launched_at"] or instance["price_per_hr"] is None:
            return 0.0
        end = stamp_seconds(instance["terminated_at"] or now())
        hours = max(end - stamp_seconds(instance["launched_at"]), 0.0) / 3600
        return round(instance["price_per_hr"] * hours, 6)

    def recover_orphans(self, active_job_ids: set[str]) -> None:
        """Terminate every instance named with this box's prefix that no active job owns, at every
        configured provider, and every instance row still open for a job that has ended."""
        prefix = self.prefix
        open_rows = {(r["provider"], r["provider_instance_id"]): r for r in self.store.open_instances()}
        for name in self.providers.configured():
            try:
                adapter = self.providers.adapter(name)
                listed = adapter.list_instances(prefix)
            except ProviderError as err:
                log.warning("orphan check at %s skipped: %s", name, err)
                continue
            for instance_id, instance_name, state in listed:
                job_id = instance_name[len(prefix) :]
                row = open_rows.pop((name, instance_id), None)
                if state == "terminated" or job_id in active_job_ids:
                    continue
                self._terminate_orphan(adapter, name, instance_id, job_id, row)
        for (name, instance_id), row in open_rows.items():
            if row["job_id"] in active_job_ids or not instance_id:
                continue
            try:
                self._terminate_orphan(self.providers.adapter(name), name, instance_id, row["job_id"], row)
            except ProviderError as err:
                log.warning("orphan %s instance %s not terminated: %s", name, instance_id, err)

    # -- runner-thread helpers -------------------------------------------------------------------

    def _call(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)

    def _follow(self, run: _Run) -> None:
        self._runs[run.job_id] = run
        run.future = asyncio.run_coroutine_threadsafe(self._lifecycle(run), self._loop)

    def _new_instance(self, job_id: str, offer: dict) -> dict:
        """The instance's row, written before any provider is asked, so a crash mid-launch still
        leaves a record to clean up and bill."""
        return self.store.insert_instance(
            {
                "provider": offer["provider"],
                "name": self.prefix + job_id,
                "job_id": job_id,
                "gpu_type": offer["gpu_type"],
                "gpu_count": offer["gpu_count"],
                "region": offer.get("region"),
                "price_per_hr": offer.get("price_per_hr"),
                "status": "launching",
            }
        )

    def _terminate(self, instance: dict) -> None:
        self.providers.adapter(instance["provider"]).terminate(instance["provider_instance_id"])
        self.store.update_instance(instance["id"], status="terminated", terminated_at=now())
        log.info(
            "terminated %s instance %s of %s",
            instance["provider"],
            instance["provider_instance_id"],
            instance["job_id"],
        )

    async def _terminate_later(self, instance: dict) -> None:
        for attempt in range(TERMINATE_RETRIES):
            await asyncio.sleep(min(30.0, RETRY_S * 2**attempt))
            try:
                await asyncio.to_thread(self._terminate, instance)
                return
            except ProviderError as err:
                log.error("terminating %s instance %s: %s", instance["provider"], instance["provider_instance_id"], err)
        log.error(
            "gave up terminating %s instance %s: the next start of the box tries again",
            instance["provider"],
            instance["provider_instance_id"],
        )

    def _terminate_orphan(self, adapter, provider: str, instance_id: str, job_id: str, row: dict | None) -> None:
        adapter.terminate(instance_id)
        if row is not None:
            self.store.update_instance(row["id"], status="terminated", terminated_at=now())
        log.warning(
            "orphan_terminated: %s instance %s (job %s) had no active job on this box", provider, instance_id, job_id
        )
        if self.store.get_job(job_id):
            self.store.add_event(job_id, "orphan_terminated", {"provider": provider, "instance_id": instance_id})

    # -- the job's task ----------------------------------------------------------------------------

    async def _lifecycle(self, run: _Run) -> None:
        try:
            if "trainer" not in run.state:
                await self._provision_within_deadline(run)
            await self._follow_trainer(run)
            if run.exit_code == 0:
                await self._collect_output(run)
        except Failed as failed:
            log.warning("%s: %s: %s", run.job_id, failed.code, failed.message)
            self._failures[run.job_id] = (failed.code, failed.message)
            run.state["failure"] = [failed.code, failed.message]
            await self._save(run)
        except asyncio.CancelledError:
            log.info("%s: stopped following (cancelled or released)", run.job_id)
        except Exception as err:  # a bug here must still end the job, with what happened
            log.exception("%s: the remote executor failed", run.job_id)
            self._failures[run.job_id] = ("provider_error", f"The remote executor failed: {type(err).__name__}: {err}")
        finally:
            await self._disconnect(run)
            run.finished.set()

    async def _save(self, run: _Run) -> None:
        """executor_state to the job row. The first save waits (briefly) until the runner has
        stored what start() returned, which would otherwise overwrite it."""
        deadline = time.monotonic() + 30
        while not run.stored and time.monotonic() < deadline:
            row = self.store.get_job(run.job_id) or {}
            run.stored = (row.get("executor_state") or {}).get("instance") is not None
            if not run.stored:
                await asyncio.sleep(0.05)
        self.store.update_job(run.job_id, executor_state=run.state)

    async def _provision_within_deadline(self, run: _Run) -> None:
        limit = self.settings.provisioning_timeout_s
        left = limit - (time.time() - stamp_seconds(run.state["since"]))
        deadline = asyncio.timeout(max(left, 0.0))
        try:
            async with deadline:
                await self._provision(run)
        except TimeoutError:
            if not deadline.expired():
                raise
            instance = self.store.get_instance(run.state["instance"]) or {}
            where = self._where(instance)
            # A login refused for the whole deadline is most often the wrong SSH user (Lambda's
            # ssh_user setting) or an image without sshd: say what SSH last answered.
            last = f" The last SSH attempt, {run.ssh_error}." if run.ssh_error and not instance.get("ready_at") else ""
            raise Failed(
                "provisioning_timeout",
                f"{where} was not training within {limit:g} s of launch (--provisioning-timeout-s); "
                f"it was terminated.{last}",
            ) from None

    async def _provision(self, run: _Run) -> None:
        instance = await self._launched(run)
        await self._connect(run, instance, deadline=None)
        ready = time.monotonic()
        facts = await ssh.login_facts(run.conn)
        if not facts.get("home") or not facts.get("python"):
            raise Failed("bootstrap_failed", f"{self._where(instance)} has no python3 (or python) on its PATH.")
        root = self.remote_root or f"{facts['home']}/{REMOTE_ROOT}"
        remote = Remote(facts["home"], facts["python"], root)
        code_digest = await self._upload(run, remote)
        started = time.monotonic()
        remote.python, how = await self._bootstrap(run, remote, instance)
        self.store.add_event(
            run.job_id, "bootstrap_done", {"seconds": round(time.monotonic() - started, 2), "python": how}
        )
        await self._provide_model(run, remote, instance)
        pid, pid_started = await self._start_trainer(run, remote, code_digest)
        run.remote = remote
        run.state["trainer"] = {
            "pid": pid,
            "started": pid_started,
            "home": remote.home,
            "python": remote.python,
            "root": remote.root,
        }
        await self._save(run)
        seconds = round(time.monotonic() - ready, 2)
        self.store.add_event(run.job_id, "trainer_started", {"pid": pid, "seconds_since_ready": seconds})
        log.info(
            "%s: trainer started on %s (pid %s), %.2f s after the instance was ready",
            run.job_id,
            self._where(instance),
            pid,
            seconds,
        )

    # -- launch ------------------------------------------------------------------------------------

    async def _launched(self, run: _Run) -> dict:
        """The job's instance once the provider has answered its launch: launched now (falling
        through the offers on no capacity), or before a restart of the box."""
        while True:
            instance = self.store.get_instance(run.state["instance"])
            if instance["provider_instance_id"]:
                return instance
            offer = msgspec.convert(run.state["offers"][run.state["offer"]], Offer)
            try:
                adapter = self.providers.adapter(offer.provider)
                run.launch_done.clear()
                await asyncio.to_thread(self._launch_now, run, instance, offer, adapter)
            except ProviderError as err:
                if err.kind == "no_capacity":
                    await self._next_offer(run, instance, offer, err)
                elif err.kind in ("rate_limited", "transient"):
                    log.warning("%s: launch at %s: %s; trying again", run.job_id, offer.provider, err)
                    await asyncio.sleep(err.retry_after_s or RETRY_S)
                else:
                    self.store.update_instance(instance["id"], status="failed", terminated_at=now())
                    raise Failed("provider_error", f"Launching {offer.gpu_count}x {offer.gpu_type} failed: {err}")

    def _launch_now(self, run: _Run, instance: dict, offer: Offer, adapter) -> None:
        """Launch (in a worker thread), unless an instance of that name exists already (a launch
        whose answer was lost to a timeout or a restart of the box): that one is adopted."""
        name = instance["name"]
        try:
            found = [i for i, n, state in adapter.list_instances(name) if n == name and state != "terminated"]
            if found:
                instance_id, region, price = found[0], offer.region, offer.price_per_hr
            else:
                launched = adapter.launch(offer, name, self.keys.public, self.providers.image(offer.provider))
                instance_id, region, price = launched.instance_id, launched.region, launched.price_per_hr
            with run.lock:
                self.store.update_instance(
                    instance["id"],
                    provider_instance_id=instance_id,
                    launched_at=now(),
                    status="booting",
                    region=region,
                    price_per_hr=price,
                )
                released = run.released
        finally:
            run.launch_done.set()
        if released:  # cancelled while the provider answered: nobody else will terminate it
            self._terminate(self.store.get_instance(instance["id"]))
            return
        self.store.add_event(
            run.job_id,
            "instance_launched",
            {
                "provider": offer.provider,
                "instance_id": instance_id,
                "gpu_type": offer.gpu_type,
                "gpu_count": offer.gpu_count,
                "region": region,
                "price_per_hr": price,
            },
        )

    async def _next_offer(self, run: _Run, instance: dict, offer: Offer, err: ProviderError) -> None:
        self.store.update_instance(instance["id"], status="failed", terminated_at=now())
        following = run.state["offer"] + 1
        if following >= len(run.state["offers"]):
            tried = ", ".join(f"{o['provider']} ({o['region']})" for o in run.state["offers"])
            raise Failed(
                "gpu_unavailable",
                f"No provider had {offer.gpu_count}x {offer.gpu_type} to rent when the job was launched; "
                f"tried {tried}. The last said: {err.message}",
            )
        nxt = run.state["offers"][following]
        fresh = self._new_instance(run.job_id, nxt)
        run.state.update(offer=following, instance=fresh["id"])
        await self._save(run)
        self.store.update_job(
            run.job_id, provider=nxt["provider"], gpu={"type": nxt["gpu_type"], "count": nxt["gpu_count"]}
        )
        self.store.add_event(
            run.job_id,
            "provider_fallback",
            {
                "from": offer.provider,
                "to": nxt["provider"],
                "region": nxt["region"],
                "price_per_hr": nxt["price_per_hr"],
                "reason": err.message,
            },
        )
        log.info("%s: %s has no capacity (%s); trying %s", run.job_id, offer.provider, err.message, nxt["provider"])

    # -- SSH ---------------------------------------------------------------------------------------

    def _where(self, instance: dict) -> str:
        title = TITLES.get(instance.get("provider"), instance.get("provider") or "the provider")
        return f"{title} instance {instance.get('provider_instance_id') or instance.get('name')}"

    async def _connect(self, run: _Run, instance: dict, deadline: float | None) -> None:
        """Wait until the provider says running and SSH answers with the pinned host key (pinned
        now on first contact). `deadline` (monotonic): give up then, the instance lost; None while
        provisioning, whose own deadline applies. The provider saying terminated or error is lost
        at once."""
        adapter = self.providers.adapter(instance["provider"])
        where = self._where(instance)
        while True:
            try:
                status = await asyncio.to_thread(adapter.status, instance["provider_instance_id"])
            except ProviderError as err:
                log.warning("%s: status of %s: %s", run.job_id, where, err)
                status = None
            if status is not None and status.state in ("terminated", "error"):
                self.store.update_instance(instance["id"], status="failed")
                said = f": {status.message}" if status.message else ""
                raise Failed("provider_error", f"{where} is {status.state} at the provider{said}.")
            if status is not None and status.state == "running" and status.ssh_host:
                port, user = status.ssh_port or 22, status.ssh_user or "root"
                try:
                    conn, host_key = await ssh.connect(status.ssh_host, port, user, self.keys, instance["host_key"])
                except ssh.HostKeyMismatch as err:
                    raise Failed("provider_error", f"{where}: {err}; the box refuses to connect.") from None
                except ssh.CONNECTION_ERRORS as err:
                    log.debug("%s: SSH to %s not yet: %s", run.job_id, where, err)
                    run.ssh_error = f"{user}@{status.ssh_host}:{port}: {ssh.describe(err)}"
                else:
                    fields: dict[str, Any] = {"ssh_host": status.ssh_host, "ssh_port": port, "ssh_user": user}
                    if not instance["host_key"]:
                        fields["host_key"] = host_key
                    if not instance["ready_at"]:
                        fields.update(ready_at=now(), status="ready")
                    self.store.update_instance(instance["id"], **fields)
                    if not instance["ready_at"]:
                        self.store.add_event(
                            run.job_id, "instance_ready", {"instance_id": instance["provider_instance_id"]}
                        )
                    instance.update(fields)
                    run.conn, run.sftp, run.handles = conn, await conn.start_sftp_client(), {}
                    return
            if deadline is not None and time.monotonic() > deadline:
                lost = self.settings.instance_lost_s
                raise Failed(
                    "provider_error", f"{where} could not be reached over SSH for {lost:g} s (--instance-lost-s)."
                )
            await asyncio.sleep(BOOT_POLL_S)

    async def _disconnect(self, run: _Run) -> None:
        conn, run.conn, run.sftp, run.handles = run.conn, None, None, {}
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (TimeoutError, *ssh.CONNECTION_ERRORS):
                pass

    # -- upload, bootstrap, start ------------------------------------------------------------------

    async def _upload(self, run: _Run, remote: Remote) -> str:
        """The trainer's packages, the pinned requirements and the job directory, in one stream."""
        config = run.config
        run.model = await asyncio.to_thread(model_on_box, config.base_model)
        files = await asyncio.to_thread(code_files, config.trainer)
        code_digest = await asyncio.to_thread(tree_digest, files)
        pins = requirements_text(self._pins)
        job_dir = Path(config.job_dir)
        remote_job = remote.job(run.job_id)
        relative = f"jobs/{run.job_id}"
        members: list[tuple[Path | bytes, str]] = [(path, f"code/{code_digest}/{name}") for path, name in files]
        members.append((pins.encode(), f"venvs/{digest(pins)}.txt"))
        members.append(
            (
                json.dumps(self._remote_config(config, remote, run.model).to_dict(), indent=2).encode(),
                f"{relative}/{CONFIG_FILE}",
            )
        )
        members.append((RUN_SH.encode(), f"{relative}/run.sh"))
        for name in (paths.JOB_REWARD_FUNCTIONS_DIR, job_config.RESUME_DIR):
            if (job_dir / name).exists():
                members.append((job_dir / name, f"{relative}/{name}"))
        dataset = Path(config.dataset.path)
        members.append((dataset, f"{relative}/dataset/{dataset.name}"))
        await ssh.put_tree(run.conn, remote.env, members, remote.root)
        log.info("%s: uploaded code %s and the job to %s", run.job_id, code_digest, remote_job)
        return code_digest

    def _remote_config(self, config: JobConfig, remote: Remote, model: tuple[str, Path] | None = None) -> JobConfig:
        """config.json as the trainer on the instance reads it: every path under the remote job
        dir (the job's own files keep their places relative to it), a model folder of this box at
        its copy on the instance (a Hub id stays as it is: the instance has it cached), and the
        W&B key blank: the instance is a third party's disk (the key goes on stdin, START_SH)."""
        job = remote.job(config.job_id)
        base_model = config.base_model
        if model is not None and model[0] == "local":
            base_model = self._local_model(remote, model[1])

        def moved(local: str) -> str:
            return f"{job}/{Path(local).relative_to(config.job_dir).as_posix()}"

        return dataclasses.replace(
            config,
            base_model=base_model,
            job_dir=job,
            output_dir=f"{job}/{paths.OUTPUT_DIR}",
            checkpoints_dir=f"{job}/{paths.CHECKPOINTS_DIR}",
            models_dir=f"{remote.root}/models",
            dataset=dataclasses.replace(config.dataset, path=f"{job}/dataset/{Path(config.dataset.path).name}"),
            reward_functions=[dataclasses.replace(rf, path=moved(rf.path)) for rf in config.reward_functions],
            resume_from=moved(config.resume_from) if config.resume_from else None,
            wandb=dataclasses.replace(config.wandb, api_key="") if config.wandb else None,
        )

    def _local_model(self, remote: Remote, folder: Path) -> str:
        return f"{remote.root}/models/local/{digest(str(folder.resolve()))}/{folder.name}"

    async def _provide_model(self, run: _Run, remote: Remote, instance: dict) -> None:
        """Put the job's model on the instance, unless the trainer builds it there (the built-in
        ones). A Hub id: the instance downloads it from the Hub (--hf-endpoint) at the revision
        the box has; if it cannot (no internet, a gated or private repo: the box sends no Hub
        token to a rented machine), the box uploads its own copy into the instance's cache. A
        folder of this box: uploaded. Event model_ready: {source, seconds}."""
        if run.model is None:
            return
        kind, folder = run.model
        started = time.monotonic()
        where = self._where(instance)
        cache = f"{remote.home}/{HF_CACHE}"
        if kind == "hub":
            revision = folder.name
            env = {**remote.env, "HF_ENDPOINT": self.settings.hf_endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
            result = await ssh.run(
                run.conn,
                MODEL_SH,
                env,
                remote.python,
                DOWNLOAD_PY,
                run.config.base_model,
                revision,
                cache,
                timeout=BOOTSTRAP_TIMEOUT_S,
            )
            if result.exit_status == 0 and ssh.marked(result.stdout).get("path"):
                source = "hub"
            else:
                why = ssh.output_tail(result.stderr).splitlines()[-1:] or [f"exit status {result.exit_status}"]
                log.warning(
                    "%s: %s could not download %s from %s (%s); uploading the box's copy",
                    run.job_id,
                    where,
                    run.config.base_model,
                    self.settings.hf_endpoint,
                    why[0],
                )
                repo = folder.parent.parent  # models--ORG--NAME
                members = folder_members(folder, repo, f"{repo.name}/snapshots/{revision}")
                members.append((revision.encode(), f"{repo.name}/refs/main"))
                listing = repo / "trees" / f"{revision}.json"  # huggingface_hub's check that a snapshot is whole
                if listing.is_file():
                    members.append((listing, f"{repo.name}/trees/{listing.name}"))
                await ssh.put_tree(run.conn, remote.env, members, cache)
                source = "uploaded"
        else:
            target = self._local_model(remote, folder)
            members = folder_members(folder, folder, posixpath.basename(target))
            await ssh.put_tree(run.conn, remote.env, members, posixpath.dirname(target))
            source = "uploaded"
        seconds = round(time.monotonic() - started, 2)
        self.store.add_event(run.job_id, "model_ready", {"source": source, "seconds": seconds})
        log.info("%s: model %s on %s (%s, %.1f s)", run.job_id, run.config.base_model, where, source, seconds)

    async def _bootstrap(self, run: _Run, remote: Remote, instance: dict) -> tuple[str, str]:
        """(python, how): the instance's own python if it has the box's training stack, else the
        cached venv for these pins, built now if this image has none yet."""
        pins = requirements_text(self._pins)
        venv = remote.venv(digest(pins))
        result = await ssh.run(
            run.conn, BOOTSTRAP_SH, remote.env, remote.python, venv, json.dumps(self._pins), CHECK_STACK_PY
        )
        found = ssh.marked(result.stdout)
        if result.exit_status == 0 and found.get("python"):
            return found["python"], found["how"]
        if result.exit_status != 3:
            raise Failed(
                "bootstrap_failed",
                f"Checking python on {self._where(instance)} failed: {ssh.output_tail(result.stderr)}",
            )
        log.info("%s: building the training venv on %s (%s)", run.job_id, self._where(instance), ", ".join(self._pins))
        built = await ssh.run(
            run.conn, BUILD_VENV_SH, remote.env, remote.python, venv, f"{venv}.txt", timeout=BOOTSTRAP_TIMEOUT_S
        )
        if built.exit_status != 0:
            raise Failed(
                "bootstrap_failed",
                f"Installing the training stack on {self._where(instance)} failed:\n{ssh.output_tail(built.stderr)}",
            )
        return f"{venv}/bin/python", "new venv"

    async def _start_trainer(self, run: _Run, remote: Remote, code_digest: str) -> tuple[int, str]:
        config = run.config
        job = remote.job(run.job_id)
        argv = [remote.python, "-m", config.trainer or "", job]
        if config.devices.type != CPU and config.devices.count > 1:
            launch = [
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                str(config.devices.count),
                "--num_machines",
                "1",
            ]
            argv = [remote.python, *launch, "-m", config.trainer or "", job]
        env = {
            **remote.env,
            "PYTHONUNBUFFERED": "1",
            # As on the box: the trainer itself never downloads. The model is on the instance
            # already (_provide_model), so a missing one fails at once with model_not_found
            # instead of a download in the middle of a paid, provisioned run.
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": remote.code(code_digest),
            "CUDA_VISIBLE_DEVICES": ""
            if config.devices.type == CPU
            else ",".join(map(str, range(config.devices.count))),
        }
        if config.devices.type == CPU:
            env["OMP_WAIT_POLICY"] = "PASSIVE"  # see executors.trainer_command
        key = config.wandb.api_key if config.wandb else ""
        result = await ssh.run(run.conn, START_SH, env, job, *argv, timeout=60, input=f"{key}\n".encode())
        found = ssh.marked(result.stdout)
        if result.exit_status != 0 or not found.get("pid", "").isdigit():
            raise Failed(
                "bootstrap_failed", f"Starting the trainer failed: {ssh.output_tail(result.stderr) or result.stdout}"
            )
        return int(found["pid"]), found.get("started", "")

    # -- follow ------------------------------------------------------------------------------------

    async def _follow_trainer(self, run: _Run) -> None:
        """Mirror the trainer's files until it has ended and they are complete here. SSH trouble:
        reconnect, and lose the instance after --instance-lost-s without an answer."""
        trainer = run.state["trainer"]
        run.remote = Remote(trainer["home"], trainer["python"], trainer["root"])
        instance = self.store.get_instance(run.state["instance"])
        next_status = 0.0
        while True:
            try:
                if run.conn is None:
                    await self._connect(run, instance, deadline=time.monotonic() + self.settings.instance_lost_s)
                if time.monotonic() >= next_status:
                    await self._check_provider(run, instance)
                    next_status = time.monotonic() + STATUS_EVERY_S
                ended = await self._ended(run)  # before reading: all it wrote is in the files by then
                while await self._mirror(run):
                    pass
                if ended:
                    return
            except ssh.CONNECTION_ERRORS as err:
                log.warning("%s: lost SSH to %s: %s", run.job_id, self._where(instance), err)
                await self._disconnect(run)
                next_status = 0.0
                continue
            await asyncio.sleep(MIRROR_S)

    async def _check_provider(self, run: _Run, instance: dict) -> None:
        try:
            status = await asyncio.to_thread(
                self.providers.adapter(instance["provider"]).status, instance["provider_instance_id"]
            )
        except ProviderError as err:
            log.warning("%s: status of %s: %s", run.job_id, self._where(instance), err)
            return
        if status.state in ("terminated", "error"):
            self.store.update_instance(instance["id"], status="failed")
            said = f": {status.message}" if status.message else ""
            raise Failed("provider_error", f"{self._where(instance)} is {status.state} at the provider{said}.")

    async def _ended(self, run: _Run) -> bool:
        """Whether the trainer has ended (setting run.exit_code when the wrapper recorded one)."""
        trainer = run.state["trainer"]
        job = run.remote.job(run.job_id)
        stat = await self._read_whole(run, f"/proc/{trainer['pid']}/stat")
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and (not trainer["started"] or fields[19] == trainer["started"]):
                return False
        code = await self._read_whole(run, f"{job}/{EXIT_CODE}")
        run.exit_code = _exit_code(code) if code else (-9 if run.killed else None)
        return True

    async def _read_whole(self, run: _Run, path: str) -> str | None:
        try:
            async with run.sftp.open(path, "rb") as fh:
                return (await fh.read(65536, 0)).decode(errors="replace")
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _read_from(self, run: _Run, name: str, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of the remote job file `name` from `offset`, through a handle kept
        open on the job's one SFTP session (b"" while the file does not exist)."""
        handle = run.handles.get(name)
        if handle is None:
            try:
                handle = await run.sftp.open(f"{run.remote.job(run.job_id)}/{name}", "rb")
            except asyncssh.SFTPNoSuchFile:
                return b""
            run.handles[name] = handle
        return await handle.read(limit, offset)

    async def _mirror(self, run: _Run) -> bool:
        """One read of each file from where the local copy ends; True if anything new came."""
        log_file = paths.train_log(self.data_dir, run.job_id)
        data = await self._read_from(run, TRAIN_LOG, _size(log_file), READ_PER_TICK)
        if data:
            with log_file.open("ab") as fh:
                fh.write(data)
        return await self._mirror_progress(run) or len(data) == READ_PER_TICK

    async def _mirror_progress(self, run: _Run) -> bool:
        """Whole lines only (a last line without its newline is being written), each after the
        files it reports (a checkpoint folder, a sample's video) are here: the runner, reading
        the line, finds them."""
        local = paths.progress_file(self.data_dir, run.job_id)
        data = await self._read_from(run, PROGRESS_FILE, _size(local), READ_PER_TICK)
        end = data.rfind(b"\n")
        if end < 0 and len(data) < READ_PER_TICK:
            return False
        # A window without a newline is a record longer than the runner reads: passed on whole,
        # the runner skips it (progress.parse).
        complete = data if end < 0 else data[: end + 1]
        pending: list[bytes] = []
        with local.open("ab") as fh:
            for line in complete.splitlines(keepends=True):
                wanted = _reported_files(line)
                if wanted:
                    fh.write(b"".join(pending))
                    fh.flush()
                    pending = []
                    for relative in wanted:
                        await self._fetch(run, relative)
                pending.append(line)
            fh.write(b"".join(pending))
        return True

    async def _fetch(self, run: _Run, relative: str) -> None:
        remote = f"{run.remote.job(run.job_id)}/{relative}"
        try:
            await ssh.get_tree(run.sftp, remote, paths.job_dir(self.data_dir, run.job_id) / relative)
        except asyncssh.SFTPNoSuchFile:  # gone already (a trainer keeping its last N checkpoints)
            log.warning("%s: %s was reported but is no longer on the instance", run.job_id, relative)

    async def _collect_output(self, run: _Run) -> None:
        instance = self.store.get_instance(run.state["instance"])
        for _ in range(3):
            try:
                if run.conn is None:
                    await self._connect(run, instance, deadline=time.monotonic() + self.settings.instance_lost_s)
                await self._fetch(run, paths.OUTPUT_DIR)
                return
            except ssh.CONNECTION_ERRORS as err:
                log.warning("%s: fetching the output: %s", run.job_id, err)
                await self._disconnect(run)
        raise Failed("provider_error", f"The output of {self._where(instance)} could not be fetched.")

    async def _signal(self, run: _Run, name: str) -> bool:
        trainer = run.state.get("trainer")
        if trainer is None or run.conn is None:
            return False
        result = await ssh.run(
            run.conn, SIGNAL_SH, run.remote.env, name, str(trainer["pid"]), trainer["started"], timeout=15
        )
        return result.exit_status == 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reported_files(line: bytes) -> list[str]:
    """The job-dir paths a progress line reports files at: a checkpoint's folder, a sample's
    video. Lines that are not such records (or not JSON) report none."""
    if b'"checkpoint"' not in line and b'"video"' not in line:
        return []
    try:
        record = json.loads(line)
    except ValueError:
        return []
    if not isinstance(record, dict):
        return []
    found = []
    if record.get("type") == "checkpoint" and isinstance(record.get("path"), str):
        found.append(record["path"])
    if record.get("type") == "sample" and isinstance(record.get("video"), str):
        found.append(record["video"])
    return [p for p in (safe_relative_path(path) for path in found) if p]
