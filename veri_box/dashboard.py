"""The dashboard: server-rendered pages (Jinja2) with htmx fragments, behind a session login.

Handlers are thin: every write goes through the same service function the API's controller
calls, so the dashboard accepts and rejects exactly what the API does, and shows the API's
error code and message as HTML.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import jinja2
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie, UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.response import File, Redirect, ServerSentEvent, ServerSentEventMessage
from litestar.static_files import create_static_files_router

from . import (
    __version__,
    api_keys,
    artifacts,
    dataset_files,
    datasets,
    devices,
    hyperparameters,
    integrations,
    jobs,
    logs,
    metrics,
    paths,
    statuses,
)
from . import reward_functions as rf_mod
from .api_keys import CreateApiKey
from .auth import Signer
from .devices import Inventory
from .errors import ApiError, bad_request, error_body, split_validation_error, to_api_error, validation_error
from .integrations import OPENREWARD, OpenRewardSettings
from .runner import Runner
from .sessions import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_TTL_S,
    CsrfFailed,
    NotLoggedIn,
    Session,
    Sessions,
    current,
    login_guard,
    reading_guard,
    tokens_match,
)
from .settings import Settings
from .store import Store

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"
# Vendored from the npm registry (see README); the version is in each file name.
ASSETS = {
    "htmx": "htmx-2.0.11.min.js",
    "htmx_sse": "htmx-ext-sse-2.2.4.min.js",
    "uplot_js": "uPlot-1.6.32.min.js",
    "uplot_css": "uPlot-1.6.32.min.css",
    "css": "veri-box-1.css",
    "js": "veri-box-1.js",
}
PAGE_SIZE = 25
EVENTS_SHOWN = 200
ROLLOUTS_PER_STEP = 1000
LOG_TAIL_BYTES = 256 * 1024
DEFAULT_CHART_KEYS = ["reward", "loss", "kl", "completions/mean_length"]
# htmx swaps 4xx answers too (forms answer validation errors with 200 anyway), and never
# logs them as errors: a refused form is not a broken page.
HTMX_CONFIG = json.dumps(
    {
        "responseHandling": [
            {"code": "204", "swap": False},
            {"code": "[23]..", "swap": True},
            {"code": "[4]..", "swap": True, "error": False},
            {"code": "...", "swap": True, "error": False},
        ],
        "historyCacheSize": 0,
        "includeIndicatorStyles": False,
    }
)


# -- rendering ---------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def when(value: str | None) -> str:
    """'2026-04-14T12:10:00.123Z' -> '2026-04-14 12:10:00' (UTC; the title shows the raw stamp)."""
    return value[:19].replace("T", " ") if value else "–"


def size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def progress(job: dict) -> dict:
    """Step x of y, the fraction done and an ETA from the pace so far."""
    step, total = job.get("current_step"), job.get("total_steps")
    fraction = min(step / total, 1.0) if step is not None and total else None
    eta = None
    started = _parse_time(job.get("started_at"))
    if job["status"] == "running" and started and step and total and step < total:
        elapsed = (datetime.now(UTC) - started).total_seconds()
        eta = elapsed / step * (total - step)
    if job["status"] == "completed":
        fraction = 1.0
    return {"step": step, "total": total, "fraction": fraction, "eta": eta}


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
    auto_reload=False,
)
_env.filters.update(duration=duration, when=when, size=size, number=number)
_env.globals.update(
    assets=ASSETS,
    version=__version__,
    progress=progress,
    statuses=statuses.ALL,
    methods=jobs.METHODS,
    htmx_config=HTMX_CONFIG,
)


def render(
    request: Request, name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> Response:
    session = current(request)
    page = _env.get_template(name).render(
        request_path=request.url.path,
        session=session,
        csrf=session.csrf if session else "",
        **context,
    )
    return Response(
        page,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def error_context(exc: Exception) -> dict:
    """The API's error, by the API's one mapper: status, type, code, message, param."""
    err = to_api_error(exc)
    return {"status": err.status, **error_body(err.status, err.code, err.message, err.param)["error"]}


def dashboard_errors(request: Request, exc: Exception) -> Response:
    """Every error of a dashboard route as HTML: pages get an error page with the API's
    status; htmx requests get the error in the page's flash area (with 200, so the browser
    does not log a failed request for an answer the user should simply read)."""
    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    if "text/event-stream" in request.headers.get("accept", ""):
        # An EventSource cannot follow a redirect to a page: end its stream cleanly instead
        # (the `done` event closes it without a reconnect).
        line = "[Log in again to follow this log]" if isinstance(exc, NotLoggedIn) else f"[{to_api_error(exc).message}]"
        return Response(
            f'event: line\ndata: <div class="line err">{html.escape(line)}</div>\n\nevent: done\ndata: end\n\n',
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    if isinstance(exc, NotLoggedIn):
        if is_htmx(request):
            return Response(b"", status_code=200, headers={"HX-Redirect": f"/login?next={target}"})
        return Redirect(f"/login?next={target}", status_code=303)
    if isinstance(exc, CsrfFailed):
        error = {
            "status": 403,
            "type": "authentication_error",
            "code": "csrf_failed",
            "message": "This form is out of date (its security token does not match your session); "
            "reload the page and try again.",
            "param": None,
        }
    else:
        error = error_context(exc)
    if is_htmx(request):
        return render(request, "_flash.html", headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}, error=error)
    return render(request, "error.html", status_code=error["status"], error=error)


def _convert(body: dict, type_: type) -> Any:
    """msgspec.convert with the API's own reading of a validation failure."""
    try:
        return msgspec.convert(body, type=type_)
    except msgspec.ValidationError as err:
        raise validation_error(*split_validation_error(err)) from None


