"""/playground: chat with a deployment in the browser. Pick a deployment (or deploy a completed
job in one click), set a system prompt and the sampling settings, and read the answer as it
streams. The page posts to the dashboard's own chat route, which calls the same service as
`POST /v1/deployments/{id}/chat/completions` (the session, not an API key, guards it).

Its Compare section is a completed GRPO job's base-against-trained evaluation (evaluations.py):
the job page's own panel (`/jobs/{id}/evaluations`, its form posting to `/jobs/{id}/evaluate`),
for the job picked here: the chosen deployment's job unless another is asked for."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect

from .. import deployment_requests, deployments
from ..auth import caller_id
from ..devices import Inventory
from ..settings import Settings
from ..store import Store
from .rendering import render, text_fields


def _gpu_type(inventory: Inventory) -> str:
    """One click deploys on the cpu pool when the box has one (tiny models), else its first GPU type."""
    return "cpu" if "cpu" in inventory.types else next(iter(inventory.types), "cpu")


@get("/playground", include_in_schema=False, sync_to_thread=True)
def playground_page(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    deployment: FromQuery[str | None] = None,
    compare: FromQuery[str | None] = None,
) -> Response:
    rows = store.list_deployments(limit=50)
    live = [r for r in rows if r["status"] in deployments.LIVE]
    chosen = next((r for r in rows if r["id"] == deployment), live[0] if live else None)
    completed = list(reversed([j for j in store.jobs_with_status("completed") if j["method"] == "grpo"][-20:]))
    ids = [j["id"] for j in completed]
    deployed = chosen["model"] if chosen and chosen["source"] == "training_job" else None
    # The asked-for job, else the chosen deployment's, else the newest: one is always shown.
    compared = next((i for i in (compare, deployed) if i in ids), ids[0] if ids else None)
    return render(
        request,
        "playground.html",
        deployments=[deployments.to_api(r, settings) for r in rows],
        chosen=deployments.to_api(chosen, settings) if chosen else None,
        jobs=completed,
        compared=compared,
    )


@get("/playground/{deployment_id:str}/status", include_in_schema=False, sync_to_thread=True)
def deployment_status(store: NamedDependency[Store], deployment_id: FromPath[str]) -> dict:
    """What the page polls while the chosen deployment loads: it enables the chat when this says
    serving, without a reload that would wipe what is typed in Compare."""
    return {"status": deployments.get(store, deployment_id)["status"]}


@get("/playground/{deployment_id:str}/requests", include_in_schema=False, sync_to_thread=True)
def deployment_requests_panel(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], deployment_id: FromPath[str]
) -> Response:
    """The chosen deployment's last 24 hours and newest requests: the API's metrics and request
    log, refreshed by htmx."""
    return render(
        request,
        "_deployment_requests.html",
        deployment_id=deployment_id,
        metrics=deployment_requests.metrics(store, settings, deployment_id),
        requests=deployment_requests.list_requests(store, deployment_id, 10, None, None, None, False).data,
    )


@post("/playground/deploy", include_in_schema=False, opt={"rule": "member"})
async def deploy_job(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    inventory: NamedDependency[Inventory],
) -> Response:
    """One click: deploy a completed job's model (or a model the box has) and open it here."""
    form = await text_fields(request)
    source = "training_job" if form.get("job_id") else "huggingface"
    model = form.get("job_id") or form.get("model") or ""
    body = deployments.CreateDeployment(
        model=model,
        name=form.get("name") or model,
        gpu=deployments.GpuSpec(gpu_type=_gpu_type(inventory), gpu_count=1),
        source=source,
    )
    row = await anyio.to_thread.run_sync(
        lambda: deployments.create(store, settings, inventory, body, caller_id(request))
    )
    return Redirect(f"/playground?deployment={row['id']}", status_code=303)


@post("/playground/{deployment_id:str}/chat", include_in_schema=False, opt={"rule": "member"})
async def playground_chat(
    request: Request,
    deployment_id: FromPath[str],
    data: JSONBody[deployments.ChatRequest],
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
) -> Any:
    return await deployments.chat(request, store, settings, deployment_id, data)
