"""The jobs list: search, filters by status and method, pages, the picks for /compare, and a
table that refreshes itself while any of its jobs is live."""

from __future__ import annotations

from urllib.parse import urlencode

import anyio
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from .. import artifacts, devices, statuses
from ..auth import caller_id
from ..devices import Inventory
from ..errors import ApiError
from ..jobs import METHODS, UpdateJob, update_labels
from ..jobs import get as get_job
from ..settings import Settings
from ..store import Store
from .rendering import PAGE_SIZE, convert, error_context, render, text_fields

MAX_SEARCH = 200


def _job_filters(status: str | None, method: str | None, q: str | None) -> tuple[str | None, str | None, str | None]:
    search = (q or "").strip()[:MAX_SEARCH] or None
    return (status if status in statuses.ALL else None, method if method in METHODS else None, search)


def _jobs_table(
    store: Store,
    status: str | None,
    method: str | None,
    q: str | None,
    after: str | None,
    settings: Settings,
    mine: str | None = None,
) -> dict:
    """`mine`: the session key's id, to list only its jobs (the "mine" filter)."""
    rows, more = store.list_jobs(PAGE_SIZE, after, status, method, search=q, created_by=mine)
    # "Now" for the list: a GRPO job's latest reward; any job's latest loss is on its row.
    rewards = store.latest_metric_values([r["id"] for r in rows if r["method"] == "grpo"], "reward")
    # Throughput now, in each method's own unit (the trainers log it as throughput/*).
    throughput = {
        **{
            k: (v, "tok/s")
            for k, v in store.latest_metric_values(
                [r["id"] for r in rows if r["method"] == "grpo"], "throughput/tokens_per_s"
            ).items()
        },
        **{
            k: (v, "clips/s")
            for k, v in store.latest_metric_values(
                [r["id"] for r in rows if r["method"] != "grpo"], "throughput/clips_per_s"
            ).items()
        },
    }
    query = {k: v for k, v in (("status", status), ("method", method), ("q", q), ("mine", "1" if mine else None)) if v}
    return {
        "jobs": rows,
        "rewards": rewards,
        "throughput": throughput,
        "has_more": more,
        "next_url": "/jobs?" + urlencode({**query, "after": rows[-1]["id"]}) if more and rows else None,
        "newest_url": "/jobs" + ("?" + urlencode(query) if query else ""),
        "table_url": "/jobs/table?" + urlencode({**query, **({"after": after} if after else {})}),
        "live": any(r["status"] not in statuses.TERMINAL for r in rows),
        "status": status,
        "method": method,
        "q": q,
        "mine": bool(mine),
        "after": after,
        # What each job takes on disk and what is left: the cue to delete finished jobs.
        "sizes": artifacts.listed_sizes(settings, store, rows),
        "free_disk": artifacts.free_disk(settings),
    }


@get("/jobs", include_in_schema=False, sync_to_thread=True)
def jobs_page(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    inventory: NamedDependency[Inventory],
    status: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    compare_with: FromQuery[str | None] = None,
    mine: FromQuery[str | None] = None,
) -> Response:
    status, method, q = _job_filters(status, method, q)
    owner = caller_id(request) if mine else None
    table = _jobs_table(store, status, method, q, after, settings, owner)
    empty = (
        not table["jobs"] and not status and not method and not q and not after and not owner and not store.any_job()
    )
    base = store.get_job(compare_with) if compare_with else None
    return render(
        request,
        "jobs.html",
        counts=store.job_counts(),
        empty_box=empty,
        has_cpu=devices.CPU in inventory.types,
        compare_with=base,
        **table,
    )


@get("/jobs/table", include_in_schema=False, sync_to_thread=True)
def jobs_table(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    status: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    mine: FromQuery[str | None] = None,
) -> Response:
    status, method, q = _job_filters(status, method, q)
    owner = caller_id(request) if mine else None
    return render(request, "_job_table.html", **_jobs_table(store, status, method, q, after, settings, owner))


@post("/jobs/{job_id:str}/labels", include_in_schema=False, opt={"rule": "owner", "owns": "job"})
async def save_labels(request: Request, store: NamedDependency[Store], job_id: FromPath[str]) -> Response:
    """The job page's tags and note form: the API's PATCH, with its checks and its errors."""
    form = await text_fields(request)
    tags = [t.strip() for t in (form.get("tags") or "").split(",") if t.strip()]
    error, message = None, None
    try:
        body = convert({"tags": tags, "note": form.get("note") or None}, UpdateJob)
        job = await anyio.to_thread.run_sync(update_labels, store, job_id, body)
        message = "Saved."
    except ApiError as exc:
        error = error_context(exc)
        job = await anyio.to_thread.run_sync(get_job, store, job_id)
        # Show what was typed, with the error, rather than the stored values.
        job = {**job, "tags": tags, "note": form.get("note") or None}
    return render(request, "_job_labels.html", job=job, error=error, message=message)