def _relative(url: str | None, settings: Settings) -> str | None:
    """Signed links are absolute (for API clients); in the page they work from any host name."""
    return url.removeprefix(settings.base_url) if url else None


# -- login -------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a page of this box (browsers read a backslash as a slash: `/\\host` is another site)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not target.startswith(("/login", "/logout"))
    ):
        return target
    return "/jobs"


def _cookie(settings: Settings, key: str, value: str, max_age: int, path: str = "/") -> Cookie:
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="lax",
        secure=settings.base_url.startswith("https://"),
    )


@get("/", include_in_schema=False)
async def home(request: Request) -> Redirect:
    return Redirect("/jobs" if current(request) else "/login", status_code=303)


@get("/login", include_in_schema=False, sync_to_thread=False)
def login_page(
    request: Request,
    settings: NamedDependency[Settings],
    sessions: NamedDependency[Sessions],
    next: FromQuery[str | None] = None,
) -> Response:
    if current(request):
        return Redirect(_safe_next(next), status_code=303)
    token = sessions.signer.login_token()
    response = render(request, "login.html", next=_safe_next(next), login_token=token, error=None)
    response.cookies.append(_cookie(settings, LOGIN_COOKIE, token, 3600, "/login"))
    return response


@post("/login", include_in_schema=False, status_code=303)
async def login(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    sessions: NamedDependency[Sessions],
) -> Response:
    """Checks the key the way the Bearer guard does (its SHA-256 against live keys)."""
    form = await _form(request)
    signer = sessions.signer
    target = _safe_next(form.get("next"))
    given_token = form.get(CSRF_FIELD)
    cookie_token = request.cookies.get(LOGIN_COOKIE)
    error = None
    if not tokens_match(cookie_token or "", given_token) or signer.loads(given_token or "") is None:
        error = "The login form expired; try again."
    else:
        key = (form.get("api_key") or "").strip()
        row = await anyio.to_thread.run_sync(store.authenticate, key) if key else None
        if row is None:
            error = "This API key is not valid or has been revoked."
        else:
            response = Redirect(target, status_code=303)
            response.cookies.append(_cookie(settings, COOKIE, signer.new_session(row["id"]), SESSION_TTL_S))
            response.cookies.append(_cookie(settings, LOGIN_COOKIE, "", 0, "/login"))
            return response
    token = signer.login_token()
    response = render(request, "login.html", next=target, login_token=token, error=error)
    response.cookies.append(_cookie(settings, LOGIN_COOKIE, token, 3600, "/login"))
    return response


