"""A finished job's files: the model manifest and the signed links that fetch them.

The SDK downloads each file with a bare HTTP GET (no Authorization header), so every
link carries an expiring HMAC signature instead.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.response import File

from trainers import model_card  # stdlib only: the card's snippet, shown by the server too
from trainers.trackers import TENSORBOARD_DIR

from . import paths
from .auth import Signer
from .errors import ApiError, bad_request
from .settings import Settings
from .statuses import TERMINAL, JobStatus
from .store import Store, now, seconds_between


class ModelFile(msgspec.Struct):
    path: str
    url: str
    bytes: int


class Model(msgspec.Struct):
    download_url: str | None
    files: list[ModelFile]
    object: str = "model"


class Checkpoint(msgspec.Struct):
    id: str
    job_id: str
    step: int
    created_at: str
    size_bytes: int
    file_count: int
    files: list[ModelFile]
    artifact: str  # which of its files `files` lists: ARTIFACTS
    object: str = "checkpoint"


# What a checkpoint download may select (the official client's `artifact`): "resumable" is
# everything; "weights" leaves out what only a resume reads (optimizer, schedule, RNG and
# trainer state: about two thirds of a full fine-tune's bytes); "adapter" is the LoRA alone.
ARTIFACTS = ("resumable", "weights", "adapter")
_RESUME_ONLY = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "trainer_state.json",
    "training_args.bin",
    "training_state.pt",
)
_ADAPTER = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "pytorch_lora_weights.safetensors")


def _selected(path: str, artifact: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if artifact == "adapter":
        return name in _ADAPTER
    if artifact == "weights":
        return name not in _RESUME_ONLY and not (name.startswith("rng_state") and name.endswith(".pth"))
    return True


def signed_url(settings: Settings, signer: Signer, relative: str) -> str:
    return f"{settings.base_url}/files/{signer.sign(relative, settings.download_url_ttl_s)}"


def archive_url(settings: Settings, signer: Signer, job_id: str) -> str | None:
    if not paths.model_archive(settings.data_dir, job_id).is_file():
        return None
    return signed_url(settings, signer, paths.job_relative(job_id, paths.MODEL_ARCHIVE))


def _files(settings: Settings, signer: Signer, job_id: str, relative_dir: str) -> list[ModelFile]:
    """Every file under JOB_DIR/relative_dir, each with a signed link; links the trainer made to
    files outside the job dir are left out (the download route would refuse them anyway)."""
    job_dir = paths.job_dir(settings.data_dir, job_id).resolve()
    root = paths.job_dir(settings.data_dir, job_id) / relative_dir
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.resolve().is_relative_to(job_dir)):
        rel = path.relative_to(root).as_posix()
        url = signed_url(settings, signer, paths.job_relative(job_id, relative_dir, rel))
        files.append(ModelFile(path=rel, bytes=path.stat().st_size, url=url))
    return files


def merged_files(settings: Settings, signer: Signer, job_id: str) -> list[ModelFile]:
    """The merged model's files (JOB_DIR/merged, veri_box/merges.py), each with a signed link."""
    if not paths.merged_dir(settings.data_dir, job_id).is_dir():
        return []
    return _files(settings, signer, job_id, paths.MERGED_DIR)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed), 0 if it is gone."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def job_size(settings: Settings, job_id: str) -> int:
    """What a job takes on disk: what DELETE /v1/training_jobs/{id} frees."""
    return dir_size(paths.job_dir(settings.data_dir, job_id))


# How often the jobs list walks a live job's folder (it refreshes every 2 s while one is live):
# a running job's size may be this old. A finished job's is measured once and kept until its
# folder changes (see listed_sizes).
LIVE_SIZE_S = 10.0
# A folder changed this recently is walked whatever its key: file times are kept to a clock tick,
# so a change in the same tick as the stat before a walk would leave the key as it was.
RACY_S = 2.0


def listed_sizes(settings: Settings, store: Store, jobs: list[dict]) -> dict[str, int]:
    """What each listed job takes on disk, without walking every folder on every render (a job
    with checkpoints holds thousands of files; this was most of the list's time). A finished
    job's size is measured once and kept while its key holds: the job's latest event (a merge
    records its start and end) and the folder's own mtime (an entry added, removed or renamed in
    it: merged/ moved in, model.tar.gz replaced). A job still live
    (running, its trainer stopping, a merge writing) is measured again once its size is
    LIVE_SIZE_S old. The job page measures its one job afresh."""
    from . import merges  # merges imports jobs, which imports this module

    seqs = store.last_event_seqs([j["id"] for j in jobs])
    stamp = now()
    sizes = {}
    for job in jobs:
        job_dir = paths.job_dir(settings.data_dir, job["id"])
        key = None
        if job["status"] in TERMINAL and job["devices"] is None and not merges.merging(settings, job["id"]):
            try:
                mtime = job_dir.stat().st_mtime_ns
            except OSError:
                key = f"{seqs.get(job['id'], 0)}/gone"
            else:
                if time.time() - mtime / 1e9 >= RACY_S:
                    key = f"{seqs.get(job['id'], 0)}/{mtime}"
            reuse = key is not None and job["disk_bytes_key"] == key
        else:
            age = seconds_between(job["disk_bytes_at"], stamp)
            reuse = job["disk_bytes_key"] is None and age is not None and age < LIVE_SIZE_S
        if reuse and job["disk_bytes"] is not None:
            sizes[job["id"]] = job["disk_bytes"]
            continue
        # The key was read before the walk: a change during it makes the next render walk again.
        sizes[job["id"]] = dir_size(job_dir)
        store.set_disk_size(job["id"], sizes[job["id"]], key)
    return sizes


