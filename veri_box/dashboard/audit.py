"""The audit page (admins only): every write, newest first, filtered like GET /v1/audit."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from .. import audit
from ..store import Store
from .rendering import PAGE_SIZE, render


@get("/audit", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def audit_page(
    request: Request,
    store: NamedDependency[Store],
    api_key: FromQuery[str | None] = None,
    object_id: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
) -> Response:
    filters = {"api_key": api_key or None, "object_id": object_id or None, "action": action or None}
    rows, more = audit.list_(store, PAGE_SIZE, after, **{k: (v or "")[:200] or None for k, v in filters.items()})
    return render(
        request,
        "audit.html",
        entries=rows,
        has_more=more,
        filters={k: v or "" for k, v in filters.items()},
        keys=store.key_names(r["key_id"] for r in rows),
    )
