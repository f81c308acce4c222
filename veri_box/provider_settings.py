"""The cloud providers' settings: an API key (with an optional base URL and image) for RunPod,
Lambda and Prime Intellect, shaped like the OpenReward integration. The key lives only in the
box's database and is never returned: only a hint of it.

A key is checked with one quote call before it is kept: a key the provider refuses is a 400
with the provider's own reason and nothing is stored. A provider that cannot be reached (down,
rate limited, a network error) does not say whether the key is good; the key is then kept and
the answer carries a `warning`, because refusing it would make a box unconfigurable while a
provider has an outage (jobs that go there fail with the provider's error instead)."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlparse

import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from .errors import ApiError, bad_request
from .integrations import key_hint
from .lambda_cloud import SSH_USER as LAMBDA_SSH_USER
from .providers import NAMES, TITLES, ProviderError, build
from .store import Store

# What a key check that could not reach the provider says; anything else it raises is an answer.
UNREACHABLE = ("transient", "rate_limited")
# Lambda's API reports no SSH user (its images log in as `ubuntu`); RunPod and Prime Intellect
# report the user of each instance with its SSH endpoint, so only Lambda takes one.
SSH_USER_DEFAULTS = {"lambda": LAMBDA_SSH_USER}
SSH_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # a POSIX login name, as useradd takes it


class ProviderSettings(msgspec.Struct, forbid_unknown_fields=True):
    api_key: Annotated[str, Meta(min_length=1, max_length=500)]
    base_url: Annotated[str, Meta(max_length=500)] | None = None
    image: Annotated[str, Meta(max_length=500)] | None = None
    ssh_user: Annotated[str, Meta(max_length=100)] | None = None


class ProviderConfig(msgspec.Struct):
    provider: str
    configured: bool
    key_hint: str | None
    base_url: str | None
    image: str | None
    updated_at: str | None
    ssh_user: str | None = None  # Lambda: the login name on its instances; None for the others
    warning: str | None = None  # PUT only: the key was kept without the provider confirming it
    object: str = "provider"


def to_api(name: str, row: dict | None, warning: str | None = None) -> ProviderConfig:
    default_user = SSH_USER_DEFAULTS.get(name)
    if row is None:
        return ProviderConfig(
            provider=name,
            configured=False,
            key_hint=None,
            base_url=None,
            image=None,
            updated_at=None,
            ssh_user=default_user,
        )
    options = row.get("options") or {}
    return ProviderConfig(
        provider=name,
        configured=True,
        key_hint=key_hint(row["api_key"]),
        base_url=row["base_url"],
        image=options.get("image"),
        updated_at=row["updated_at"],
        ssh_user=(options.get("ssh_user") or default_user) if default_user else None,
        warning=warning,
    )


def known(name: str) -> str:
    if name not in NAMES:
        raise ApiError(
            404,
            "provider_not_found",
            f"No cloud provider '{name}'; this box knows {', '.join(NAMES)}.",
            "provider",
        )
    return name


def _single_token(value: str, param: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise bad_request("invalid_value", f"{param} must be a single token without spaces.", param)
    return value


def _ssh_user(name: str, value: str | None) -> str | None:
    """The login name for `name`'s instances, if it takes one (Lambda); None keeps the default."""
    value = (value or "").strip()
    if not value:
        return None
    if name not in SSH_USER_DEFAULTS:
        raise bad_request(
            "invalid_value",
            f"ssh_user applies to Lambda only: {TITLES[name]} reports the SSH user of each instance itself.",
            "ssh_user",
        )
    if not SSH_USER_RE.fullmatch(value):
        raise bad_request(
            "invalid_value",
            "ssh_user must be a login name (lower-case letters, digits, '_', '-', '.', at most 32, "
            "not starting with a digit), such as ubuntu.",
            "ssh_user",
        )
    return value


def _base_url(value: str | None) -> str | None:
    base_url = (value or "").strip().rstrip("/") or None
    if base_url:
        try:
            parsed = urlparse(base_url)
        except ValueError:  # "http://[": not a URL at all (a 400, not a 500)
            parsed = urlparse("")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise bad_request(
                "invalid_value",
                "base_url must be an http(s) URL (a proxy, or a stand-in such as http://127.0.0.1:8080); "
                "omit it for the provider's own API.",
                "base_url",
            )
    return base_url


# -- service functions (the API's controller and the dashboard both call these) ---------------


def get(store: Store, name: str) -> ProviderConfig:
    return to_api(name, store.get_integration(known(name)))


def list_(store: Store) -> list[ProviderConfig]:
    return [to_api(name, store.get_integration(name)) for name in NAMES]


def put(store: Store, name: str, body: ProviderSettings) -> ProviderConfig:
    """Check the key with the provider, then store it (with base_url, image and, for Lambda,
    ssh_user; a PUT replaces all of them); see the module
    docstring for a provider that cannot be reached. Providers' cached quotes are keyed on the
    row's updated_at, so the new key is used from the next call on."""
    known(name)
    key = _single_token(body.api_key, "api_key")
    base_url = _base_url(body.base_url)
    image = _single_token(body.image, "image") if body.image and body.image.strip() else None
    ssh_user = _ssh_user(name, body.ssh_user)
    options = {k: v for k, v in (("image", image), ("ssh_user", ssh_user)) if v} or None
    warning = _check_key(name, key, base_url, options)
    return to_api(name, store.put_integration(name, key, base_url, options), warning)


def delete(store: Store, name: str) -> ProviderConfig:
    store.delete_integration(known(name))
    return to_api(name, None)


def _check_key(name: str, key: str, base_url: str | None, options: dict | None) -> str | None:
    """None if the provider took the key, a warning if it could not be asked; a 400 with the
    provider's reason if it refused it. The adapter is built for the candidate key, so nothing
    is stored before the provider has answered."""
    try:
        build(name, key, base_url, options).quote(None, None)
    except ProviderError as exc:
        if exc.kind in UNREACHABLE:
            return f"Saved without the provider confirming the key, which could not be checked: {exc}"
        if exc.kind == "auth_failed":
            raise bad_request("provider_auth_failed", str(exc), "api_key") from None
        # Any other answer (no capacity, say) came from a provider that took the key.
    return None


# -- controller --------------------------------------------------------------------------------


class ProviderSettingsController(Controller):
    path = "/v1/settings/providers"
    tags = ["settings"]

    @litestar.put("/{name:str}", sync_to_thread=True, opt={"rule": "admin"})
    def put_provider(
        self, store: NamedDependency[Store], name: FromPath[str], data: JSONBody[ProviderSettings]
    ) -> ProviderConfig:
        return put(store, name, data)

    @litestar.get("/{name:str}", sync_to_thread=True)
    def get_provider(self, store: NamedDependency[Store], name: FromPath[str]) -> ProviderConfig:
        return get(store, name)

    @litestar.delete("/{name:str}", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def delete_provider(self, store: NamedDependency[Store], name: FromPath[str]) -> ProviderConfig:
        return delete(store, name)
