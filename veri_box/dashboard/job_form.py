"""The new-job form: built from the hyperparameter schemas, filled from defaults or a job to
clone, and turned into the API's own CreateJob for jobs.submit; and the first-run demo."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromQuery

from .. import dataset_files, datasets, devices, hyperparameters, jobs, paths
from .. import reward_functions as rf_mod
from ..devices import Inventory
from ..errors import ApiError
from ..integrations import OPENREWARD
from ..placement import Placement
from ..settings import Settings
from ..store import Store
from .rendering import convert, error_context, inventory_rows, is_htmx, render


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_hyperparameter(field: dict, raw: str | None) -> tuple[bool, Any]:
    """(given?, value): empty means 'use the default'; text that is not a number is passed
    on as text, so the API's own rules name the field and the problem."""
    if field["kind"] == "bool":
        return True, raw in ("true", "on", "1")
    text = (raw or "").strip() if field["kind"] != "str" else (raw or "")
    if field["kind"] == "list":
        items = [line.strip() for line in text.splitlines() if line.strip()]
        return bool(items) or field["default"] != [], items
    if text == "" or (field["kind"] == "str" and not text.strip()):
        return False, None
    if field["kind"] == "int":
        try:
            return True, int(text)
        except ValueError:
            try:
                as_float = float(text)
                return True, int(as_float) if as_float.is_integer() else as_float
            except ValueError:
                return True, text
    if field["kind"] == "float":
        try:
            return True, float(text)
        except ValueError:
            return True, text
    return True, text


def job_body(form: dict[str, Any]) -> dict:
    """The API request body this form describes (the same CreateJob the API decodes), less the
    chosen reward functions: those go to jobs.submit as pairs (see reward_choices)."""
    method = form.get("method") or "grpo"
    body: dict[str, Any] = {
        "method": method,
        "base_model": (form.get("base_model") or "").strip(),
        "dataset_id": form.get("dataset_id") or "",
        "output_name": (form.get("output_name") or "").strip() or "default",
        "gpu": {"type": form.get("gpu_type") or None},
    }
    count = (form.get("gpu_count") or "").strip()
    if count:
        body["gpu"]["count"] = int(count) if count.isdigit() else count
    if method in hyperparameters.SCHEMAS:
        hp = {}
        for field in hyperparameters.describe(method):
            given, value = _parse_hyperparameter(field, form.get(f"hp.{field['name']}"))
            if given:
                hp[field["name"]] = value
        body["hyperparameters"] = hp
    if method == "grpo":
        environments = [e.strip() for e in (form.get("environments") or "").split(",") if e.strip()]
        if environments:
            body["environments"] = {e: {"splits": ["train"]} for e in environments}
    if (form.get("resume_from") or "").strip():
        body["resume_from"] = form["resume_from"].strip()
    return body


def reward_choices(form: dict[str, Any]) -> list[tuple[str, Any]]:
    """(id, weight) of each stored reward function the form picked; a weight that is not a
    number stays text, for the API's own check to name."""
    if (form.get("method") or "grpo") != "grpo":
        return []
    chosen = [rf for rf in form.get("reward_function_ids", []) if rf]
    return [(rf, _number(form.get(f"weight.{rf}", "").strip() or "1")) for rf in chosen]


def _job_request(form: dict[str, Any]) -> tuple[jobs.CreateJob, list[tuple[str, float]]]:
    """The decoded body and the reward function pairs to submit. The weights are decoded as the
    body's reward_weights, so the API's bounds check them and its errors name them; the body
    then goes without them, since jobs.submit takes each weight with its id."""
    choices = reward_choices(form)
    weights = [weight for _, weight in choices] or None
    body = convert({**job_body(form), "reward_weights": weights}, jobs.CreateJob)
    pairs = [(rf_id, weight) for (rf_id, _), weight in zip(choices, body.reward_weights or [])]
    return msgspec.structs.replace(body, reward_weights=None), pairs


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _form_from_job(job: dict) -> dict[str, Any]:
    form: dict[str, Any] = {
        "method": job["method"],
        "base_model": job["base_model"],
        "dataset_id": job["dataset_id"],
        "output_name": job["output_name"],
        "gpu_type": job["gpu_requested"]["type"],
        "gpu_count": str(job["gpu_requested"]["count"]),
        "reward_function_ids": [rf["id"] for rf in job["reward_functions"] or []],
        "environments": ", ".join(job["environments"] or {}),
    }
    for rf in job["reward_functions"] or []:
        form[f"weight.{rf['id']}"] = _form_value(rf.get("weight", 1.0))
    for name, value in (job["hyperparameters"] or {}).items():
        form[f"hp.{name}"] = _form_value(value)
    return form


