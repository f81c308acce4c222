"""Training jobs: submit-time validation, reading, cancelling (what a job produces: job_outputs.py)."""

from __future__ import annotations

import shutil
from typing import Annotated, Any, Literal

import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter
from msgspec import Meta

from . import (
    artifacts,
    dataset_files,
    dataset_zips,
    hub,
    hyperparameters,
    job_config,
    memory,
    models,
    openreward,
    paths,
    quotas,
    reward_functions,
)
from .auth import Owner, Signer, caller_id, owner
from .errors import ApiError, bad_request, not_found
from .placement import Placement
from .runner import Runner
from .schemas import After, ListOf
from .settings import Settings
from .statuses import TERMINAL, JobStatus
from .store import Store, new_id, now

METHODS = ("grpo", "sft_video_gen")
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Id = Annotated[str, Meta(min_length=1, max_length=100)]
Source = Annotated[str, Meta(min_length=1, max_length=reward_functions.MAX_SOURCE_BYTES)]


class GpuRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`{type, count}` as on the reference page, or the SDK's `{gpu_type, gpu_count}`."""

    type: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    count: Annotated[int, Meta(ge=1, le=64)] | None = None
    gpu_type: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    gpu_count: Annotated[int, Meta(ge=1, le=64)] | None = None


class CheckpointDestination(msgspec.Struct, forbid_unknown_fields=True):
    type: Annotated[str, Meta(max_length=50)] = "veri"


class EnvironmentSpec(msgspec.Struct, forbid_unknown_fields=True):
    splits: Annotated[list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(min_length=1, max_length=20)] = (
        msgspec.field(default_factory=lambda: ["train"])
    )