async def _form(request: Request) -> dict[str, str]:
    """The text fields of a posted form (urlencoded or multipart)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request, settings: NamedDependency[Settings]) -> Response:
    response = Redirect("/login", status_code=303)
    if is_htmx(request):
        response = Response(b"", headers={"HX-Redirect": "/login"})
    response.cookies.append(_cookie(settings, COOKIE, "", 0))
    return response


# -- jobs list ---------------------------------------------------------------------------------


def _job_filters(status: str | None, method: str | None) -> tuple[str | None, str | None]:
    return (status if status in statuses.ALL else None, method if method in jobs.METHODS else None)


def _jobs_table(store: Store, status: str | None, method: str | None, after: str | None) -> dict:
    rows, more = store.list_jobs(PAGE_SIZE, after, status, method)
    query = {k: v for k, v in (("status", status), ("method", method)) if v}
    return {
        "jobs": rows,
        "has_more": more,
        "next_url": "/jobs?" + urlencode({**query, "after": rows[-1]["id"]}) if more and rows else None,
        "table_url": "/jobs/table?" + urlencode({**query, **({"after": after} if after else {})}),
        "live": any(r["status"] not in statuses.TERMINAL for r in rows),
        "status": status,
        "method": method,
        "after": after,
    }


@get("/jobs", include_in_schema=False, sync_to_thread=True)
def jobs_page(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    status: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
) -> Response:
    status, method = _job_filters(status, method)
    table = _jobs_table(store, status, method, after)
    empty = not table["jobs"] and not status and not method and not after and not store.any_job()
    return render(
        request,
        "jobs.html",
        counts=store.job_counts(),
        empty_box=empty,
        has_cpu=devices.CPU in inventory.types,
        **table,
    )


@get("/jobs/table", include_in_schema=False, sync_to_thread=True)
def jobs_table(
    request: Request,
    store: NamedDependency[Store],
    status: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
) -> Response:
    status, method = _job_filters(status, method)
    return render(request, "_job_table.html", **_jobs_table(store, status, method, after))


# -- new job -----------------------------------------------------------------------------------


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
    body = _convert({**job_body(form), "reward_weights": weights}, jobs.CreateJob)
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


def _inventory_rows(store: Store, inventory: Inventory) -> list[dict]:
    used = devices.in_use(store)
    return [
        {
            "type": d.type,
            "count": d.count,
            "free": max(d.count - used.get(d.type, 0), 0),
            "price_per_hr": d.price_per_hr,
        }
        for d in inventory.types.values()
    ]


def _local_models(settings: Settings, store: Store) -> list[str]:
    """Suggestions for base_model: models under DATA_DIR/models and the latest jobs' models."""
    found = []
    models = settings.data_dir / "models"
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
        "inventory": _inventory_rows(store, inventory),
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
) -> Response:
    form = _default_form(method if method in jobs.METHODS else "grpo")
    if clone:
        form = _form_from_job(jobs.get(store, clone))
        form["output_name"] = f"{form['output_name']}-copy"
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
) -> Response:
    raw = await request.form()
    form: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(v, str)}
    form["reward_function_ids"] = [v for v in raw.getall("reward_function_ids") if isinstance(v, str)]

    def submit() -> dict:
        body, pairs = _job_request(form)
        return jobs.submit(body, store, settings, inventory, pairs or None)

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
    inventory: NamedDependency[Inventory],
) -> Response:
    """The first-run demo: `veri-box demo`'s built-in tiny model (the trainer builds it), prompts,
    reward and settings, submitted through the same functions the API uses."""
    from . import demo  # only here: it brings the HTTP client the `veri-box demo` command uses

    rows = "".join(json.dumps({"prompt": p}) + "\n" for p in demo.PROMPTS).encode()
    spool = settings.data_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool, prefix="demo-", suffix=".jsonl") as fh:
        fh.write(rows)
        fh.flush()
        dataset = datasets.store_upload(store, settings, "demo prompts", "demo.jsonl", Path(fh.name), len(rows))
    reward = store.insert_reward_function(rf_mod.prepare(settings, "letter_a", demo.REWARD))
    body = _convert(
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
    job = jobs.submit(body, store, settings, inventory)
    return Response(b"", headers={"HX-Redirect": f"/jobs/{job['id']}"})


# -- one job -----------------------------------------------------------------------------------


def _summary_context(store: Store, job: dict) -> dict:
    events = store.list_events(job["id"], EVENTS_SHOWN)
    reward_fns = []
    for rf in job["reward_functions"] or []:
        row = store.get_reward_function(rf["id"])
        reward_fns.append({"id": rf["id"], "weight": rf.get("weight"), "name": row["name"] if row else rf["id"]})
    return {
        "job": job,
        "events": events,
        "live": job["status"] not in statuses.TERMINAL,
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
        default_keys=DEFAULT_CHART_KEYS,
    )


@get("/jobs/{job_id:str}/summary", include_in_schema=False, sync_to_thread=True)
def job_summary(request: Request, store: NamedDependency[Store], job_id: FromPath[str]) -> Response:
    job = jobs.get(store, job_id)
    context = _summary_context(store, job)
    # The page's other panels (downloads, rollouts) refresh once when the job ends.
    headers = {} if context["live"] else {"HX-Trigger": "job-ended"}
    return render(request, "_job_summary.html", headers=headers, **context)


@post("/jobs/{job_id:str}/cancel", include_in_schema=False)
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


async def _html_log(store: Store, data_dir: Path, job_id: str, offset: int) -> AsyncIterator[ServerSentEventMessage]:
    """The API's log stream, each line escaped for the page, then a `done` event that tells
    the browser to close the stream instead of reconnecting."""
    async for message in logs.stream(store, data_dir, job_id, offset):
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
    last = request.headers.get("last-event-id", "").strip()
    if last.isdigit():
        offset = int(last)
    else:
        # A long log starts near its end; the full text is one link away.
        path = logs.log_path(settings.data_dir, job_id)
        total = path.stat().st_size if path.is_file() else 0
        offset = 0 if total <= LOG_TAIL_BYTES else _line_start(path, total - LOG_TAIL_BYTES)
    return ServerSentEvent(
        _html_log(store, settings.data_dir, job_id, offset),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _line_start(path: Path, offset: int) -> int:
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(65536)
    newline = chunk.find(b"\n")
    return offset + newline + 1 if newline >= 0 else offset


@get("/jobs/{job_id:str}/log.txt", include_in_schema=False, sync_to_thread=True)
def job_log_text(store: NamedDependency[Store], settings: NamedDependency[Settings], job_id: FromPath[str]) -> Response:
    jobs.get(store, job_id)
    path = logs.log_path(settings.data_dir, job_id)
    return Response(path.read_bytes() if path.is_file() else b"", media_type="text/plain; charset=utf-8")


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
        out.append({**group, "mean": mean, "std": spread, "zero_variance": len(rewards) > 1 and spread < 1e-9})
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
    clips = [{**s, "url": _relative(s["video_url"], settings)} for s in samples if "video_url" in s]
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


def _artifacts_context(store: Store, settings: Settings, signer: Signer, job: dict) -> dict:
    model = None
    if job["status"] == "completed":
        try:
            manifest = artifacts.manifest(settings, signer, job)
            model = {
                "download_url": _relative(manifest.download_url, settings),
                "files": [
                    {"path": f.path, "bytes": f.bytes, "url": _relative(f.url, settings)} for f in manifest.files
                ],
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
                "files": [{"path": f.path, "bytes": f.bytes, "url": _relative(f.url, settings)} for f in ckpt.files],
            }
        )
    return {"model": model, "checkpoints": checkpoints}


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


# -- datasets ----------------------------------------------------------------------------------


def _datasets_context(store: Store, after: str | None) -> dict:
    rows, more = store.list_datasets(PAGE_SIZE, after)
    busy = store.datasets_in_use([r["id"] for r in rows])
    return {"datasets": rows, "has_more": more, "after": after, "busy": busy}


@get("/datasets", include_in_schema=False, sync_to_thread=True)
def datasets_page(request: Request, store: NamedDependency[Store], after: FromQuery[str | None] = None) -> Response:
    return render(request, "datasets.html", message=None, error=None, **_datasets_context(store, after))


async def upload_dataset(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings]
) -> Response:
    form = await request.form()
    upload = form.get("file")
    name = form.get("name") or None
    error, message = None, None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise bad_request("missing_field", "Choose a file to upload.", "file")
        dataset = await datasets.create(store, settings, upload, name)
        message = (
            f"Uploaded {dataset['name']}: {dataset['num_rows']} rows, format {dataset['format']} ({dataset['id']})."
        )
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
    context = _datasets_context(store, None)
    return render(request, "_datasets_panel.html", message=message, error=error, **context)


