"""The settings page: devices and what runs on them, API keys (a new one shown once), the
OpenReward integration, and the cloud providers with their live prices (loaded after the page,
so a slow provider never slows it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from .. import api_keys, devices, hub, integrations, provider_settings, quotas
from ..api_keys import CreateApiKey
from ..auth import caller
from ..devices import Inventory, box_info
from ..errors import ApiError, bad_request
from ..integrations import OpenRewardSettings, WandbSettings
from ..placement import Placement
from ..provider_settings import ProviderSettings
from ..providers import TITLES
from ..sessions import Session, current
from ..settings import Settings
from ..store import Store
from .rendering import convert, error_context, inventory_rows, render, text_fields


def _settings_context(store: Store, inventory: Inventory, settings: Settings) -> dict:
    keys, _ = api_keys.list_(store, 100)
    holders = store.jobs_holding_devices()
    by_type: dict[str, list[dict]] = {}
    for job in holders:
        by_type.setdefault(job["gpu"]["type"], []).append(job)
    return {
        "keys": keys,
        "integration": integrations.get(store),
        "wandb": integrations.get_wandb(store),
        "huggingface": hub.get(store),
        "providers": provider_settings.list_(store),
        "provider_titles": TITLES,
        "inventory": inventory_rows(store, inventory),
        "holders": by_type,
        "settings": settings,
        "box_info": box_info(settings),
    }


def _panel(
    request: Request,
    template: str,
    store: Store,
    inventory: Inventory,
    settings: Settings,
    *,
    new_key: api_keys.NewApiKey | None = None,
    error: dict | None = None,
    message: str | None = None,
    **extra: Any,
) -> Response:
    """The page, or one of its panels after a change, with the outcome shown in it."""
    context = {**_settings_context(store, inventory, settings), **_quota_context(request, store)}
    return render(request, template, new_key=new_key, error=error, message=message, **context, **extra)


async def _submit(
    request: Request,
    template: str,
    store: Store,
    inventory: Inventory,
    settings: Settings,
    change: Callable[[dict[str, str]], str],
    **extra: Any,
) -> Response:
    """A settings form's post: `change(form)` validates and saves (in a thread: some call out,
    e.g. the Hub's whoami) and says what it did; a refusal is shown in the panel instead, and
    then nothing was saved."""
    form = await text_fields(request)
    error, message = None, None
    try:
        message = await anyio.to_thread.run_sync(change, form)
    except ApiError as exc:
        error = error_context(exc)
    return await anyio.to_thread.run_sync(
        lambda: _panel(request, template, store, inventory, settings, error=error, message=message, **extra)
    )


def _quota_context(request: Request, store: Store) -> dict:
    """This key's limits and usage; for an admin also the lab's and every key's."""
    who = caller(request)
    context: dict = {"my_quotas": quotas.key_quotas(store, who.id) if who else None}
    if who is not None and who.is_admin:
        keys, _ = api_keys.list_(store, 100)
        context["lab_quotas"] = quotas.lab(store)
        context["key_quotas"] = [(k, quotas.key_quotas(store, k["id"])) for k in keys]
    return context


def _text(form: dict[str, str], name: str) -> str | None:
    """An optional text field: blank is not given."""
    return (form.get(name) or "").strip() or None


_KINDS = {"max_running_jobs": int, "max_gpus": int, "monthly_spend_usd": float, "monthly_budget_usd": float}


def _limit(form: dict[str, str], name: str) -> int | float | None:
    """A limit field: empty is no limit; anything else a number (the API's bounds apply after)."""
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    try:
        return _KINDS[name](raw)
    except ValueError:
        raise bad_request("invalid_value", f"{name} must be a number, or empty for no limit.", name) from None