class CreateJob(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    base_model: Annotated[str, Meta(min_length=1, max_length=1000)]
    dataset_id: Id
    gpu: GpuRequest
    output_name: Name = "default"
    method: Literal["grpo", "sft_video_gen"] = "grpo"
    hyperparameters: dict[str, Any] | None = None
    provider: Annotated[str, Meta(max_length=100)] | None = None
    checkpoint_destination: CheckpointDestination | None = None
    reward_function_id: Id | None = None
    reward_source: Source | None = None
    reward_sources: Annotated[list[Source], Meta(min_length=1, max_length=16)] | None = None
    reward_weights: Annotated[list[Annotated[float, Meta(ge=-1e6, le=1e6)]], Meta(max_length=16)] | None = None
    environments: (
        Annotated[
            dict[Annotated[str, Meta(min_length=1, max_length=200)], EnvironmentSpec], Meta(min_length=1, max_length=16)
        ]
        | None
    ) = None
    requires_heartbeat: bool = False
    resume_from: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    hf_push: hub.HfPush | None = None  # push to the Hugging Face Hub once completed


class Gpu(msgspec.Struct):
    type: str
    count: int


class JobError(msgspec.Struct):
    code: str
    message: str


class Job(msgspec.Struct):
    id: str
    object: str
    status: str
    base_model: str
    dataset_id: str
    reward_function_id: str | None
    method: str
    output_name: str
    hyperparameters: dict[str, Any]
    dashboard_url: str | None
    download_url: str | None
    error: JobError | None
    gpu: Gpu | None
    gpu_requested: Gpu
    provider: str | None
    duration_seconds: float | None
    cost_usd: float | None
    started_at: str | None
    completed_at: str | None
    created_at: str
    environments: dict[str, Any] | None
    current_step: int | None
    total_steps: int | None
    current_loss: float | None
    updated_at: str
    memory_estimate_gb: float | None = None
    hf_push: hub.HfPushState | None = None  # what was asked to be pushed to the Hub, and how it went
    hf_repo_url: str | None = None  # the SDK's field: the repo, once pushed
    wandb_run_url: str | None = None  # the job's W&B run, with the W&B integration set
    tags: list[str] = msgspec.field(default_factory=list)
    note: str | None = None
    created_by: Owner | None = None  # the key that submitted it (null: before roles existed)
    resume_from: str | None = None  # the checkpoint id it started from (`job_id@step` as sent is resolved)


Tag = Annotated[str, Meta(min_length=1, max_length=50)]


class UpdateJob(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH: labels only; a field left out keeps its value, `note: null` clears the note."""

    tags: Annotated[list[Tag], Meta(max_length=20)] | None = None
    note: Annotated[str, Meta(max_length=2000)] | None | msgspec.UnsetType = msgspec.UNSET


class Heartbeat(msgspec.Struct):
    id: str
    status: str
    last_heartbeat_at: str
    object: str = "training_job"


def to_api(job: dict, settings: Settings, signer: Signer) -> Job:
    error = JobError(job["error_code"], job["error_message"] or "") if job["error_code"] else None
    download = artifacts.archive_url(settings, signer, job["id"]) if job["status"] == "completed" else None
    return Job(
        id=job["id"],
        object="training_job",
        status=job["status"],
        base_model=job["base_model"],
        dataset_id=job["dataset_id"],
        reward_function_id=job["reward_function_id"],
        method=job["method"],
        output_name=job["output_name"],
        hyperparameters=job["hyperparameters"],
        dashboard_url=f"{settings.base_url}/jobs/{job['id']}",
        download_url=download,
        error=error,
        gpu=Gpu(**job["gpu"]) if job["gpu"] else None,
        gpu_requested=Gpu(**job["gpu_requested"]),
        provider=job["provider"],
        duration_seconds=job["duration_seconds"],
        cost_usd=job["cost_usd"],
        started_at=job["started_at"],
        completed_at=job["completed_at"],
        created_at=job["created_at"],
        environments=job["environments"],
        current_step=job["current_step"],
        total_steps=job["total_steps"],
        current_loss=job["current_loss"],
        updated_at=job["updated_at"],
        memory_estimate_gb=memory.total_gb(job.get("memory_estimate")),
        hf_push=hub.state(job),
        hf_repo_url=hub.repo_url(job),
        wandb_run_url=job.get("wandb_run_url"),
        tags=job.get("tags") or [],
        note=job.get("note"),
        created_by=owner(job),
        resume_from=job.get("resume_from"),
    )


# -- submit-time validation ----------------------------------------------------------------


def _gpu(request: GpuRequest, placement: Placement, provider: str | None) -> dict:
    if request.type and request.gpu_type and request.type != request.gpu_type:
        raise bad_request("invalid_value", "gpu.type and gpu.gpu_type disagree; send one of them.", "gpu.type")
    if request.count and request.gpu_count and request.count != request.gpu_count:
        raise bad_request("invalid_value", "gpu.count and gpu.gpu_count disagree; send one of them.", "gpu.count")
    gpu_type = request.type or request.gpu_type
    count = request.count or request.gpu_count or 1
    if not gpu_type:
        have = placement.inventory.describe()
        raise bad_request("missing_field", f"gpu.type is required; this box has: {have}.", "gpu.type")
    placement.check(gpu_type, count, provider)
    return {"type": gpu_type, "count": count}


def _check_video_job(dataset: dict, hp: dict, settings: Settings) -> None:
    shortest = dataset_zips.shortest_clip(paths.dataset_dir(settings.data_dir, dataset["id"]), dataset["path"])
    if shortest and shortest[1] < hp["num_frames"]:
        video, frames = shortest
        raise bad_request(
            "clip_too_short",
            f'Clip "{video}" of dataset {dataset["id"]} has {frames} frames, fewer than num_frames '
            f"({hp['num_frames']}); lower num_frames or remove the clip.",
            "hyperparameters.num_frames",
        )


def _reward_sources(
    body: CreateJob, store: Store, settings: Settings, chosen: list[tuple[str, float]] | None
) -> tuple[list[dict], list[dict]]:
    """([{id, weight}] the job uses, [rows of inline reward functions to insert]). `chosen` are
    (id, weight) pairs of stored reward functions, as the dashboard's pickers give them."""
    inline = [body.reward_source] if body.reward_source else []
    inline_param = "reward_source"
    if body.reward_sources:
        if inline:
            raise bad_request(
                "conflicting_reward_sources", "Send reward_source or reward_sources, not both.", "reward_sources"
            )
        inline, inline_param = list(body.reward_sources), "reward_sources"
    given = [
        name
        for name, present in (
            ("reward_function_id", body.reward_function_id or chosen),
            (inline_param, inline),
            ("environments", body.environments),
        )
        if present
    ]
    if body.method == "sft_video_gen":
        if given:
            raise bad_request(
                "reward_source_not_allowed",
                f"sft_video_gen trains on captions and takes no reward; remove {given[0]}.",
                given[0],
            )
        return [], []
    if len(given) > 1 or (body.reward_function_id and chosen):
        raise bad_request(
            "conflicting_reward_sources",
            f"A grpo job takes exactly one reward source; got {' and '.join(given)}.",
            given[1] if len(given) > 1 else "reward_function_id",
        )
    if not given:
        raise bad_request(
            "reward_source_required",
            "A grpo job needs a reward source: reward_function_id, reward_source(s) or environments.",
            "reward_function_id",
        )
    if chosen:
        if body.reward_weights is not None:
            raise bad_request("invalid_value", "Give each chosen reward function its own weight.", "reward_weights")
        return [_stored_reward_function(store, rf_id, weight) for rf_id, weight in chosen], []
    count = 1 if body.reward_function_id else len(inline)
    weights = body.reward_weights
    if weights is not None:
        if body.environments:
            raise bad_request(
                "invalid_value", "reward_weights apply to reward functions, not environments.", "reward_weights"
            )
        if len(weights) != count:
            raise bad_request(
                "invalid_value",
                f"reward_weights has {len(weights)} entries for {count} reward source(s).",
                "reward_weights",
            )
    weights = weights or [1.0] * count
    if body.environments:
        integration = store.get_integration("openreward")
        if integration is None:
            raise bad_request(
                "integration_not_configured",
                "Jobs with environments need the OpenReward integration; set it with "
                "PUT /v1/settings/integrations/openreward.",
                "environments",
            )
        openreward.check({name: spec.splits for name, spec in body.environments.items()}, integration)
        return [], []
    if body.reward_function_id:
        return [_stored_reward_function(store, body.reward_function_id, weights[0])], []
    params = [inline_param if inline_param == "reward_source" else f"reward_sources[{i}]" for i in range(count)]
    for source, param in zip(inline, params):  # check every source before writing any
        reward_functions.find_entrypoint(source, param)
    rows = [
        reward_functions.prepare(settings, f"{body.output_name} reward {i}", source, inline=True, param=param)
        for i, (source, param) in enumerate(zip(inline, params))
    ]
    return [{"id": r["id"], "weight": w} for r, w in zip(rows, weights)], rows


# What a checkpoint's weights and optimizer state are shaped by: a resumed job must keep these.
RESUME_SHAPE = {
    "grpo": ("lora_rank", "lora_alpha"),
    "sft_video_gen": ("lora_rank", "lora_alpha", "num_frames", "height", "width"),
}


def _checkpoint(store: Store, settings: Settings, value: str) -> dict:
    """The checkpoint row `resume_from` names: a checkpoint id, or `job_id@step`; its folder
    must still be there, inside the job that saved it."""
    how = "list a job's checkpoints with GET /v1/training_jobs/{job_id}/checkpoints and send one's id"
    if "@" in value:
        job_id, _, step = value.rpartition("@")
        if not step.isdigit():
            raise bad_request(
                "invalid_value", f"resume_from must be a checkpoint id or JOB_ID@STEP; got '{value}'.", "resume_from"
            )
        if store.get_job(job_id) is None:
            raise bad_request("checkpoint_not_found", f"No training job with id '{job_id}'; {how}.", "resume_from")
        row = store.checkpoint_at(job_id, int(step))
        if row is None:
            steps = ", ".join(str(c["step"]) for c in store.list_checkpoints(job_id)) or "none"
            raise bad_request(
                "checkpoint_not_found",
                f"Job {job_id} has no checkpoint at step {step} (its checkpoints: {steps}); {how}.",
                "resume_from",
            )
    else:
        row = store.get_checkpoint(value)
        if row is None:
            raise bad_request("checkpoint_not_found", f"No checkpoint with id '{value}'; {how}.", "resume_from")
    job_dir = paths.job_dir(settings.data_dir, row["job_id"]).resolve()
    folder = job_config.resume_source(settings.data_dir, row)
    if not folder.resolve().is_relative_to(job_dir) or not folder.is_dir() or not any(folder.iterdir()):
        raise bad_request(
            "checkpoint_not_found",
            f"The files of checkpoint {row['id']} (job {row['job_id']}, step {row['step']}) are gone; "
            "resume from another checkpoint.",
            "resume_from",
        )
    return row


def _resume_source(body: CreateJob, hp: dict, store: Store, settings: Settings) -> tuple[dict, dict] | None:
    """(checkpoint row, the job that saved it) a job resumes from, checked against the job:
    the same method, base model and the shapes its weights and optimizer state have."""
    if body.resume_from is None:
        return None
    checkpoint = _checkpoint(store, settings, body.resume_from.strip())
    source = store.get_job(checkpoint["job_id"])
    assert source is not None  # checkpoints are never without their job (foreign key)
    what = f"Checkpoint {checkpoint['id']} (job {source['id']}, step {checkpoint['step']})"
    if source["method"] != body.method:
        raise _incompatible(f"{what} is of a {source['method']} job; send method '{source['method']}'.")
    if source["base_model"] != body.base_model.strip():
        raise _incompatible(f"{what} trained {source['base_model']}; send that base_model.")
    theirs = source["hyperparameters"]
    for key in RESUME_SHAPE[body.method]:
        if theirs.get(key) == hp.get(key):
            continue
        if key == "lora_rank" and (theirs.get(key) is None or hp.get(key) is None):
            kind = "a LoRA" if theirs.get(key) else "the full model"
            raise _incompatible(f"{what} trained {kind}; send lora_rank {theirs.get(key)} as it did.")
        raise _incompatible(
            f"{what} has {key} {theirs.get(key)}, this job {hp.get(key)}; "
            f"send {key} {theirs.get(key)} (a checkpoint's weights keep the shape they were trained with)."
        )
    if hp["max_steps"] is not None and hp["max_steps"] <= checkpoint["step"]:
        raise bad_request(
            "invalid_hyperparameter",
            f"max_steps {hp['max_steps']} is not past the checkpoint's step {checkpoint['step']}: "
            "max_steps counts the whole run, the checkpoint's steps included.",
            "hyperparameters.max_steps",
        )
    return checkpoint, source


def _incompatible(message: str) -> ApiError:
    return bad_request("resume_incompatible", message, "resume_from")


def _inherited_rewards(
    body: CreateJob, source: dict, chosen: list[tuple[str, float]] | None
) -> tuple[CreateJob, list[tuple[str, float]] | None]:
    """A resumed grpo job that names no reward source of its own keeps the source job's."""
    own = body.reward_function_id or body.reward_source or body.reward_sources or body.environments or chosen
    if body.method != "grpo" or own:
        return body, chosen
    if source["environments"]:
        environments = msgspec.convert(source["environments"], dict[str, EnvironmentSpec])
        return msgspec.structs.replace(body, environments=environments), chosen
    return body, [(rf["id"], rf["weight"]) for rf in source["reward_functions"]]


def _stored_reward_function(store: Store, rf_id: str, weight: float) -> dict:
    if store.get_reward_function(rf_id) is None:
        raise ApiError(404, "reward_function_not_found", f"No reward function with id '{rf_id}'.", "reward_function_id")
    return {"id": rf_id, "weight": weight}


def submit(
    body: CreateJob,
    store: Store,
    settings: Settings,
    placement: Placement,
    reward_functions: list[tuple[str, float]] | None = None,
    created_by: str | None = None,
) -> dict:
    """Validate a job and store it queued; returns the job row. `reward_functions` are (id,
    weight) pairs of stored reward functions, the dashboard's alternative to the body's own
    reward source fields. `created_by`: the id of the key submitting it."""
    dataset = store.get_dataset(body.dataset_id)
    if dataset is None:
        raise ApiError(404, "dataset_not_found", f"No dataset with id '{body.dataset_id}'.", "dataset_id")
    if body.method not in dataset_files.compatible_methods(dataset["format"]):
        raise bad_request(
            "dataset_format_incompatible",
            f"Dataset {dataset['id']} is {dataset['format']}, which {body.method} cannot train on.",
            "dataset_id",
        )
    if not body.base_model.strip() or any(c in body.base_model for c in "\n\r\t\0"):
        raise bad_request(
            "invalid_value", "base_model must be a Hugging Face model id or a directory path.", "base_model"
        )
    model = models.check(body.base_model, body.method, settings, store)
    if not body.output_name.strip():
        raise bad_request("invalid_value", "output_name must not be blank.", "output_name")
    if body.checkpoint_destination and body.checkpoint_destination.type != "veri":
        raise bad_request(
            "unsupported_checkpoint_destination",
            "This box keeps checkpoints itself; checkpoint_destination.type must be 'veri'.",
            "checkpoint_destination.type",
        )
    hp = hyperparameters.resolve(body.method, body.hyperparameters)
    gpu = _gpu(body.gpu, placement, body.provider)
    quotas.check_submit(store, placement, created_by, gpu, body.provider)  # 429/402 before anything is written
    estimate = memory.for_job(model, body.method, hp, gpu, dataset, memory.most_gpus(placement, gpu["type"]))
    if body.method == "sft_video_gen":
        _check_video_job(dataset, hp, settings)
    resume = _resume_source(body, hp, store, settings)
    if resume:
        body, reward_functions = _inherited_rewards(body, resume[1], reward_functions)
    hf_push = hub.check_request(body.hf_push, store, body.method, hp) if body.hf_push else None
    sources, inline_rows = _reward_sources(body, store, settings, reward_functions)
    stamp = now()
    job = {
        "id": new_id("job_"),
        "status": JobStatus.QUEUED,
        "base_model": body.base_model.strip(),
        "dataset_id": dataset["id"],
        "reward_function_id": sources[0]["id"] if sources else None,
        "reward_functions": sources,
        "environments": {k: msgspec.to_builtins(v) for k, v in body.environments.items()}
        if body.environments
        else None,
        "method": body.method,
        "output_name": body.output_name.strip(),
        "hyperparameters": hp,
        "gpu_requested": gpu,
        "gpu": None,
        "provider": None,
        "provider_requested": body.provider,
        "checkpoint_destination": {"type": "veri"},
        "requires_heartbeat": int(body.requires_heartbeat),
        "resume_from": resume[0]["id"] if resume else None,
        "memory_estimate": memory.to_row(estimate),
        "hf_push": hf_push,
        "hf_push_state": hub.waiting_state() if hf_push else None,
        "created_at": stamp,
        "created_by": created_by,
    }
    try:
        created = store.create_job(job, inline_rows)
    except BaseException:
        for row in inline_rows:
            (settings.data_dir / row["path"]).unlink(missing_ok=True)
        raise
    if estimate and estimate.verdict == "borderline":
        store.add_event(created["id"], "memory_warning", memory.warning(estimate))
    warning = quotas.spend_warning(store, placement, created_by, gpu, body.provider)
    if warning:  # how long it can run on a rented GPU before its key's (or the box's) spend limit
        store.add_event(created["id"], "spend_warning", warning)
    return created


# -- controller -------------------------------------------------------------------------------


def get(store: Store, job_id: str) -> dict:
    job = store.get_job(job_id)
    if job is None:
        raise not_found("training job", job_id)
    return job


def update_labels(store: Store, job_id: str, body: UpdateJob) -> dict:
    """Set a job's tags and/or note (any status): duplicate tags are dropped, order kept."""
    get(store, job_id)
    fields: dict[str, Any] = {}
    if body.tags is not None:
        for i, tag in enumerate(body.tags):
            # The dashboard edits tags as one comma-separated line.
            if "," in tag or not tag.strip():
                message = f"Tag {tag!r} is blank or has a comma; send one tag per item."
                raise bad_request("invalid_value", message, f"tags[{i}]")
        fields["tags"] = list(dict.fromkeys(t.strip() for t in body.tags))
    if body.note is not msgspec.UNSET:
        fields["note"] = body.note.strip() or None if body.note is not None else None
    if fields:
        store.update_job(job_id, **fields)
    return get(store, job_id)


def cancel(store: Store, runner: Runner, job_id: str) -> dict:
    """Cancel a job that has not finished; returns the cancelled job row."""
    job = get(store, job_id)
    if job["status"] in TERMINAL or runner.cancel(job_id) is None:
        job = get(store, job_id)
        raise bad_request(
            "job_not_cancellable",
            f"Job {job_id} is already {job['status']}; only queued, provisioning or running jobs can be cancelled.",
        )
    return get(store, job_id)


def delete(store: Store, settings: Settings, job_id: str) -> None:
    """Delete a finished job: its records, then its files (checkpoints, model, logs). The
    directory is first renamed out of the way, so a failure part-way never leaves a job whose
    records remain with its files half gone."""
    job = get(store, job_id)
    if job["status"] not in TERMINAL:
        raise ApiError(
            409,
            "job_active",
            f"Job {job_id} is {job['status']}; cancel it first (POST /v1/training_jobs/{job_id}/cancel), "
            "then delete it once it has stopped.",
        )
    if job["devices"] is not None:
        raise ApiError(409, "job_active", f"Job {job_id}'s trainer is still stopping; delete it in a few seconds.")
    from . import evaluations, merges  # both import this module for get()

    if merges.merging(settings, job_id):
        raise ApiError(409, "merge_in_progress", f"Job {job_id} is being merged; delete it once the merge has ended.")
    if (evaluation := evaluations.running(job_id)) is not None:
        raise ApiError(
            409, "evaluation_running", f"Job {job_id} is being evaluated ({evaluation}); delete it once that has ended."
        )
    if hub.pushing(job):
        raise ApiError(409, "hf_push_in_progress", f"Job {job_id} is being pushed to the Hub; delete it after that.")
    job_dir = paths.job_dir(settings.data_dir, job_id)
    doomed = job_dir.with_name(f".deleted-{job_id}")
    if job_dir.exists():
        job_dir.rename(doomed)
    try:
        store.delete_job(job_id)
    except BaseException:
        if doomed.exists():
            doomed.rename(job_dir)
        raise
    shutil.rmtree(doomed, ignore_errors=True)


class JobController(Controller):
    path = "/v1/training_jobs"
    tags = ["training jobs"]

    @litestar.post("/", status_code=200, sync_to_thread=True, opt={"rule": "member"})
    def create(
        self,
        request: Request,
        data: JSONBody[CreateJob],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        placement: NamedDependency[Placement],
        signer: NamedDependency[Signer],
    ) -> Job:
        return to_api(submit(data, store, settings, placement, created_by=caller_id(request)), settings, signer)

    @litestar.get("/", sync_to_thread=True)
    def list_(
        self,
        request: Request,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        after: After = None,
        status: Annotated[JobStatus | None, Parameter()] = None,
        method: Annotated[Literal["grpo", "sft_video_gen"] | None, Parameter()] = None,
        mine: Annotated[bool, Parameter(description="only this key's jobs")] = False,
        created_by: Annotated[str | None, Parameter(max_length=64, description="only this key id's jobs")] = None,
    ) -> ListOf[Job]:
        owner_id = caller_id(request) if mine else created_by
        rows, more = store.list_jobs(limit, after, status, method, created_by=owner_id)
        return ListOf(data=[to_api(r, settings, signer) for r in rows], has_more=more)

    @litestar.get("/{job_id:str}", sync_to_thread=True)
    def retrieve(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> Job:
        return to_api(get(store, job_id), settings, signer)

    @litestar.patch("/{job_id:str}", sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def update(
        self,
        job_id: FromPath[str],
        data: JSONBody[UpdateJob],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> Job:
        """Label a job: `tags` (up to 20, 1 to 50 characters, no commas) and a `note` (up to 2000)."""
        return to_api(update_labels(store, job_id, data), settings, signer)

    @litestar.post("/{job_id:str}/cancel", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def cancel(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        runner: NamedDependency[Runner],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> Job:
        """The cancelled job, whole (a superset of the reference page's {id, object, status})."""
        return to_api(cancel(store, runner, job_id), settings, signer)

    @litestar.delete("/{job_id:str}", status_code=204, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def delete(self, job_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]) -> None:
        """Delete a completed, failed or cancelled job with its files; 409 while it is active."""
        delete(store, settings, job_id)

    @litestar.post(
        "/{job_id:str}/heartbeat", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "job"}
    )
    def heartbeat(self, job_id: FromPath[str], store: NamedDependency[Store]) -> Heartbeat:
        job = get(store, job_id)
        stamp = now()
        store.update_job(job_id, last_heartbeat_at=stamp)
        return Heartbeat(id=job_id, status=job["status"], last_heartbeat_at=stamp)
