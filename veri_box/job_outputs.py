"""What a job produces, read while it runs and after: its events, metrics, log, model,
checkpoints and samples (rollouts or validation clips)."""

from __future__ import annotations

from typing import Annotated, Any

import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, Parameter
from litestar.response import ServerSentEvent, Stream

from . import artifacts, logs, metrics, paths
from .auth import Signer
from .errors import ApiError, bad_request
from .jobs import get
from .schemas import ListOf
from .settings import Settings
from .statuses import TERMINAL
from .store import Store

Step = Annotated[int | None, Parameter(ge=0, le=2**62)]


class Event(msgspec.Struct):
    event_type: str
    timestamp: str
    metadata: dict[str, Any]


class Events(msgspec.Struct):
    items: list[Event]


def checkpoint_row(store: Store, job_id: str, ref: str) -> dict:
    """The job's checkpoint named by its id or by `job_id@step` (as the official client takes it)."""
    get(store, job_id)
    row = None
    if "@" in ref:
        owner, _, step = ref.rpartition("@")
        if owner == job_id and step.isdigit():
            row = store.checkpoint_at(job_id, int(step))
    else:
        row = store.get_checkpoint(ref)
    if row is None or row["job_id"] != job_id:
        raise ApiError(
            404,
            "checkpoint_not_found",
            f"Job {job_id} has no checkpoint '{ref}'; list them with GET /v1/training_jobs/{job_id}/checkpoints.",
            "checkpoint",
        )
    return row


class JobOutputController(Controller):
    path = "/v1/training_jobs"
    tags = ["training jobs"]

    @litestar.get("/{job_id:str}/events", sync_to_thread=True)
    def events(
        self, job_id: FromPath[str], store: NamedDependency[Store], limit: Annotated[int, Parameter(ge=1, le=1000)] = 50
    ) -> Events:
        get(store, job_id)
        return Events(
            items=[Event(e["event_type"], e["timestamp"], e["metadata"]) for e in store.list_events(job_id, limit)]
        )

    @litestar.get("/{job_id:str}/metrics", sync_to_thread=True)
    def metrics(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        keys: Annotated[str | None, Parameter(max_length=2000, description="Comma-separated metric keys.")] = None,
        from_step: Step = None,
        to_step: Step = None,
        max_points: Annotated[int, Parameter(ge=1, le=10_000)] = 500,
    ) -> metrics.Metrics:
        get(store, job_id)
        wanted = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
        return metrics.query(store, job_id, wanted, from_step, to_step, max_points)

    @litestar.get("/{job_id:str}/logs", media_type="text/event-stream")
    async def logs(
        self,
        job_id: FromPath[str],
        request: Request,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
    ) -> ServerSentEvent:
        """The training log as Server-Sent Events, ending with `[Job <status>]` once the job is terminal."""
        get(store, job_id)
        last = request.headers.get("last-event-id", "").strip()
        offset = logs.event_offset(last) if last else 0
        if offset is None:
            raise bad_request("invalid_last_event_id", "Last-Event-ID must be an id this stream sent.")
        live = logs.key_is_live(store, request.scope.get("state", {}).get("api_key_id"))
        return ServerSentEvent(
            logs.stream(store, settings.data_dir, job_id, offset, live),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @litestar.get(
        "/{job_id:str}/logs/full",
        sync_to_thread=True,
        media_type="text/plain",
        responses={
            200: ResponseSpec(
                data_container=str,
                media_type="text/plain",
                generate_examples=False,
                description="The whole log; the job has finished.",
            ),
            206: ResponseSpec(
                data_container=str,
                media_type="text/plain",
                generate_examples=False,
                description="The log so far; the job has not finished yet.",
            ),
        },
    )
    def logs_full(
        self, job_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]
    ) -> Stream:
        """The whole log as text: 200 once the job is terminal, 206 (so far) while it is not."""
        job = get(store, job_id)  # the status before the file: a 200 then has every line
        status = 200 if job["status"] in TERMINAL else 206
        return logs.download_response(paths.train_log(settings.data_dir, job_id), status)

    @litestar.get("/{job_id:str}/model", sync_to_thread=True)
    def model(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
        artifact: Annotated[str, Parameter(max_length=20)] = "model",
    ) -> artifacts.Model:
        """The final model's signed links: `?artifact=model` (default, the output as trained) or
        `merged` (the LoRA merged into its base, once POST .../merge has made it)."""
        return artifacts.manifest(settings, signer, get(store, job_id), artifact)

    @litestar.get("/{job_id:str}/checkpoints", sync_to_thread=True)
    def checkpoints(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> ListOf[artifacts.Checkpoint]:
        """Intermediate checkpoints the trainer saved, newest step first, with signed file links."""
        get(store, job_id)
        rows = store.list_checkpoints(job_id)
        return ListOf(data=[artifacts.checkpoint(settings, signer, row) for row in rows], has_more=False)

    @litestar.get("/{job_id:str}/checkpoints/{checkpoint:str}", sync_to_thread=True)
    def checkpoint(
        self,
        job_id: FromPath[str],
        checkpoint: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
    ) -> artifacts.Checkpoint:
        """One checkpoint, by id or as `JOB_ID@STEP`, with every file."""
        return artifacts.checkpoint(settings, signer, checkpoint_row(store, job_id, checkpoint))

    @litestar.get("/{job_id:str}/checkpoints/{checkpoint:str}/download", sync_to_thread=True)
    def checkpoint_download(
        self,
        job_id: FromPath[str],
        checkpoint: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
        artifact: Annotated[str, Parameter(max_length=20)] = "weights",
    ) -> artifacts.Checkpoint:
        """The signed links of one checkpoint's files: `weights` (default: what from_pretrained
        reads), `resumable` (everything, optimizer and RNG state too) or `adapter` (the LoRA)."""
        return artifacts.checkpoint(settings, signer, checkpoint_row(store, job_id, checkpoint), artifact)

    @litestar.get("/{job_id:str}/samples", sync_to_thread=True)
    def samples(
        self,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        signer: NamedDependency[Signer],
        step: Annotated[int | None, Parameter(ge=0, le=2**62)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
        after: Annotated[int | None, Parameter(ge=0, le=2**62, description="id of the last sample seen.")] = None,
    ) -> ListOf[dict[str, Any]]:
        """Rollouts (GRPO: prompt, completion, reward, rewards per function, advantage) or validation
        clips (video: prompt, video, signed video_url) the trainer reported, in step order; `step`
        picks one step."""
        get(store, job_id)
        rows, more = store.list_samples(job_id, step, limit, after)
        return ListOf(
            data=[artifacts.sample(settings, signer, job_id, r["seq"], r["data"]) for r in rows], has_more=more
        )
