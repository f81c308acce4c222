"""Merged weights: a completed LoRA GRPO job's adapter merged into its base model, as one
folder of safetensors with its tokenizer and model card (JOB_DIR/merged/), loadable anywhere
with `AutoModelForCausalLM.from_pretrained` and no PEFT.

The server never loads a model: `trainers/merge.py` does the work as a short-lived child in the
trainers' bubblewrap sandbox (the job directory read-only, a work folder of its own writable),
on CPU. Merging is one addition per adapted matrix; what it costs is holding the base model in
memory once, in the dtype it is stored in (about 1 GB per 0.5B parameters in bf16), which any
box has for the models it trains, so a merge never waits for a GPU or takes one from a job. One
merge runs at a time. The work folder becomes JOB_DIR/merged/ by one rename, only when the child
succeeded: a failed or interrupted merge leaves no half-written model.

`POST /v1/training_jobs/{id}/merge` starts one in the background; `ensure_merged` (the Hub push
of artifact "merged") waits for it. Events: merge_started, merge_completed, merge_failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import FromPath

from . import artifacts, cpu_child, paths
from .auth import Signer
from .errors import ApiError, bad_request, conflict
from .inventory import CPU
from .jobs import get
from .settings import Settings
from .statuses import JobStatus
from .store import Store

log = logging.getLogger("veri_box")

MODULE = "trainers.merge"
WORK_DIR = "merged.partial"  # inside the job dir, beside merged/: the rename stays on one filesystem
SPEC_FILE, ERROR_FILE, MODEL_DIR = "merge.json", "error.json", "model"  # trainers/merge.py's names
MERGE_TIMEOUT_S = 4 * 3600.0  # loading a 70B base from disk on CPU takes a while; a hung one must end
STARTED, COMPLETED, FAILED = "merge_started", "merge_completed", "merge_failed"

_guard = threading.Lock()
_active: dict[Path, threading.Event] = {}  # merged dir -> set when its merge has ended
_one_at_a_time = threading.Lock()  # each merge holds a whole base model in memory


class MergeError(msgspec.Struct):
    code: str
    message: str


class Merge(msgspec.Struct):
    job_id: str
    # not_merged, merging, completed or failed (also: interrupted by a server restart)
    status: str
    error: MergeError | None
    size_bytes: int | None
    files: list[artifacts.ModelFile]
    object: str = "merge"


def merged_dir(where: Any, job_id: str) -> Path:
    """JOB_DIR/merged of a Box, Settings or data directory."""
    settings = getattr(where, "settings", where)
    return paths.merged_dir(Path(getattr(settings, "data_dir", settings)), job_id)


def check_mergeable(job: dict) -> None:
    """4xx unless the job is a completed LoRA GRPO job."""
    if job["method"] != "grpo":
        raise bad_request(
            "merge_not_supported",
            f"Job {job['id']} is a {job['method']} (video) job: its LoRA loads into the diffusers pipeline "
            "with load_lora_weights; only LoRA GRPO jobs can be merged.",
        )
    if not (job["hyperparameters"] or {}).get("lora_rank"):
        raise bad_request(
            "not_a_lora_job",
            f"Job {job['id']} is a full fine-tune (lora_rank is null): its model is already whole; "
            f"download it with GET /v1/training_jobs/{job['id']}/model.",
        )
    if job["status"] != JobStatus.COMPLETED:
        raise conflict(
            "job_not_completed", f"Job {job['id']} is {job['status']}; only a completed job's adapter can be merged."
        )


def _key(settings: Settings, job_id: str) -> Path:
    return merged_dir(settings, job_id).resolve()


def _claim(settings: Settings, job_id: str) -> threading.Event | None:
    """The done-event of a new merge this caller now runs, or None if one is already running."""
    with _guard:
        key = _key(settings, job_id)
        if key in _active:
            return None
        _active[key] = threading.Event()
        return _active[key]


def _running(settings: Settings, job_id: str) -> threading.Event | None:
    with _guard:
        return _active.get(_key(settings, job_id))


def merging(settings: Settings, job_id: str) -> bool:
    """Whether a merge of this job is writing now (a delete must wait for it)."""
    return _running(settings, job_id) is not None


def _event(store: Store, job_id: str, event_type: str, **metadata: Any) -> None:
    try:
        store.add_event(job_id, event_type, metadata)
    except Exception:  # noqa: BLE001 - the job was deleted meanwhile: nothing to record it on
        log.warning("job %s: could not record %s", job_id, event_type)


def _merge(settings: Settings, store: Store, job: dict) -> MergeError | None:
    """Run the child and move its model into place; the error if it failed. Records the events."""
    job_id = job["id"]
    job_dir = paths.job_dir(settings.data_dir, job_id)
    work, target = job_dir / WORK_DIR, merged_dir(settings, job_id)
    spec = {
        "job_dir": str(job_dir),
        "adapter": str(paths.output_dir(settings.data_dir, job_id)),
        "models_dir": str(paths.models_dir(settings.data_dir)),
    }
    log_path = job_dir / paths.MERGE_LOG
    _event(store, job_id, STARTED, device=CPU)
    try:
        # In the try: a failure here must end in merge_failed, not in a dead thread that state()
        # would report as a server restart (merge_interrupted).
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / SPEC_FILE).write_text(json.dumps(spec), encoding="utf-8")
        command, env = cpu_child.command(settings, job, MODULE, work)
        with _one_at_a_time:
            code = cpu_child.run(
                command, env, work, log_path, MERGE_TIMEOUT_S, mode="ab", grace_s=settings.cancel_grace_s
            )
        error = None
        if code == 0 and (work / MODEL_DIR / "config.json").is_file():
            (work / MODEL_DIR).rename(target)
        elif code is None:
            error = MergeError("merge_failed", f"The merge did not finish within {MERGE_TIMEOUT_S / 3600:g} hours.")
        elif (work / ERROR_FILE).is_file():
            reported = json.loads((work / ERROR_FILE).read_text(encoding="utf-8"))
            error = MergeError(str(reported.get("code", "merge_failed")), str(reported.get("message", "")))
        else:
            error = MergeError("merge_failed", f"The merge ended with exit code {code}: {cpu_child.tail(log_path)}")
    except OSError as err:  # the job's folder went away (deleted meanwhile), the disk is full
        error = MergeError("merge_failed", f"The merge could not be written: {err}")
    except ValueError as err:  # an error.json the child did not finish writing (killed meanwhile)
        error = MergeError("merge_failed", f"The merge failed and its report could not be read: {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if error is None:
        _event(store, job_id, COMPLETED, size_bytes=_size(target), files=len(_listing(target)))
    else:
        log.warning("job %s: merge failed: %s: %s", job_id, error.code, error.message)
        _event(store, job_id, FAILED, code=error.code, message=error.message)
    return error


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in _listing(folder))


def _run_claimed(settings: Settings, store: Store, job: dict, done: threading.Event) -> MergeError | None:
    try:
        return _merge(settings, store, job)
    finally:
        with _guard:
            _active.pop(_key(settings, job["id"]), None)
        done.set()


# -- service functions (the API's controller, the dashboard and the Hub push call these) ----------


def state(settings: Settings, store: Store, signer: Signer, job: dict) -> Merge:
    """Where the job's merge stands, with signed links to the merged files once there."""
    target = merged_dir(settings, job["id"])
    if target.is_dir():
        files = artifacts.merged_files(settings, signer, job["id"])
        return Merge(job["id"], "completed", None, sum(f.bytes for f in files), files)
    if _running(settings, job["id"]) is not None:
        return Merge(job["id"], "merging", None, None, [])
    last = next(
        (e for e in reversed(store.list_events(job["id"], 100_000)) if e["event_type"].startswith("merge_")), None
    )
    if last is None:
        return Merge(job["id"], "not_merged", None, None, [])
    if last["event_type"] == FAILED:
        meta = last["metadata"]
        return Merge(
            job["id"], "failed", MergeError(meta.get("code", "merge_failed"), meta.get("message", "")), None, []
        )
    # merge_started with no end, and no merge running here: the server stopped during it.
    error = MergeError("merge_interrupted", "The server stopped during the merge; start it again.")
    return Merge(job["id"], "failed", error, None, [])


