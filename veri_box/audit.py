"""The audit trail: one row per write request (POST/PUT/PATCH/DELETE), API and dashboard alike.

It is recorded in one place, an ASGI middleware around every route, so a new write route is
audited without doing anything: the middleware reads who asked from the request's state (set by
the key or rule guard), the route's path template, the object from the path parameters or the
JSON answer, and the status the route answered (refusals too: a member's 403 is worth seeing).
Reads are not recorded. Requests nobody could be identified for (no or a bad key) are not
writes by anyone and are not recorded either, except dashboard logins (`opt["audit"] ==
"login"`): each one is, refused ones too (401, no key; 403, an expired form), with the client's
address, so that someone trying keys shows; never with what was typed.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import anyio
import litestar
import msgspec
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .auth import UNSAFE_METHODS, caller
from .schemas import After, ListOf, ReadLimit
from .sessions import current
from .store import Store

log = logging.getLogger("veri_box")

# The object a path parameter names, when the route does not say (`opt["owns"]`).
_PARAM_OBJECTS = {
    "job_id": "training_job",
    "dataset_id": "dataset",
    "rf_id": "reward_function",
    "key_id": "api_key",
    "deployment_id": "deployment",
}
LOGIN_SCOPE_KEY = "veri_box.login"  # (key id, name) the login route sets on success
_BODY_LIMIT = 64 * 1024  # enough for the id of what a write made; larger answers are not parsed


class AuditEntry(msgspec.Struct):
    id: str
    at: str
    api_key: dict | None  # {id, name}: who asked
    action: str  # "METHOD /path/{template}"
    method: str
    path: str
    object_type: str | None
    object_id: str | None
    client: str | None
    status: int
    object: str = "audit_entry"


def to_api(row: dict) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        api_key={"id": row["key_id"], "name": row["key_name"]} if row["key_id"] else None,
        action=row["action"],
        method=row["method"],
        path=row["path"],
        object_type=row["object_type"],
        object_id=row["object_id"],
        client=row["client"],
        status=row["status"],
    )


def _object(scope: Scope, body: bytes, status: int) -> tuple[str | None, str | None]:
    handler = scope.get("route_handler")
    owns = handler.opt.get("owns") if handler is not None else None
    params = scope.get("path_params") or {}
    for param, kind in _PARAM_OBJECTS.items():
        if param in params:
            return ("training_job" if owns == "job" else owns or kind), str(params[param])
    if 200 <= status < 300 and body:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("id"), str):
            return answer.get("object"), answer["id"]
    if params:  # e.g. /v1/settings/providers/{name}
        name, value = next(iter(params.items()))
        return name, str(value)
    return None, None


def audit_middleware(store: Store):
    """The ASGI middleware factory; `store` is the box's."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def audited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope.get("method") not in UNSAFE_METHODS:
                await app(scope, receive, send)
                return
            answer = {"status": 500, "body": b"", "json": False, "recorded": False}

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    answer["status"] = message["status"]
                    headers = dict(message.get("headers") or [])
                    answer["json"] = headers.get(b"content-type", b"").startswith(b"application/json")
                elif message["type"] == "http.response.body":
                    if answer["json"] and len(answer["body"]) < _BODY_LIMIT:
                        answer["body"] += message.get("body", b"")
                    if not message.get("more_body", False):
                        # Recorded before the client has the whole answer: by the time it sends its
                        # next request, this write is in the trail (and the trail keeps their order).
                        answer["recorded"] = True
                        await _record(store, scope, answer)
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                if not answer["recorded"]:  # no answer was sent (the client went away)
                    await _record(store, scope, answer)

        return audited

    return middleware


async def _record(store: Store, scope: Scope, answer: dict) -> None:
    handler = scope.get("route_handler")
    if handler is not None and handler.opt.get("audit") is False:
        return  # a POST that changes nothing (a chat completion of a deployment): a read, for the trail
    if handler is not None and handler.opt.get("audit") == "login":
        who = scope.get(LOGIN_SCOPE_KEY) or (None, None)
        object_type, object_id = ("api_key", who[0]) if who[0] else (None, None)
    else:
        who = caller_of(scope)
        if who is None:
            return
        object_type, object_id = _object(scope, answer["body"] if answer["json"] else b"", answer["status"])
    client = scope.get("client")
    row = {
        "key_id": who[0],
        "key_name": who[1],
        "action": f"{scope['method']} {scope.get('path_template') or scope['path']}",
        "method": scope["method"],
        "path": scope["path"],
        "object_type": object_type,
        "object_id": object_id,
        "client": client[0] if client else None,
        "status": answer["status"],
    }
    try:
        await anyio.to_thread.run_sync(store.add_audit, row)
    except Exception:  # a full disk must not turn a done write into an error answer
        log.exception("could not record the audit row of %s %s", scope["method"], scope["path"])


def caller_of(scope: Scope) -> tuple[str, str] | None:
    """(key id, name) of the request: the guards' caller, else the dashboard session's key
    (a refused CSRF check stops before the rule guard)."""

    class _Conn:  # caller() and current() read only the scope
        def __init__(self, scope: Scope):
            self.scope = scope

    conn = _Conn(scope)
    who = caller(conn)  # type: ignore[arg-type]
    if who is not None:
        return who.id, who.name
    session = current(conn)  # type: ignore[arg-type]
    if session is not None:
        return session.key_id, session.key_name
    return None


# -- service function and route ---------------------------------------------------------------


def list_(
    store: Store,
    limit: int = 20,
    after: str | None = None,
    api_key: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    action: str | None = None,
) -> tuple[list[dict], bool]:
    return store.list_audit(limit, after, api_key, object_type, object_id, action)


Filter = Annotated[str | None, Parameter(max_length=200)]


@litestar.get("/v1/audit", tags=["audit"], sync_to_thread=True, opt={"rule": "admin"})
def list_audit(
    store: NamedDependency[Store],
    limit: ReadLimit = 20,
    after: After = None,
    api_key: Filter = None,
    object_type: Filter = None,
    object_id: Filter = None,
    action: Filter = None,
) -> ListOf[AuditEntry]:
    """Every write, newest first (admins only): filter by the key's id, the object and a part of
    the action ("cancel", "POST /v1/training_jobs")."""
    rows, more = list_(store, limit, after, api_key, object_type, object_id, action)
    return ListOf(data=[to_api(r) for r in rows], has_more=more)
