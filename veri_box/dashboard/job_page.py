"""One job's page and its live parts: the summary and timeline, cancel, the metrics behind the
charts, the log as Server-Sent Events (and as text), rollouts by step, and the downloads."""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage, Stream

from .. import artifacts, health, hub, jobs, logs, merges, metrics, paths, sessions, statuses
from ..auth import Signer
from ..errors import ApiError, bad_request
from ..runner import Runner
from ..settings import Settings
from ..statuses import JobStatus
from ..store import Store
from .rendering import convert, error_context, relative, render, text_fields

EVENTS_SHOWN = 200
ROLLOUTS_PER_STEP = 1000
LOG_TAIL_BYTES = 256 * 1024
DEFAULT_CHART_KEYS = ["reward", "loss", "kl", "completions/mean_length"]


def _summary_context(store: Store, job: dict) -> dict:
    events = store.list_events(job["id"], EVENTS_SHOWN)
    reward_fns = []
    for rf in job["reward_functions"] or []:
        row = store.get_reward_function(rf["id"])
        reward_fns.append({"id": rf["id"], "weight": rf.get("weight"), "name": row["name"] if row else rf["id"]})
    # A failed or cancelled job can go on from its last checkpoint in a new job.
    resumable = job["status"] in (JobStatus.FAILED, JobStatus.CANCELLED)
    last = store.list_checkpoints(job["id"])[:1] if resumable else []
    return {
        "job": job,
        "events": events,
        "live": job["status"] not in statuses.TERMINAL,
        "resume_checkpoint": last[0] if last else None,
        "resumed_from": store.get_checkpoint(job["resume_from"]) if job["resume_from"] else None,
        "reward_fns": reward_fns,
        "dataset": store.get_dataset(job["dataset_id"]),
    }