def load_snippet(job: dict, merged: bool = False) -> str:
    """How to load the job's model (or its merged model): the snippet its model card holds, so
    the job page, `veri-box demo` and the card say the same."""
    lora_rank = (job["hyperparameters"] or {}).get("lora_rank")
    kind = "merged" if merged else model_card.output_kind(job["method"], lora_rank)
    return model_card.load_snippet(kind, job["base_model"])


def free_disk(settings: Settings) -> int:
    return shutil.disk_usage(settings.data_dir).free


def manifest(settings: Settings, signer: Signer, job: dict, artifact: str = "model") -> Model:
    """The job's final model (`model`: its output as trained) or, `merged`, the LoRA merged into
    its base (once POST /v1/training_jobs/{id}/merge has made it)."""
    if artifact not in ("model", "merged"):
        raise bad_request("invalid_value", f"artifact must be model or merged, not {artifact!r}.", "artifact")
    if job["status"] != JobStatus.COMPLETED:
        raise bad_request(
            "model_not_ready", f"Job {job['id']} is {job['status']}; its model is available once it has completed."
        )
    if artifact == "merged":
        files = merged_files(settings, signer, job["id"])
        if not files:
            raise bad_request(
                "model_not_ready",
                f"Job {job['id']} has no merged model yet; make it with POST /v1/training_jobs/{job['id']}/merge.",
            )
        return Model(download_url=None, files=files)
    files = _files(settings, signer, job["id"], paths.OUTPUT_DIR)
    if not files:
        raise bad_request("model_not_ready", f"Job {job['id']} completed but left no model files.")
    return Model(download_url=archive_url(settings, signer, job["id"]), files=files)


def sample(settings: Settings, signer: Signer, job_id: str, seq: int, data: dict) -> dict:
    """A sample row as the API shows it: a validation video (a path relative to the job dir, the
    trainer's contract) gets a signed `video_url` a browser or client can fetch directly."""
    row = {"id": seq, **data}
    video = data.get("video")
    if isinstance(video, str) and ".." not in video.split("/"):
        row["video_url"] = signed_url(settings, signer, paths.job_relative(job_id, video.strip("/")))
    return row


def checkpoint(settings: Settings, signer: Signer, row: dict, artifact: str = "resumable") -> Checkpoint:
    """A checkpoint row; its path is relative to the job directory (the trainer's contract).
    One that resolves outside it (a link the trainer made) lists no files: their names and
    sizes are not the job's to show. `size_bytes` and `file_count` are the whole checkpoint's;
    `files` those of `artifact`."""
    if artifact not in ARTIFACTS:
        raise bad_request("invalid_value", f"artifact must be one of {', '.join(ARTIFACTS)}.", "artifact")
    relative = Path(row["path"]).as_posix().strip("/")
    job_dir = paths.job_dir(settings.data_dir, row["job_id"]).resolve()
    inside = ".." not in relative.split("/") and (job_dir / relative).resolve().is_relative_to(job_dir)
    every = _files(settings, signer, row["job_id"], relative) if inside else []
    return Checkpoint(
        id=row["id"],
        job_id=row["job_id"],
        step=row["step"],
        created_at=row["created_at"],
        size_bytes=sum(f.bytes for f in every),
        file_count=len(every),
        files=[f for f in every if _selected(f.path, artifact)],
        artifact=artifact,
    )


@get("/files/{path:path}", include_in_schema=True, tags=["downloads"], sync_to_thread=True)
def download(
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    path: FromPath[str],
    expires: Annotated[int | None, Parameter(ge=0, le=2**40)] = None,
    signature: Annotated[str | None, Parameter(max_length=128)] = None,
) -> File:
    """A file of a job, through a signed link from the API (no Authorization header needed)."""
    relative = path.lstrip("/")
    signer.verify(relative, expires, signature)
    root = paths.jobs_dir(settings.data_dir).resolve()
    target = (settings.data_dir / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise ApiError(404, "file_not_found", "This file no longer exists.")
    # An explicit media type: guessed from "model.tar.gz" it would add Content-Encoding: gzip,
    # and HTTP clients would then silently unpack the archive they asked for.
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.name.endswith(".gz"):
        media_type = "application/gzip"
    return File(target, filename=target.name, media_type=media_type)


class TensorBoardFiles(msgspec.Struct):
    job_id: str
    logdir: str  # relative to the data directory: `tensorboard --logdir DATA_DIR/jobs` shows every job
    files: list[ModelFile]
    object: str = "tensorboard"


def tensorboard_files(settings: Settings, signer: Signer, job_id: str) -> TensorBoardFiles:
    """The job's TensorBoard event files (trainers/trackers.py writes them while it trains, so
    they are there from its first step, whatever its status), each with a signed link."""
    relative = paths.job_relative(job_id, TENSORBOARD_DIR)
    root = paths.job_dir(settings.data_dir, job_id) / TENSORBOARD_DIR
    files = _files(settings, signer, job_id, TENSORBOARD_DIR) if root.is_dir() else []
    return TensorBoardFiles(job_id=job_id, logdir=relative, files=files)


@get("/v1/training_jobs/{job_id:str}/tensorboard", tags=["training jobs"], sync_to_thread=True)
def tensorboard(
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> TensorBoardFiles:
    """The job's TensorBoard event files, each with a signed download link."""
    from .jobs import get as get_job  # jobs imports this module

    get_job(store, job_id)
    return tensorboard_files(settings, signer, job_id)