@post("/settings/quotas", include_in_schema=False, opt={"rule": "admin"})
async def save_lab_quotas(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    def change(form: dict[str, str]) -> str:
        default = {k: _limit(form, k) for k in quotas.LIMITS}
        body = {"default": default, "monthly_budget_usd": _limit(form, "monthly_budget_usd")}
        quotas.set_lab(store, convert(body, quotas.LabQuotas))
        return "Lab quotas saved."

    return await _submit(request, "_quotas.html", store, inventory, settings, change)


@post("/settings/api-keys/{key_id:str}/quotas", include_in_schema=False, opt={"rule": "admin"})
async def save_key_quotas(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
    key_id: FromPath[str],
) -> Response:
    def change(form: dict[str, str]) -> str:
        quotas.set_key(store, key_id, convert({k: _limit(form, k) for k in quotas.LIMITS}, quotas.Limits))
        return f"Quotas of key {key_id} saved."

    return await _submit(request, "_quotas.html", store, inventory, settings, change)


@get("/settings", include_in_schema=False, sync_to_thread=True)
def settings_page(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    return _panel(request, "settings.html", store, inventory, settings)


@get("/settings/devices", include_in_schema=False, sync_to_thread=True)
def devices_panel(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    return render(request, "_devices.html", **_settings_context(store, inventory, settings))


@post("/settings/api-keys", include_in_schema=False, opt={"rule": "admin"})
async def create_api_key(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    form = await text_fields(request)
    new_key, error = None, None
    try:
        fields = {"name": (form.get("name") or "").strip(), "role": form.get("role") or "member"}
        body = convert(fields, CreateApiKey)
        new_key = await anyio.to_thread.run_sync(api_keys.create, store, body.name, body.role)
    except ApiError as exc:
        error = error_context(exc)
    return _panel(request, "_api_keys.html", store, inventory, settings, new_key=new_key, error=error)


@post("/settings/api-keys/{key_id:str}/revoke", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
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
    return _panel(request, "_api_keys.html", store, inventory, settings, message=f"Revoked key {key_id}.")


@post("/settings/openreward", include_in_schema=False, opt={"rule": "admin"})
async def save_openreward(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    def change(form: dict[str, str]) -> str:
        body = {"api_key": form.get("api_key") or "", "base_url": _text(form, "base_url")}
        integrations.put(store, convert(body, OpenRewardSettings))
        return "OpenReward key saved."

    return await _submit(request, "_integration.html", store, inventory, settings, change)


@post("/settings/openreward/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_openreward(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    integrations.delete(store)
    return _panel(request, "_integration.html", store, inventory, settings, message="OpenReward key removed.")


@post("/settings/wandb", include_in_schema=False, opt={"rule": "admin"})
async def save_wandb(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    def change(form: dict[str, str]) -> str:
        fields = {name: _text(form, name) for name in ("project", "entity", "base_url")}
        body = {"api_key": form.get("api_key") or "", "mode": form.get("mode") or "online", **fields}
        integrations.put_wandb(store, convert(body, WandbSettings))
        return "W&B key saved: new jobs log to W&B."

    return await _submit(request, "_integration.html", store, inventory, settings, change, panel="wandb")


@post("/settings/wandb/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_wandb(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    integrations.delete_wandb(store)
    return _panel(request, "_integration.html", store, inventory, settings, message="W&B key removed.", panel="wandb")


@post("/settings/huggingface", include_in_schema=False, opt={"rule": "admin"})
async def save_huggingface(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    """The API's PUT /v1/settings/integrations/huggingface: the token is checked with the Hub's
    whoami first (--hf-endpoint), nothing is saved otherwise."""

    def change(form: dict[str, str]) -> str:
        saved = hub.put(store, settings, convert({"token": form.get("token") or ""}, hub.HuggingFaceSettings))
        return f"Hugging Face token saved: jobs can push to the Hub as {saved.username}."

    return await _submit(request, "_hf_integration.html", store, inventory, settings, change)


@post("/settings/huggingface/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_huggingface(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    hub.delete(store)
    return _panel(request, "_hf_integration.html", store, inventory, settings, message="Hugging Face token removed.")


@get("/settings/quotes", include_in_schema=False, sync_to_thread=True)
def provider_quotes(request: Request, placement: NamedDependency[Placement]) -> Response:
    """Every configured provider's quotes (provider x GPU type x price x availability), and the
    providers that did not answer."""
    quotes, statuses = devices.cloud_rows(placement)
    configured = placement.providers is not None and bool(placement.providers.configured())
    return render(request, "_provider_quotes.html", quotes=quotes, statuses=statuses, configured=configured)


@post("/settings/providers/{name:str}", include_in_schema=False, opt={"rule": "admin"})
async def save_provider(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
    name: FromPath[str],
) -> Response:
    def change(form: dict[str, str]) -> str:
        # Only Lambda's form has ssh_user; a PUT replaces every setting, so it is sent back.
        fields = {field: _text(form, field) for field in ("base_url", "image", "ssh_user")}
        saved = provider_settings.put(
            store, name, convert({"api_key": form.get("api_key") or "", **fields}, ProviderSettings)
        )
        return saved.warning or f"{TITLES[name]} key saved."

    return await _submit(request, "_providers.html", store, inventory, settings, change)


@post("/settings/providers/{name:str}/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_provider(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
    name: FromPath[str],
) -> Response:
    provider_settings.delete(store, name)
    return _panel(request, "_providers.html", store, inventory, settings, message=f"{TITLES[name]} key removed.")
