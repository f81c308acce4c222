"""Bearer API keys for /v1, and HMAC-signed links for downloads fetched without a header."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Guard

from .errors import ApiError
from .store import Store


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
        connection.scope.setdefault("state", {})["api_key_id"] = key["id"]

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
