"""What every dashboard page shares: the Jinja2 environment and its filters, `render`, the
mapping of any error to HTML (the API's code and message, by the API's one mapper), and small
helpers the pages have in common."""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import msgspec
from litestar import Request, Response
from litestar.response import Redirect

from .. import __version__, devices, jobs, statuses
from ..auth import caller
from ..devices import Inventory
from ..errors import error_body, split_validation_error, to_api_error, validation_error
from ..sessions import CsrfFailed, NotLoggedIn, current
from ..settings import Settings
from ..statuses import JobStatus
from ..store import Store

ROOT = Path(__file__).resolve().parents[2]
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
    if job["status"] == JobStatus.RUNNING and started and step and total and step < total:
        elapsed = (datetime.now(UTC) - started).total_seconds()
        eta = elapsed / step * (total - step)
    if job["status"] == JobStatus.COMPLETED:
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


def _owns(who: Any) -> Any:
    """owns(row) in templates: whether this session's key may change that object (its creator or an admin)."""
    return lambda row: bool(who and (who.is_admin or (row.get("created_by") and row["created_by"] == who.id)))


def render(
    request: Request, name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> Response:
    session = current(request)
    who = caller(request)  # the session's key and role: pages hide what a member may not do
    page = _env.get_template(name).render(
        request_path=request.url.path,
        session=session,
        csrf=session.csrf if session else "",
        **{"caller": who, "is_admin": bool(who and who.is_admin), "owns": _owns(who), **context},
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


def convert(body: dict, type_: type, strict: bool = True) -> Any:
    """msgspec.convert with the API's own reading of a validation failure; strict=False reads
    numbers from a form's text ("4")."""
    try:
        return msgspec.convert(body, type=type_, strict=strict)
    except msgspec.ValidationError as err:
        raise validation_error(*split_validation_error(err)) from None


def relative(url: str | None, settings: Settings) -> str | None:
    """Signed links are absolute (for API clients); in the page they work from any host name."""
    return url.removeprefix(settings.base_url) if url else None


async def text_fields(request: Request) -> dict[str, str]:
    """The text fields of a posted form (urlencoded or multipart)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def inventory_rows(store: Store, inventory: Inventory) -> list[dict]:
    """Each device type with its count, how many are free now, and its price."""
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
