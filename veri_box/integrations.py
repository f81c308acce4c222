"""Third-party integrations the trainers use: OpenReward (its environments can be a GRPO reward
source) and Weights & Biases (every new job logs to it). Each is one row of the integrations
table: its key, stored for the trainers and never returned (only a hint of it), its base URL,
and its other settings in `options`.

base_url is optional: without it the box talks to the OpenReward platform as the official client
does (OPENREWARD_URL, OPENREWARD_SESSION_URL and OPENREWARD_API_URL honoured); with a URL on the
platform's domain it is that platform's web URL; any other URL is a self-hosted ORS server
(see veri_box/openreward.py)."""

from __future__ import annotations

from typing import Annotated, Literal
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
WANDB = "wandb"
DEFAULT_WANDB_PROJECT = "veri-training"  # the official client's default (`veri wandb set`)
# W&B's own rule for project and entity names: no slashes, backslashes, #, ?, % or colons.
WANDB_NAME = r"^[^/\\#?%:\s][^/\\#?%:\x00-\x1f]*$"  # W&B's forbidden characters, and no line breaks or tabs


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


def _single_token(value: str, field: str) -> str:
    key = value.strip()
    if not key or any(c.isspace() for c in key):
        raise bad_request("invalid_value", f"{field} must be a single token without spaces.", field)
    return key


def _http_url(value: str | None, field: str, example: str) -> str | None:
    """An optional http(s) URL without its trailing slash; anything else is a 400 naming an example."""
    url = (value or "").strip().rstrip("/") or None
    if url:
        try:
            parsed = urlparse(url)
        except ValueError:  # e.g. "http://[": not a URL at all
            parsed = urlparse("")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise bad_request("invalid_value", f"{field} must be an http(s) URL: {example}.", field)
    return url


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
    key = _single_token(body.api_key, "api_key")
    base_url = _http_url(
        body.base_url,
        "base_url",
        "https://openreward.ai, or a self-hosted ORS server such as http://127.0.0.1:8080",
    )
    return to_api(store.put_integration(OPENREWARD, key, base_url))


def delete(store: Store) -> Integration:
    store.delete_integration(OPENREWARD)
    return to_api(None)


# -- Weights & Biases ----------------------------------------------------------------------------

WandbName = Annotated[str, Meta(min_length=1, max_length=128, pattern=WANDB_NAME)]


class WandbSettings(msgspec.Struct, forbid_unknown_fields=True):
    """What `client.integrations.set_wandb` sends ({api_key, project}, project possibly null),
    and what a self-hosted or offline W&B also needs."""

    api_key: Annotated[str, Meta(min_length=1, max_length=500)]
    project: WandbName | None = None  # None: DEFAULT_WANDB_PROJECT
    entity: WandbName | None = None  # a team or user; None: the key's default entity
    base_url: Annotated[str, Meta(max_length=500)] | None = None  # a self-hosted W&B server
    # offline: runs stay in each job's directory (JOB_DIR/wandb/) for `wandb sync`, no network needed
    mode: Literal["online", "offline"] = "online"


class WandbIntegration(msgspec.Struct):
    configured: bool
    project: str | None
    entity: str | None
    base_url: str | None
    mode: str | None
    key_hint: str | None
    updated_at: str | None
    provider: str = WANDB
    object: str = "integration"


def wandb_to_api(row: dict | None) -> WandbIntegration:
    if row is None:
        return WandbIntegration(
            configured=False, project=None, entity=None, base_url=None, mode=None, key_hint=None, updated_at=None
        )
    options = row["options"] or {}
    return WandbIntegration(
        configured=True,
        project=options.get("project") or DEFAULT_WANDB_PROJECT,
        entity=options.get("entity"),
        base_url=row["base_url"],
        mode=options.get("mode", "online"),
        key_hint=key_hint(row["api_key"]),
        updated_at=row["updated_at"],
    )


def get_wandb(store: Store) -> WandbIntegration:
    return wandb_to_api(store.get_integration(WANDB))


def put_wandb(store: Store, body: WandbSettings) -> WandbIntegration:
    """Store the W&B key with its project (and entity, server, mode). The key is not checked
    against W&B here: an offline box cannot, and a job that W&B refuses trains on and says so."""
    key = _single_token(body.api_key, "api_key")
    base_url = _http_url(body.base_url, "base_url", "https://api.wandb.ai, or a self-hosted W&B server")
    options = {"project": (body.project or DEFAULT_WANDB_PROJECT).strip(), "mode": body.mode}
    if body.entity:
        options["entity"] = body.entity.strip()
    return wandb_to_api(store.put_integration(WANDB, key, base_url, options))


def delete_wandb(store: Store) -> WandbIntegration:
    store.delete_integration(WANDB)
    return wandb_to_api(None)


# -- controllers -------------------------------------------------------------------------------


class IntegrationController(Controller):
    path = "/v1/settings/integrations/openreward"
    tags = ["settings"]

    @litestar.put("/", sync_to_thread=True, opt={"rule": "admin"})
    def put_openreward(self, store: NamedDependency[Store], data: JSONBody[OpenRewardSettings]) -> Integration:
        return put(store, data)

    @litestar.get("/", sync_to_thread=True)
    def get_openreward(self, store: NamedDependency[Store]) -> Integration:
        return get(store)

    @litestar.delete("/", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def delete_openreward(self, store: NamedDependency[Store]) -> Integration:
        return delete(store)


class WandbController(Controller):
    path = "/v1/settings/integrations/wandb"
    tags = ["settings"]

    @litestar.put("/", sync_to_thread=True, opt={"rule": "admin"})
    def put_wandb(self, store: NamedDependency[Store], data: JSONBody[WandbSettings]) -> WandbIntegration:
        return put_wandb(store, data)

    @litestar.get("/", sync_to_thread=True)
    def get_wandb(self, store: NamedDependency[Store]) -> WandbIntegration:
        return get_wandb(store)

    @litestar.delete("/", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def delete_wandb(self, store: NamedDependency[Store]) -> WandbIntegration:
        return delete_wandb(store)
