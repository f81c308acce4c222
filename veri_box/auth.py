"""Bearer API keys for /v1, and HMAC-signed links for downloads fetched without a header."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Guard

from .errors import ApiError
from .sessions import current
from .store import Store

ADMIN, MEMBER = "admin", "member"
ROLES = (ADMIN, MEMBER)
# What a route declares in opt={"rule": ...} (see ROLES in docs/api.md): who may call it.
RULES = ("admin", "member", "owner", "public")
# opt={"rule": "owner", "owns": KIND}: the table of KIND and the path parameter naming the object.
OWNED = {
    "job": ("jobs", "job_id"),
    "dataset": ("datasets", "dataset_id"),
    "reward_function": ("reward_functions", "rf_id"),
    "deployment": ("deployments", "deployment_id"),
}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_CALLER = "caller"


@dataclass(frozen=True)
class Caller:
    """The key behind a request, from its Bearer header or its dashboard session."""

    id: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @classmethod
    def of(cls, row: dict) -> Caller:
        return cls(row["id"], row["name"], row.get("role") or MEMBER)


class Owner(msgspec.Struct):
    """`created_by` of an object: the key that made it (its name stays after the key is revoked)."""

    id: str
    name: str | None


def owner(row: dict) -> Owner | None:
    """The Owner of a stored row (None: made before roles existed)."""
    return Owner(row["created_by"], row.get("created_by_name")) if row.get("created_by") else None


def caller_id(connection: ASGIConnection) -> str | None:
    who = caller(connection)
    return who.id if who else None


def caller(connection: ASGIConnection) -> Caller | None:
    """Who is asking (set by the API's key guard or, on the dashboard, by the rule guard)."""
    return connection.scope.get("state", {}).get(_CALLER)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def check_owner(who: Caller, created_by: str | None, what: str, owner_name: str | None = None) -> None:
    """Owner-or-admin, for handlers that check an object themselves (the rule guard does it for
    routes that declare `owns`)."""
    if who.is_admin or (created_by is not None and created_by == who.id):
        return
    owner = f"the key '{owner_name}'" if owner_name else ("another key" if created_by else "no key (made before roles)")
    raise forbidden(
        f"This {what} belongs to {owner}; only the key that made it or an admin may change it "
        f"(your key '{who.name}' is a {who.role})."
    )


def rule_guard(store: Store) -> Guard:
    """Enforces each route's `opt["rule"]`, after the key (API) or session (dashboard) guard.
    A write route that declares no rule is refused for every key: failing closed means a new
    route nobody thought about cannot become a hole (tests/test_sharing.py names it)."""

    def enforce_rule(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        rule = handler.opt.get("rule")
        method = connection.scope.get("method", "GET")
        who = caller(connection)
        session = current(connection)
        if who is None and session is not None:
            # The dashboard: the session's key, with its role (pages show what the role may do).
            row = store.get_api_key(session.key_id)
            if row is not None:
                who = Caller.of(row)
                connection.scope.setdefault("state", {})[_CALLER] = who
        if rule == "public" or (rule is None and method not in UNSAFE_METHODS):
            return
        if rule not in RULES:
            raise forbidden(
                f"{method} {connection.url.path} declares no access rule, so veri-box refuses it for every key "
                "(a bug in veri-box: please report it)."
            )
        if who is None:  # the key was revoked since the session guard looked
            raise ApiError(401, "invalid_api_key", "This API key is not valid or has been revoked.")
        if rule == "member" or who.is_admin:
            return
        if rule == "admin":
            raise forbidden(
                f"Only an admin key may do this ({method} {connection.url.path}); your key '{who.name}' is a member. "
                "Ask an admin of this box."
            )
        kind = handler.opt.get("owns")
        table, param = OWNED.get(kind, (None, None))
        object_id = connection.path_params.get(param) if param else None
        if object_id is None:
            raise forbidden(
                f"{method} {connection.url.path} names no object to own (a bug in veri-box: please report it)."
            )
        exists, created_by = store.owner_of(table, str(object_id))
        if not exists:
            return  # the handler answers 404
        check_owner(who, created_by, kind.replace("_", " "), store.key_names([created_by]).get(created_by))

    return enforce_rule


def api_key_guard(store: Store) -> Guard:
    """The guard of /v1: a live Bearer key of `store`; its id is kept on the request's state.
    It stays a plain function: Litestar runs sync guards in a worker thread, so SQLite (and a
    writer's lock on it) never blocks the event loop here."""

    def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing_api_key",
                "Send your API key as 'Authorization: Bearer vk_...'; "
                "create one with `veri-box keys create --name NAME`.",
            )
        key = store.authenticate(token.strip())
        if key is None:
            raise ApiError(401, "invalid_api_key", "This API key is not valid or has been revoked.")
        state = connection.scope.setdefault("state", {})
        state["api_key_id"] = key["id"]
        state[_CALLER] = Caller.of(key)

    return require_api_key


class Signer:
    """Signs a path with an expiry so a bare HTTP GET (the SDK's download loop) can fetch it."""

    def __init__(self, secret: str):
        self._secret = secret.encode()

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
        return f"{quote(path)}?{urlencode({'expires': expires, 'signature': self._mac(path, expires)})}"

    def verify(self, path: str, expires: int | None, signature: str | None) -> None:
        if expires is None or not signature:
            raise ApiError(
                401,
                "missing_signature",
                "This download link is missing its signature; "
                "ask the API for a fresh one (GET /v1/training_jobs/{id}/model).",
            )
        # compare_digest raises TypeError on non-ASCII text; such a signature is simply wrong.
        if not signature.isascii() or not hmac.compare_digest(self._mac(path, expires), signature):
            raise ApiError(401, "invalid_signature", "This download link's signature does not match.")
        if expires < time.time():
            raise ApiError(
                401,
                "link_expired",
                "This download link has expired; ask the API for a fresh one (GET /v1/training_jobs/{id}/model).",
            )
