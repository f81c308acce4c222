"""Browser sessions for the dashboard: a signed, HttpOnly, SameSite cookie naming the API key
the user logged in with, and a CSRF token bound to it.

The API keeps Bearer auth; the cookie only opens dashboard routes. A session ends when its
key is revoked (checked on every request), when it expires, or on logout, which records it as
ended in the store: a copy of the cookie is refused too. State-changing
dashboard requests must echo the session's CSRF token, as the `X-CSRF-Token` header (htmx
sends it from `hx-headers` on <body>) or as a `_csrf` form field (plain forms).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import anyio
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Guard

from .store import Store

COOKIE = "vb_session"
LOGIN_COOKIE = "vb_login"  # double-submit token for the login form itself
SESSION_TTL_S = 14 * 24 * 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_STATE_KEY = "dashboard_session"


@dataclass(frozen=True)
class Session:
    key_id: str
    key_name: str
    key_prefix: str
    csrf: str
    expires: int

    @property
    def id(self) -> str:
        """What names the session in the store's ended sessions: its CSRF token is a random value
        per session that the signature binds to it, and only a hash of it is kept."""
        return hashlib.sha256(self.csrf.encode()).hexdigest()


class NotLoggedIn(Exception):
    """No valid session: pages redirect to /login, fragments tell htmx to go there."""


class CsrfFailed(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """HMAC-SHA256 over a small JSON payload; the secret lives in the store's `box` table, so
    sessions survive a restart."""

    def __init__(self, secret: str):
        self._secret = secret.encode()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())

    def dumps(self, payload: dict) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def loads(self, token: str) -> dict | None:
        body, _, mac = token.partition(".")
        if not body or not mac or not mac.isascii() or not hmac.compare_digest(self._mac(body), mac):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    def new_session(self, key_id: str) -> str:
        return self.dumps({"k": key_id, "c": secrets.token_urlsafe(24), "e": int(time.time()) + SESSION_TTL_S})

    def login_token(self) -> str:
        return self.dumps({"l": secrets.token_urlsafe(16), "e": int(time.time()) + 3600})


def session_signer(store: Store) -> SessionSigner:
    """The box's session signer; its secret is made on first use and kept in the store."""
    return SessionSigner(store.box_value("session_secret", lambda: secrets.token_hex(32)))


class Sessions:
    """The dashboard's sessions: cookies signed by `signer`, naming live keys of `store`."""

    def __init__(self, store: Store, signer: SessionSigner):
        self.store = store
        self.signer = signer

    async def read(self, connection: ASGIConnection) -> Session | None:
        """The live session of this request, or None. Cached on the connection's scope; the
        store is asked in a worker thread, never on the event loop."""
        state = connection.scope.setdefault("state", {})
        if _STATE_KEY in state:
            return state[_STATE_KEY]
        token = connection.cookies.get(COOKIE)
        payload = self.signer.loads(token) if token else None
        session = await anyio.to_thread.run_sync(self._live, payload) if payload else None
        state[_STATE_KEY] = session
        return session

    def _live(self, payload: dict) -> Session | None:
        if not (isinstance(payload.get("e"), int) and payload["e"] > time.time() and payload.get("k")):
            return None
        csrf = payload.get("c")
        if not isinstance(csrf, str) or not csrf:
            return None
        key = self.store.get_api_key(str(payload["k"]))  # revoked keys are not returned
        if key is None:
            return None
        session = Session(key["id"], key["name"], key["key_prefix"], csrf, payload["e"])
        return None if self.store.session_ended(session.id) else session

    def end(self, session: Session) -> None:
        """Logout: the session's cookie, and every copy of it, stops working now."""
        self.store.end_session(session.id, session.expires, int(time.time()))


# Every dashboard route has one of these two guards, so its session is read before its handler
# (or its error handler) runs, and `current` finds it. They are closures, not bound methods:
# Litestar deep-copies routers as it registers them, and a bound method would copy the store.


def reading_guard(sessions: Sessions) -> Guard:
    """Guard of the open dashboard routes (home, login): reads the session, refuses nothing."""

    async def read_session(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        await sessions.read(connection)

    return read_session


def login_guard(sessions: Sessions) -> Guard:
    """Guard of every dashboard route behind the login; checks CSRF on unsafe methods."""

    async def require_session(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        session = await sessions.read(connection)
        if session is None:
            raise NotLoggedIn()
        if connection.scope.get("method", "GET") in SAFE_METHODS:
            return
        given = connection.headers.get(CSRF_HEADER)
        if given is None and isinstance(connection, Request):
            content_type = connection.headers.get("content-type", "")
            if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
                # The parsed form is cached on the request: the handler reads it again for free.
                given = (await connection.form()).get(CSRF_FIELD)
        if not tokens_match(session.csrf, given if isinstance(given, str) else None):
            raise CsrfFailed()

    return require_session


def current(connection: ASGIConnection) -> Session | None:
    """The session the dashboard's guard read for this request (None outside its routes)."""
    return connection.scope.get("state", {}).get(_STATE_KEY)


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(expected) and bool(given) and given.isascii() and hmac.compare_digest(expected, given)