def _default_form(method: str) -> dict[str, Any]:
    form: dict[str, Any] = {"method": method, "reward_function_ids": [], "gpu_count": "1"}
    for field in hyperparameters.describe(method):
        form[f"hp.{field['name']}"] = _form_value(field["default"])
    return form


def _local_models(settings: Settings, store: Store) -> list[str]:
    """Suggestions for base_model: models under DATA_DIR/models and the latest jobs' models."""
    found = []
    models = paths.models_dir(settings.data_dir)
    if models.is_dir():
        found += sorted(str(p) for p in models.iterdir() if (p / "config.json").is_file())
    for model in store.recent_base_models(20):
        if model not in found:
            found.append(model)
    return found


def _new_job_context(store: Store, settings: Settings, inventory: Inventory, form: dict, clone_of: str | None) -> dict:
    method = form.get("method") if form.get("method") in jobs.METHODS else "grpo"
    datasets_, _ = store.list_datasets(100, None)
    reward_fns, _ = store.list_reward_functions(100, None)
    chosen = set(form.get("reward_function_ids") or [])
    # A cloned job's uploaded function may be older than the newest 100: keep it pickable.
    for rf_id in chosen - {r["id"] for r in reward_fns}:
        row = store.get_reward_function(rf_id)
        if row is not None:
            reward_fns.append(row)
    compatible = {d["id"]: method in dataset_files.compatible_methods(d["format"]) for d in datasets_}
    return {
        "form": form,
        "method": method,
        "fields": hyperparameters.describe(method),
        "datasets": datasets_,
        "compatible": compatible,
        "reward_functions": reward_fns,
        "inventory": inventory_rows(store, inventory),
        "models": _local_models(settings, store),
        "openreward": store.get_integration(OPENREWARD) is not None,
        "clone_of": clone_of,
    }


@get("/jobs/new", include_in_schema=False, sync_to_thread=True)
def new_job_page(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    inventory: NamedDependency[Inventory],
    clone: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    resume_from: FromQuery[str | None] = None,
) -> Response:
    form = _default_form(method if method in jobs.METHODS else "grpo")
    if clone:
        form = _form_from_job(jobs.get(store, clone))
        form["output_name"] = f"{form['output_name']}-{'resumed' if resume_from else 'copy'}"
    if resume_from:
        form["resume_from"] = resume_from
    if not form.get("gpu_type") and inventory.types:
        form["gpu_type"] = next(iter(inventory.types))
    context = _new_job_context(store, settings, inventory, form, clone)
    template = "_new_job_form.html" if is_htmx(request) else "new_job.html"
    return render(request, template, error=None, **context)


@post("/jobs/new", include_in_schema=False)
async def create_job(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    inventory: NamedDependency[Inventory],
    placement: NamedDependency[Placement],
) -> Response:
    raw = await request.form()
    form: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(v, str)}
    form["reward_function_ids"] = [v for v in raw.getall("reward_function_ids") if isinstance(v, str)]

    def submit() -> dict:
        body, pairs = _job_request(form)
        return jobs.submit(body, store, settings, placement, pairs or None)

    try:
        job = await anyio.to_thread.run_sync(submit)
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
        context = await anyio.to_thread.run_sync(
            lambda: _new_job_context(store, settings, inventory, form, form.get("clone_of") or None)
        )
        return render(request, "_new_job_form.html", error=error, **context)
    return Response(b"", headers={"HX-Redirect": f"/jobs/{job['id']}"})


@post("/demo", include_in_schema=False, sync_to_thread=True)
def start_demo(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    placement: NamedDependency[Placement],
) -> Response:
    """The first-run demo: `veri-box demo`'s built-in tiny model (the trainer builds it), prompts,
    reward and settings, submitted through the same functions the API uses."""
    from .. import demo  # only here: it brings the HTTP client the `veri-box demo` command uses

    rows = "".join(json.dumps({"prompt": p}) + "\n" for p in demo.PROMPTS).encode()
    spool = paths.spool_dir(settings.data_dir)
    spool.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool, prefix="demo-", suffix=".jsonl") as fh:
        fh.write(rows)
        fh.flush()
        dataset = datasets.store_upload(store, settings, "demo prompts", "demo.jsonl", Path(fh.name), len(rows))
    reward = store.insert_reward_function(rf_mod.prepare(settings, "letter_a", demo.REWARD))
    body = convert(
        {
            "base_model": demo.TINY_LM,
            "dataset_id": dataset["id"],
            "reward_function_id": reward["id"],
            "output_name": "tiny-demo",
            "hyperparameters": demo.HYPERPARAMETERS,
            "gpu": {"type": devices.CPU, "count": 1},
        },
        jobs.CreateJob,
    )
    job = jobs.submit(body, store, settings, placement)
    return Response(b"", headers={"HX-Redirect": f"/jobs/{job['id']}"})
