"""Third-party integrations; today OpenReward, whose environments can be a GRPO reward source.
The API key is stored for the trainers to use and never returned: only a hint of it.

base_url is optional: without it the box talks to the OpenReward platform as the official client
does (OPENREWARD_URL, OPENREWARD_SESSION_URL and OPENREWARD_API_URL honoured); with a URL on the
platform's domain it is that platform's web URL; any other URL is a self-hosted ORS server
(see veri_box/openreward.py)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlparse

import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from .errors import bad_request
from .store import Store

OPENREWARD = "openreward"


class OpenRewardSettings(msgspec.Struct, forbid_unknown_fields=True):
    api_key: Annotated[str, Meta(min_length=1, max_length=500)]
    base_url: Annotated[str, Meta(max_length=500)] | None = None


class Integration(msgspec.Struct):
    provider: str
    configured: bool
    key_hint: str | None
    base_url: str | None
    updated_at: str | None
    object: str = "integration"


def key_hint(key: str) -> str:
    """The key's last four characters, only when they are a small part of it: a short key
    (a self-hosted server may accept anything) would otherwise be given away whole."""
    return "..." + key[-4:] if len(key) >= 12 else "..."


def to_api(row: dict | None) -> Integration:
    if row is None:
        return Integration(provider=OPENREWARD, configured=False, key_hint=None, base_url=None, updated_at=None)
    return Integration(
        provider=OPENREWARD,
        configured=True,
        key_hint=key_hint(row["api_key"]),
        base_url=row["base_url"],
        updated_at=row["updated_at"],
    )


# -- service functions (the API's controller and the dashboard both call these) ---------------


def get(store: Store) -> Integration:
    return to_api(store.get_integration(OPENREWARD))


def put(store: Store, body: OpenRewardSettings) -> Integration:
    """Store the OpenReward key (one token) and optional base URL (http or https)."""
    key = body.api_key.strip()
    if not key or any(c.isspace() for c in key):
        raise bad_request("invalid_value", "api_key must be a single token without spaces.", "api_key")
    base_url = (body.base_url or "").strip().rstrip("/") or None
    if base_url:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise bad_request(
                "invalid_value",
                "base_url must be an http(s) URL: https://openreward.ai, or a self-hosted ORS server "
                "such as http://127.0.0.1:8080.",
                "base_url",
            )
    return to_api(store.put_integration(OPENREWARD, key, base_url))


def delete(store: Store) -> Integration:
    store.delete_integration(OPENREWARD)
    return to_api(None)


# -- controller --------------------------------------------------------------------------------


class IntegrationController(Controller):
    path = "/v1/settings/integrations/openreward"
    tags = ["settings"]

    @litestar.put("/", sync_to_thread=True)
    def put_openreward(self, store: NamedDependency[Store], data: JSONBody[OpenRewardSettings]) -> Integration:
        return put(store, data)

    @litestar.get("/", sync_to_thread=True)
    def get_openreward(self, store: NamedDependency[Store]) -> Integration:
        return get(store)

    @litestar.delete("/", status_code=200, sync_to_thread=True)
    def delete_openreward(self, store: NamedDependency[Store]) -> Integration:
        return delete(store)