@get("/datasets/{dataset_id:str}/rows", include_in_schema=False, sync_to_thread=True)
def dataset_rows(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    dataset_id: FromPath[str],
    offset: FromQuery[int] = 0,
) -> Response:
    dataset = datasets.get(store, dataset_id)
    page = datasets.rows(store, settings, dataset_id, max(0, offset), 20)
    columns: list[str] = []
    for row in page.data:
        for key in row:
            if key not in columns:
                columns.append(key)
    return render(
        request,
        "_dataset_rows.html",
        dataset=dataset,
        rows=page.data,
        columns=columns,
        offset=page.offset,
        has_more=page.has_more,
        preview=lambda v: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False),
    )


@get("/datasets/{dataset_id:str}/files/{path:path}", include_in_schema=False, sync_to_thread=True)
def dataset_file(
    store: NamedDependency[Store], settings: NamedDependency[Settings], dataset_id: FromPath[str], path: FromPath[str]
) -> File:
    """A clip of a video dataset, for its preview."""
    dataset = datasets.get(store, dataset_id)
    root = (paths.dataset_dir(settings.data_dir, dataset_id) / dataset["path"]).resolve()
    target = (root / path.lstrip("/")).resolve()
    # Only the clips, never another file of an upload, and never sniffed into something else.
    if (
        not target.is_relative_to(root)
        or not target.is_file()
        or not target.name.lower().endswith(dataset_files.VIDEO_EXTENSIONS)
    ):
        raise ApiError(404, "file_not_found", "This file is not a clip of the dataset.")
    return File(
        target,
        filename=target.name,
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@post("/datasets/{dataset_id:str}/delete", include_in_schema=False, sync_to_thread=True)
def delete_dataset(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], dataset_id: FromPath[str]
) -> Response:
    error, message = None, None
    try:
        datasets.delete(store, settings, dataset_id)
        message = f"Deleted dataset {dataset_id}."
    except ApiError as exc:
        error = error_context(exc)
    return render(request, "_datasets_panel.html", message=message, error=error, **_datasets_context(store, None))


