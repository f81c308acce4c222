"""/compare?jobs=a,b,c: several jobs' metrics overlaid, one colour per job, beside a table of
the settings in which they differ. The page is a shell: the browser reads each job's metrics
from the same per-job endpoint the job page charts (no API of its own), so the server's work
is the jobs, their key lists and the diff, whatever the runs' lengths."""

from __future__ import annotations

import json
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from .. import jobs
from ..errors import bad_request
from ..store import Store
from .rendering import render

MAX_JOBS = 10
# One per job, in the order the jobs were named (the chart script falls back to the same list).
COLORS = ["#2457c5", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d7c0f", "#475569"]
# Job fields compared beside the hyperparameters: what else makes two runs differ.
JOB_FIELDS = ("method", "base_model", "dataset_id", "reward_functions", "environments", "gpu_requested", "resume_from")


def job_ids(values: list[str] | None) -> list[str]:
    """`jobs=a,b,c` (the page's own links) or `jobs=a&jobs=b` (the list's form without script),
    in order, each once."""
    ids: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if part and part not in ids:
                ids.append(part)
    if not ids:
        raise bad_request("missing_field", "Name the jobs to compare: /compare?jobs=JOB_ID,JOB_ID.", "jobs")
    if len(ids) > MAX_JOBS:
        raise bad_request("invalid_value", f"Compare at most {MAX_JOBS} jobs at once ({len(ids)} named).", "jobs")
    return ids


def _shown(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def differences(rows: list[dict]) -> list[dict]:
    """The settings whose values are not the same in every job (a key one job lacks differs),
    hyperparameters first by name, then the job fields; each with one shown value per job."""
    out = []
    hp_keys = sorted({k for r in rows for k in (r["hyperparameters"] or {})})
    for origin, keys in (("hyperparameters", hp_keys), ("job", JOB_FIELDS)):
        for key in keys:
            values = [
                (r["hyperparameters"] or {}).get(key) if origin == "hyperparameters" else r.get(key) for r in rows
            ]
            shown = [_shown(v) for v in values]
            if len(set(shown)) > 1:
                out.append({"key": key, "origin": origin, "cells": shown})
    return out


def context(store: Store, ids: list[str]) -> dict:
    rows = [jobs.get(store, job_id) for job_id in ids]
    entries = [
        {"id": r["id"], "name": r["output_name"], "status": r["status"], "color": COLORS[i % len(COLORS)]}
        for i, r in enumerate(rows)
    ]
    methods = {r["method"] for r in rows}
    return {
        "jobs": rows,
        "entries": entries,
        "diff": differences(rows),
        # Default charts follow the method when the jobs share one.
        "method": methods.pop() if len(methods) == 1 else "grpo",
        "key_counts": {r["id"]: len(store.metric_keys(r["id"])) for r in rows},
    }


@get("/compare", include_in_schema=False, sync_to_thread=True)
def compare_page(
    request: Request,
    store: NamedDependency[Store],
    named: Annotated[list[str] | None, QueryParameter(name="jobs")] = None,
) -> Response:
    return render(request, "compare.html", **context(store, job_ids(named)))
