"""/playground: chat with a deployment in the browser. Pick a deployment (or deploy a completed
job in one click), set a system prompt and the sampling settings, and read the answer as it
streams. The page posts to the dashboard's own chat route, which calls the same service as
`POST /v1/deployments/{id}/chat/completions` (the session, not an API key, guards it)."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect

from .. import deployments
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
) -> Response:
    rows = store.list_deployments(limit=50)
    live = [r for r in rows if r["status"] in deployments.LIVE]
    chosen = next((r for r in rows if r["id"] == deployment), live[0] if live else None)
    completed = [j for j in store.jobs_with_status("completed") if j["method"] == "grpo"][-20:]
    return render(
        request,
        "playground.html",
        deployments=[deployments.to_api(r, settings) for r in rows],
        chosen=deployments.to_api(chosen, settings) if chosen else None,
        jobs=list(reversed(completed)),
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