# -- reward functions --------------------------------------------------------------------------


def _reward_functions_context(store: Store, after: str | None) -> dict:
    rows, more = store.list_reward_functions(PAGE_SIZE, after)
    busy = store.reward_functions_in_use([r["id"] for r in rows])
    return {"reward_functions": rows, "has_more": more, "after": after, "busy": busy}


@get("/reward-functions", include_in_schema=False, sync_to_thread=True)
def reward_functions_page(
    request: Request, store: NamedDependency[Store], after: FromQuery[str | None] = None
) -> Response:
    return render(request, "reward_functions.html", message=None, error=None, **_reward_functions_context(store, after))


@post("/reward-functions", include_in_schema=False)
async def upload_reward_function(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings]
) -> Response:
    form = await request.form()
    upload = form.get("file")
    error, message = None, None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise bad_request("missing_field", "Choose a .py file to upload.", "file")
        raw = await upload.read()
        created = await anyio.to_thread.run_sync(
            lambda: rf_mod.create(
                store, settings, str(form.get("name") or ""), upload.filename, raw, str(form.get("format") or "trl")
            )
        )
        message = f"Uploaded {created['name']}: calls {created['entrypoint']}() ({created['id']})."
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
    return render(
        request, "_reward_functions_panel.html", message=message, error=error, **_reward_functions_context(store, None)
    )


@get("/reward-functions/{rf_id:str}/source", include_in_schema=False, sync_to_thread=True)
def reward_function_source(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
) -> Response:
    row = rf_mod.get(store, rf_id)
    source = rf_mod.source(store, settings, rf_id).decode("utf-8", errors="replace")
    return render(request, "_reward_source.html", rf=row, source=source)


@post("/reward-functions/{rf_id:str}/delete", include_in_schema=False, sync_to_thread=True)
def delete_reward_function(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
) -> Response:
    error, message = None, None
    try:
        rf_mod.delete(store, settings, rf_id)
        message = f"Deleted reward function {rf_id}."
    except ApiError as exc:
        error = error_context(exc)
    return render(
        request, "_reward_functions_panel.html", message=message, error=error, **_reward_functions_context(store, None)
    )


# -- settings and devices ----------------------------------------------------------------------