def start(settings: Settings, store: Store, signer: Signer, job_id: str) -> Merge:
    """Start merging the job's adapter in the background (a no-op once merged)."""
    job = get(store, job_id)
    check_mergeable(job)
    if merged_dir(settings, job_id).is_dir():
        return state(settings, store, signer, job)
    done = _claim(settings, job_id)
    if done is None:
        raise conflict("merge_in_progress", f"Job {job_id}'s adapter is being merged; wait for merge_completed.")
    threading.Thread(
        target=_run_claimed, args=(settings, store, job, done), name=f"merge-{job_id}", daemon=True
    ).start()
    return Merge(job_id, "merging", None, None, [])


def ensure_merged(box: Any, job_id: str) -> Path:
    """JOB_DIR/merged, merging first if it is not there (waiting for a merge already running).
    Blocking; ApiError when the job cannot be merged or the merge failed."""
    settings, store = box.settings, box.store
    job = get(store, job_id)
    check_mergeable(job)
    target = merged_dir(settings, job_id)
    while not target.is_dir():
        done = _claim(settings, job_id)
        if done is None:
            running = _running(settings, job_id)
            if running is not None:
                running.wait()
            if not target.is_dir() and _running(settings, job_id) is None:
                last = state(settings, store, box.signer, job)
                if last.status == "failed" and last.error is not None:
                    raise ApiError(500, last.error.code, f"The merge of job {job_id} failed: {last.error.message}")
            continue
        error = _run_claimed(settings, store, job, done)
        if error is not None:
            raise ApiError(500, error.code, f"The merge of job {job_id} failed: {error.message}")
    return target


class MergeController(Controller):
    path = "/v1/training_jobs"
    tags = ["training jobs"]

    @litestar.post("/{job_id:str}/merge", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def merge(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> Merge:
        """Merge a completed LoRA GRPO job's adapter into its base model (in the background; poll
        GET .../merge or watch for the merge_completed event)."""
        return start(settings, store, signer, job_id)

    @litestar.get("/{job_id:str}/merge", sync_to_thread=True)
    def merge_state(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> Merge:
        """Where the job's merge stands; once completed, signed links to the merged model's files."""
        return state(settings, store, signer, get(store, job_id))
