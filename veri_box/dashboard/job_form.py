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

from .. import dataset_files, datasets, devices, hyperparameters, jobs, memory, models, paths
from .. import reward_functions as rf_mod
from ..auth import caller_id
from ..devices import Inventory
from ..errors import ApiError
from ..integrations import OPENREWARD
from ..placement import Placement
from ..settings import Settings
from ..store import Store
from .rendering import convert, error_context, inventory_rows, is_htmx, render, size


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
        # isdecimal, not isdigit: "²" is a digit int() refuses; as text the API names the field.
        body["gpu"]["count"] = int(count) if count.isdecimal() else count
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
        if (form.get("reward_source") or "").strip():
            body["reward_source"] = form["reward_source"]
        health = (form.get("health") or "").strip()
        if health:
            try:
                body["hyperparameters"]["health"] = json.loads(health)
            except ValueError:
                body["hyperparameters"]["health"] = health  # as text: the API names the field
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
        if name == "health":  # an object, not one of describe()'s flat fields: its own JSON field
            form["health"] = json.dumps(value)
        else:
            form[f"hp.{name}"] = _form_value(value)
    return form


def _default_form(method: str) -> dict[str, Any]:
    form: dict[str, Any] = {"method": method, "reward_function_ids": [], "gpu_count": "1"}
    for field in hyperparameters.describe(method):
        form[f"hp.{field['name']}"] = _form_value(field["default"])
    return form


def _parameters(n: int | None) -> str:
    if not n:
        return "size unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit} parameters"
    return f"{n} parameters"


SOURCES = {"built_in": "built in", "hf_cache": "HF cache", "local": "local folder"}


def model_label(model: models.Model) -> str:
    """How a suggestion reads: 'Qwen3ForCausalLM · 4.02 B parameters · 7.5 GiB · HF cache'."""
    on_disk = size(model.size_bytes) if model.size_bytes else "built on first use" if model.path is None else None
    bits = [model.architecture or "unknown architecture", _parameters(model.parameters), on_disk, SOURCES[model.source]]
    return " · ".join(b for b in bits if b)


def _model_suggestions(settings: Settings, store: Store, method: str) -> list[dict]:
    """The base_model suggestions: GET /v1/models' own list (built-ins, so never empty on a new
    box; the HF cache; local model folders), those that fit the method first."""
    listed = models.list_models(settings, store)
    fitting = [m for m in listed if method in m.methods]
    others = [m for m in listed if method not in m.methods]
    return [
        {"id": m.id, "label": model_label(m), "fits": method in m.methods, "methods": m.methods}
        for m in fitting + others
    ]


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
        "models": _model_suggestions(settings, store, method),
        "openreward": store.get_integration(OPENREWARD) is not None,
        "clone_of": clone_of,
    }


class _GpuOnly(msgspec.Struct):
    """The body's `gpu`, decoded as CreateJob decodes it, so its errors name `gpu.count`."""

    gpu: jobs.GpuRequest


def memory_preview(form: dict[str, Any], store: Store, settings: Settings, placement: Placement) -> dict:
    """What the form's memory panel shows for its current values, by submit's own steps: the
    model as models.check finds it, the hyperparameters as hyperparameters.resolve completes
    them, and memory.fit_for_job's estimate and verdict (the one submit refuses or warns with).
    `state`: "estimate", "unchecked" (a custom trainer, or no config to estimate from), "waiting"
    (no model or device yet) or "error" (the API's own error for these values)."""
    method = form.get("method") if form.get("method") in jobs.METHODS else "grpo"
    body = job_body({**form, "method": method})
    gpu_type = body["gpu"]["type"]
    if not body["base_model"] or not gpu_type:
        return {"state": "waiting", "need": "a base model" if not body["base_model"] else "a device type"}
    try:
        count = convert({"gpu": body["gpu"]}, _GpuOnly).gpu.count or 1  # the API's bounds and words
        found = models.check(body["base_model"], method, settings, store)
        hp = hyperparameters.resolve(method, body.get("hyperparameters"))
    except ApiError as exc:
        return {"state": "error", "error": error_context(exc)}
    if found is None:
        return {"state": "unchecked", "why": f"{method} runs a custom trainer on this box (--trainers): not estimated."}
    dataset = store.get_dataset(form["dataset_id"]) if form.get("dataset_id") else None
    gpu = {"type": gpu_type, "count": count}
    fit = memory.fit_for_job(found, method, hp, gpu, dataset, memory.most_gpus(placement, gpu_type))
    model = {"id": found.model.id, "label": model_label(found.model)}
    if fit is None:
        return {"state": "unchecked", "model": model, "why": "Its config does not give its shape: not estimated."}
    parts = sorted(fit.estimate.parts.items(), key=lambda p: -p[1])
    return {"state": "estimate", "model": model, "fit": fit, "parts": parts, "dataset": dataset}


def _query_form(request: Request) -> dict[str, Any]:
    query = request.query_params
    form: dict[str, Any] = {k: query.get(k) for k in query.keys()}
    form["reward_function_ids"] = [v for v in query.getall("reward_function_ids", []) if v]
    return form


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


@get("/jobs/new/memory-estimate", include_in_schema=False, sync_to_thread=True)
def memory_estimate(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    placement: NamedDependency[Placement],
) -> Response:
    """The form's memory panel: the form's values (hx-include of the whole form) through
    submit's own estimate and verdict."""
    preview = memory_preview(_query_form(request), store, settings, placement)
    return render(request, "_memory_estimate.html", **preview)


@post("/jobs/new", include_in_schema=False, opt={"rule": "member"})
async def create_job(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    inventory: NamedDependency[Inventory],
    placement: NamedDependency[Placement],
) -> Response:
    raw = await request.form()
    form: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(v, str)}
    # A browser sends no reward_function_ids at all when no box is ticked (a written source).
    form["reward_function_ids"] = [v for v in raw.getall("reward_function_ids", []) if isinstance(v, str)]

    def submit() -> dict:
        body, pairs = _job_request(form)
        return jobs.submit(body, store, settings, placement, pairs or None, created_by=caller_id(request))

    try:
        job = await anyio.to_thread.run_sync(submit)
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
        context = await anyio.to_thread.run_sync(
            lambda: _new_job_context(store, settings, inventory, form, form.get("clone_of") or None)
        )
        return render(request, "_new_job_form.html", error=error, **context)
    return Response(b"", headers={"HX-Redirect": f"/jobs/{job['id']}"})


@post("/demo", include_in_schema=False, sync_to_thread=True, opt={"rule": "member"})
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
        dataset = datasets.store_upload(
            store, settings, "demo prompts", "demo.jsonl", Path(fh.name), len(rows), caller_id(request)
        )
    reward = store.insert_reward_function(
        {**rf_mod.prepare(settings, "letter_a", demo.REWARD), "created_by": caller_id(request)}
    )
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
    job = jobs.submit(body, store, settings, placement, created_by=caller_id(request))
    return Response(b"", headers={"HX-Redirect": f"/jobs/{job['id']}"})