def _settings_context(store: Store, inventory: Inventory, settings: Settings) -> dict:
    keys, _ = api_keys.list_(store, 100)
    holders = store.jobs_holding_devices()
    by_type: dict[str, list[dict]] = {}
    for job in holders:
        by_type.setdefault(job["gpu"]["type"], []).append(job)
    return {
        "keys": keys,
        "integration": integrations.get(store),
        "inventory": _inventory_rows(store, inventory),
        "holders": by_type,
        "settings": settings,
    }


@get("/settings", include_in_schema=False, sync_to_thread=True)
def settings_page(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    return render(
        request,
        "settings.html",
        new_key=None,
        error=None,
        message=None,
        **_settings_context(store, inventory, settings),
    )


@get("/settings/devices", include_in_schema=False, sync_to_thread=True)
def devices_panel(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    return render(request, "_devices.html", **_settings_context(store, inventory, settings))


@post("/settings/api-keys", include_in_schema=False)
async def create_api_key(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    form = await _form(request)
    new_key, error = None, None
    try:
        body = _convert({"name": (form.get("name") or "").strip()}, CreateApiKey)
        new_key = await anyio.to_thread.run_sync(api_keys.create, store, body.name)
    except ApiError as exc:
        error = error_context(exc)
    return render(
        request,
        "_api_keys.html",
        new_key=new_key,
        error=error,
        message=None,
        **_settings_context(store, inventory, settings),
    )


@post("/settings/api-keys/{key_id:str}/revoke", include_in_schema=False, sync_to_thread=True)
def revoke_api_key(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
    key_id: FromPath[str],
) -> Response:
    session: Session | None = current(request)
    api_keys.revoke(store, key_id)
    if session and session.key_id == key_id:
        # This session's own key: the session ends with it.
        return Response(b"", headers={"HX-Redirect": "/login"})
    return render(
        request,
        "_api_keys.html",
        new_key=None,
        error=None,
        message=f"Revoked key {key_id}.",
        **_settings_context(store, inventory, settings),
    )


@post("/settings/openreward", include_in_schema=False)
async def save_openreward(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    form = await _form(request)
    error, message = None, None
    try:
        body = _convert(
            {"api_key": form.get("api_key") or "", "base_url": (form.get("base_url") or "").strip() or None},
            OpenRewardSettings,
        )
        await anyio.to_thread.run_sync(integrations.put, store, body)
        message = "OpenReward key saved."
    except ApiError as exc:
        error = error_context(exc)
    return render(
        request, "_integration.html", error=error, message=message, **_settings_context(store, inventory, settings)
    )


@post("/settings/openreward/delete", include_in_schema=False, sync_to_thread=True)
def delete_openreward(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    integrations.delete(store)
    return render(
        request,
        "_integration.html",
        error=None,
        message="OpenReward key removed.",
        **_settings_context(store, inventory, settings),
    )


# -- wiring ------------------------------------------------------------------------------------


def routers(settings: Settings, sessions: Sessions) -> list[Router]:
    """The dashboard's routes: the login (open), everything else behind the session guard,
    and the static files."""
    handlers = {HTTPException: dashboard_errors, Exception: dashboard_errors}
    protected = Router(
        path="/",
        guards=[login_guard(sessions)],
        exception_handlers=handlers,
        include_in_schema=False,
        route_handlers=[
            logout,
            jobs_page,
            jobs_table,
            new_job_page,
            create_job,
            start_demo,
            job_page,
            job_summary,
            cancel_job,
            job_metrics,
            job_log,
            job_log_text,
            job_rollouts,
            job_artifacts,
            datasets_page,
            # Its body limit is the box's upload limit, as for the API's dataset uploads.
            post("/datasets", include_in_schema=False, request_max_body_size=settings.max_upload_bytes + 2**20)(
                upload_dataset
            ),
            dataset_rows,
            dataset_file,
            delete_dataset,
            reward_functions_page,
            upload_reward_function,
            reward_function_source,
            delete_reward_function,
            settings_page,
            devices_panel,
            create_api_key,
            revoke_api_key,
            save_openreward,
            delete_openreward,
        ],
    )
    open_ = Router(
        path="/",
        guards=[reading_guard(sessions)],
        exception_handlers=handlers,
        include_in_schema=False,
        route_handlers=[home, login_page, login],
    )
    static = create_static_files_router(
        path="/static",
        directories=[STATIC],
        include_in_schema=False,
        cache_control=None,
        send_as_attachment=False,
    )
    return [open_, protected, static]