@get("/jobs/{job_id:str}", include_in_schema=False, sync_to_thread=True)
def job_page(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> Response:
    job = jobs.get(store, job_id)
    return render(
        request,
        "job.html",
        **_summary_context(store, job),
        **_artifacts_context(store, settings, signer, job),
        hf=_hf_context(store, job),
        default_keys=DEFAULT_CHART_KEYS,
        health_alerts=health.alerts(store, job_id),
    )


@get("/jobs/{job_id:str}/summary", include_in_schema=False, sync_to_thread=True)
def job_summary(request: Request, store: NamedDependency[Store], job_id: FromPath[str]) -> Response:
    job = jobs.get(store, job_id)
    context = _summary_context(store, job)
    # The page's other panels (downloads, rollouts) refresh once when the job ends.
    headers = {} if context["live"] else {"HX-Trigger": "job-ended"}
    return render(request, "_job_summary.html", headers=headers, **context)


@post("/jobs/{job_id:str}/cancel", include_in_schema=False, opt={"rule": "owner", "owns": "job"})
async def cancel_job(
    request: Request, store: NamedDependency[Store], runner: NamedDependency[Runner], job_id: FromPath[str]
) -> Response:
    # The API's own cancel: the same checks and the same job_not_cancellable error.
    job = await anyio.to_thread.run_sync(jobs.cancel, store, runner, job_id)
    context = await anyio.to_thread.run_sync(_summary_context, store, job)
    return render(request, "_job_summary.html", headers={"HX-Trigger": "job-ended"}, **context)


class MetricsView(msgspec.Struct):
    status: str
    metrics: list[metrics.MetricPoint]
    available_keys: list[str]
    latest_step: int | None
    current_step: int | None
    total_steps: int | None


@get("/jobs/{job_id:str}/metrics.json", include_in_schema=False, sync_to_thread=True)
def job_metrics(
    store: NamedDependency[Store],
    job_id: FromPath[str],
    keys: FromQuery[str | None] = None,
    from_step: FromQuery[int | None] = None,
    max_points: FromQuery[int] = 1000,
) -> Response:
    """The API's metrics query, plus the job's status so the chart knows when to stop polling."""
    job = jobs.get(store, job_id)
    wanted = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    if from_step is not None and from_step < 0:
        from_step = 0
    result = metrics.query(store, job_id, wanted, from_step, None, max(1, min(max_points, 10_000)))
    view = MetricsView(
        status=job["status"],
        metrics=result.metrics,
        available_keys=result.available_keys,
        latest_step=result.latest_step,
        current_step=job["current_step"],
        total_steps=job["total_steps"],
    )
    return Response(msgspec.json.encode(view), media_type="application/json", headers={"Cache-Control": "no-store"})


async def _html_log(
    store: Store, data_dir: Path, job_id: str, offset: int, allowed: Callable[[], bool]
) -> AsyncIterator[ServerSentEventMessage]:
    """The API's log stream, each line escaped for the page, then a `done` event that tells
    the browser to close the stream instead of reconnecting."""
    async for message in logs.stream(store, data_dir, job_id, offset, allowed):
        if message.data is None:
            yield message
            continue
        line = str(message.data)
        css = "sentinel" if line.startswith("[Job ") else ("err" if "Error" in line or "Traceback" in line else "")
        yield ServerSentEventMessage(
            data=f'<div class="line {css}">{html.escape(line) or "&nbsp;"}</div>', id=message.id, event="line"
        )
    yield ServerSentEventMessage(data="end", event="done")


@get("/jobs/{job_id:str}/log", include_in_schema=False, media_type="text/event-stream")
async def job_log(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], job_id: FromPath[str]
) -> ServerSentEvent:
    jobs.get(store, job_id)
    offset = logs.event_offset(request.headers.get("last-event-id", ""))
    if offset is None:
        # A long log starts near its end; the full text is one link away.
        path = paths.train_log(settings.data_dir, job_id)
        total = path.stat().st_size if path.is_file() else 0
        offset = 0 if total <= LOG_TAIL_BYTES else _line_start(path, total - LOG_TAIL_BYTES)
    session = sessions.current(request)
    live = logs.key_is_live(store, session.key_id if session else None, session.expires if session else None)
    return ServerSentEvent(
        _html_log(store, settings.data_dir, job_id, offset, live),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _line_start(path: Path, offset: int) -> int:
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(65536)
    newline = chunk.find(b"\n")
    return offset + newline + 1 if newline >= 0 else offset


@get("/jobs/{job_id:str}/log.txt", include_in_schema=False, sync_to_thread=True)
def job_log_text(store: NamedDependency[Store], settings: NamedDependency[Settings], job_id: FromPath[str]) -> Stream:
    jobs.get(store, job_id)
    return logs.download_response(paths.train_log(settings.data_dir, job_id))


def _group_rollouts(samples: list[dict], sort: str) -> list[dict]:
    """Samples of one step in their GRPO groups (same prompt), each with its reward spread;
    a group whose rewards are all equal teaches nothing (every advantage is zero)."""
    groups: dict[Any, dict] = {}
    for sample in samples:
        key = sample.get("group", sample.get("prompt"))
        group = groups.setdefault(key, {"prompt": sample.get("prompt", ""), "items": []})
        group["items"].append(sample)
    out = []
    for group in groups.values():
        rewards = [s["reward"] for s in group["items"] if isinstance(s.get("reward"), (int, float))]
        mean = sum(rewards) / len(rewards) if rewards else None
        spread = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else None
        if sort == "reward":
            group["items"].sort(key=lambda s: -(s.get("reward") if s.get("reward") is not None else -math.inf))
        out.append(
            {
                **group,
                "mean": mean,
                "std": spread,
                "zero_variance": len(rewards) > 1 and spread < 1e-9,
                "key": prompt_key(group["prompt"]),  # the "Across steps" link
            }
        )
    if sort == "reward":
        out.sort(key=lambda g: -(g["mean"] if g["mean"] is not None else -math.inf))
    return out


@get("/jobs/{job_id:str}/rollouts", include_in_schema=False, sync_to_thread=True)
def job_rollouts(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
    step: FromQuery[str | None] = None,
    sort: FromQuery[str] = "order",
) -> Response:
    job = jobs.get(store, job_id)
    steps = store.sample_steps(job_id, 500)
    # An empty `step` (the picker's "latest") follows the newest step while the job runs.
    follow = not (step or "").strip().isdigit()
    step = (steps[0] if steps else None) if follow else int(step.strip())
    samples: list[dict] = []
    if step is not None:
        rows, _ = store.list_samples(job_id, step, ROLLOUTS_PER_STEP, None)
        samples = [artifacts.sample(settings, signer, job_id, r["seq"], r["data"]) for r in rows]
    clips = [{**s, "url": relative(s["video_url"], settings)} for s in samples if "video_url" in s]
    return render(
        request,
        "_rollouts.html",
        job=job,
        steps=steps,
        step=step,
        sort=sort if sort in ("order", "reward") else "order",
        follow=follow,
        live=job["status"] not in statuses.TERMINAL,
        groups=_group_rollouts([s for s in samples if not s.get("video")], sort),
        clips=clips,
    )


# -- rollouts across steps: one GRPO prompt's groups at every logged step, video clips by step -----

STEP_COLUMNS = 30  # columns shown; a longer run shows this many, evenly spaced, first and last kept


def prompt_key(prompt: Any) -> str:
    """A short stable name for a prompt's text, for links (a chat prompt can be kilobytes)."""
    return hashlib.sha256(str(prompt or "").encode()).hexdigest()[:16]


def _spread(every: list[int]) -> list[int]:
    """At most STEP_COLUMNS of these steps (sorted), evenly spaced, the first and the last kept."""
    if len(every) <= STEP_COLUMNS:
        return every
    last = len(every) - 1
    return [every[i] for i in sorted({round(i * last / (STEP_COLUMNS - 1)) for i in range(STEP_COLUMNS)})]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@get("/jobs/{job_id:str}/rollouts/prompt", include_in_schema=False, sync_to_thread=True)
def rollouts_by_step(
    request: Request,
    store: NamedDependency[Store],
    job_id: FromPath[str],
    prompt: FromQuery[str] = "",
    step: FromQuery[int | None] = None,
) -> Response:
    """One prompt's rollout groups at every logged step (how its completions and rewards
    evolved); `prompt` is its key from the rollouts panel or its text."""
    job = jobs.get(store, job_id)
    if not prompt.strip():
        raise bad_request(
            "invalid_value", "Name a prompt: ?prompt=<its key from the rollouts panel, or its text>.", "prompt"
        )
    # A key names a prompt of the step the link came from (the panel's: a few rows read), else
    # of any step (every sample of the job read).
    text = prompt
    if len(prompt) == 16 and prompt.isalnum():
        there = store.samples_at_steps(job_id, [step], None, ROLLOUTS_PER_STEP) if step is not None else []
        names = [r["data"].get("prompt") for r in there] or store.sample_prompts(job_id)
        text = next((name for name in names if prompt_key(name) == prompt), prompt)
    every = store.prompt_steps(job_id, text)
    steps = _spread(every)
    rows = store.samples_at_steps(job_id, steps, text, ROLLOUTS_PER_STEP * len(steps))
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        if not row["data"].get("video"):
            by_step.setdefault(row["step"], []).append({"id": row["seq"], **row["data"]})
    columns = []
    for at, samples in sorted(by_step.items()):
        rewards = [s["reward"] for s in samples if isinstance(s.get("reward"), (int, float))]
        columns.append({"step": at, "groups": _group_rollouts(samples, "order"), "mean": _mean(rewards)})
    return render(
        request,
        "_rollouts_by_step.html",
        job=job,
        mode="prompt",
        prompt=text if columns else prompt,
        key=prompt_key(text) if columns else prompt,  # Refresh's link: short, even for a long prompt
        columns=columns,
        shown=len(steps),
        total=len(every),
    )


@get("/jobs/{job_id:str}/rollouts/clips", include_in_schema=False, sync_to_thread=True)
def clips_by_step(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> Response:
    """A video job's validation clips as a grid: a row per validation prompt, a column per step."""
    job = jobs.get(store, job_id)
    every = sorted(store.sample_steps(job_id, 100_000))
    steps = _spread(every)
    cells: dict[tuple[str, int], dict] = {}
    prompts: dict[str, None] = {}
    for row in store.samples_at_steps(job_id, steps, None, ROLLOUTS_PER_STEP * len(steps)):
        sample = artifacts.sample(settings, signer, job_id, row["seq"], row["data"])
        if "video_url" not in sample:
            continue
        name = str(sample.get("prompt", ""))
        prompts.setdefault(name)
        cells.setdefault((name, row["step"]), {**sample, "url": relative(sample["video_url"], settings)})
    clip_steps = sorted({step for _, step in cells})
    grid = [{"prompt": p, "cells": [cells.get((p, step)) for step in clip_steps]} for p in prompts]
    return render(
        request,
        "_rollouts_by_step.html",
        job=job,
        mode="clips",
        steps=clip_steps,
        grid=grid,
        shown=len(steps),
        total=len(every),
    )


def _artifacts_context(store: Store, settings: Settings, signer: Signer, job: dict) -> dict:
    model = None
    if job["status"] == JobStatus.COMPLETED:
        try:
            manifest = artifacts.manifest(settings, signer, job)
            model = {
                "download_url": relative(manifest.download_url, settings),
                "files": [{"path": f.path, "bytes": f.bytes, "url": relative(f.url, settings)} for f in manifest.files],
            }
        except ApiError:
            model = None
    checkpoints = []
    for row in store.list_checkpoints(job["id"])[:50]:
        ckpt = artifacts.checkpoint(settings, signer, row)
        checkpoints.append(
            {
                "step": ckpt.step,
                "created_at": ckpt.created_at,
                "files": [{"path": f.path, "bytes": f.bytes, "url": relative(f.url, settings)} for f in ckpt.files],
            }
        )
    merge = _merge_context(store, settings, signer, job)
    return {"model": model, "checkpoints": checkpoints, **merge, **_disk_context(settings, job)}


def _merge_context(store: Store, settings: Settings, signer: Signer, job: dict) -> dict:
    """The merge panel of a completed LoRA GRPO job (None for any other) and the load snippet."""
    snippet = artifacts.load_snippet(job) if job["status"] == JobStatus.COMPLETED else None
    try:
        merges.check_mergeable(job)
    except ApiError:
        return {"merge": None, "snippet": snippet}
    merge = merges.state(settings, store, signer, job)
    files = [{"path": f.path, "bytes": f.bytes, "url": relative(f.url, settings)} for f in merge.files]
    view = {"status": merge.status, "error": merge.error, "size_bytes": merge.size_bytes, "files": files}
    return {"merge": view, "merged_snippet": artifacts.load_snippet(job, merged=True), "snippet": snippet}


def _disk_context(settings: Settings, job: dict) -> dict:
    """What the job takes on disk, and what the box has free: what Delete would give back."""
    return {
        "finished": job["status"] in statuses.TERMINAL,
        "job_size": artifacts.job_size(settings, job["id"]),
        "free_disk": artifacts.free_disk(settings),
    }


@get("/jobs/{job_id:str}/artifacts", include_in_schema=False, sync_to_thread=True)
def job_artifacts(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> Response:
    job = jobs.get(store, job_id)
    return render(request, "_artifacts.html", job=job, **_artifacts_context(store, settings, signer, job))


# -- merge and delete: the API's own service functions (merges.start, jobs.delete) ---------------


@get("/jobs/{job_id:str}/merge", include_in_schema=False, sync_to_thread=True)
def merge_panel(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> Response:
    job = jobs.get(store, job_id)
    return render(request, "_merge.html", job=job, **_merge_context(store, settings, signer, job))


@post("/jobs/{job_id:str}/merge", include_in_schema=False, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
def merge_job(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    signer: NamedDependency[Signer],
    job_id: FromPath[str],
) -> Response:
    # Refusals (not completed, not LoRA, already merging) reach the page's flash as the API's errors.
    merges.start(settings, store, signer, job_id)
    job = jobs.get(store, job_id)
    return render(request, "_merge.html", job=job, **_merge_context(store, settings, signer, job))


@post("/jobs/{job_id:str}/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
def delete_job(store: NamedDependency[Store], settings: NamedDependency[Settings], job_id: FromPath[str]) -> Response:
    # The API's DELETE: the same 409 job_active while it runs; gone, the page has nothing to show.
    jobs.delete(store, settings, job_id)
    return Response(b"", status_code=200, headers={"HX-Redirect": "/jobs"})


# -- the push to the Hugging Face Hub (hub.py) -------------------------------------------------


def _hf_context(store: Store, job: dict) -> dict:
    integration = hub.get(store)
    return {"push": hub.state(job), "configured": integration.configured, "username": integration.username}


@get("/jobs/{job_id:str}/hf_push", include_in_schema=False, sync_to_thread=True)
def hf_push_panel(request: Request, store: NamedDependency[Store], job_id: FromPath[str]) -> Response:
    job = jobs.get(store, job_id)
    return render(request, "_hf_push.html", job=job, hf=_hf_context(store, job))


@post("/jobs/{job_id:str}/push", include_in_schema=False, opt={"rule": "owner", "owns": "job"})
async def push_to_hub(
    request: Request, store: NamedDependency[Store], box: NamedDependency[Any], job_id: FromPath[str]
) -> Response:
    """The API's push (POST /v1/training_jobs/{job_id}/push): the same checks, errors shown in the panel."""
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert(
            {"repo": form.get("repo") or "", "artifact": form.get("artifact") or "", "private": "private" in form},
            hub.HfPush,
        )
        await anyio.to_thread.run_sync(hub.push_later, box, job_id, body)
        message = f"Pushing to {body.repo}…"
    except ApiError as exc:
        error = error_context(exc)
    job = await anyio.to_thread.run_sync(jobs.get, store, job_id)
    context = await anyio.to_thread.run_sync(_hf_context, store, job)
    return render(request, "_hf_push.html", job=job, hf=context, error=error, message=message)


# -- base against trained (evaluations.py): the API's own service functions ---------------------


def _evaluation_context(store: Store, job_id: str) -> dict:
    from .. import evaluations

    listed = evaluations.list_for_job(store, job_id)
    return {
        "evaluation": msgspec.to_builtins(listed[0]) if listed else None,
        "older": len(listed) - 1 if listed else 0,
        "max_prompts": evaluations.MAX_PROMPTS,
    }


@get("/jobs/{job_id:str}/evaluations", include_in_schema=False, sync_to_thread=True)
def evaluation_panel(request: Request, store: NamedDependency[Store], job_id: FromPath[str]) -> Response:
    job = jobs.get(store, job_id)
    return render(request, "_evaluation.html", job=job, **_evaluation_context(store, job_id))


@post("/jobs/{job_id:str}/evaluate", include_in_schema=False, opt={"rule": "owner", "owns": "job"})
async def evaluate_job(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], job_id: FromPath[str]
) -> Response:
    """The API's POST /v1/training_jobs/{job_id}/evaluate: the same checks, errors shown in the panel."""
    from .. import auth, evaluations

    form = await text_fields(request)
    body: dict[str, Any] = {"temperature": form.get("temperature") or 0}
    if form.get("source") == "prompts":
        body["prompts"] = [line.strip() for line in (form.get("prompts") or "").splitlines() if line.strip()]
    else:
        body["rows"] = form.get("rows") or evaluations.DEFAULT_ROWS
    if form.get("max_tokens"):
        body["max_tokens"] = form["max_tokens"]
    error = None
    try:
        data = convert(body, evaluations.EvaluateRequest, strict=False)
        await anyio.to_thread.run_sync(evaluations.start, store, settings, job_id, data, auth.caller_id(request))
    except ApiError as exc:
        error = error_context(exc)
    job = await anyio.to_thread.run_sync(jobs.get, store, job_id)
    context = await anyio.to_thread.run_sync(_evaluation_context, store, job_id)
    return render(request, "_evaluation.html", job=job, error=error, **context)
