"""The settings page: devices and what runs on them, API keys (a new one shown once), the
OpenReward integration, and the cloud providers with their live prices (loaded after the page,
so a slow provider never slows it)."""

from __future__ import annotations

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
) -> Response:
    """The page, or one of its panels after a change, with the outcome shown in it."""
    context = {**_settings_context(store, inventory, settings), **_quota_context(request, store)}
    return render(request, template, new_key=new_key, error=error, message=message, **context)


def _quota_context(request: Request, store: Store) -> dict:
    """This key's limits and usage; for an admin also the lab's and every key's."""
    who = caller(request)
    context: dict = {"my_quotas": quotas.key_quotas(store, who.id) if who else None}
    if who is not None and who.is_admin:
        keys, _ = api_keys.list_(store, 100)
        context["lab_quotas"] = quotas.lab(store)
        context["key_quotas"] = [(k, quotas.key_quotas(store, k["id"])) for k in keys]
    return context


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
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert(
            {
                "default": {k: _limit(form, k) for k in quotas.LIMITS},
                "monthly_budget_usd": _limit(form, "monthly_budget_usd"),
            },
            quotas.LabQuotas,
        )
        await anyio.to_thread.run_sync(quotas.set_lab, store, body)
        message = "Lab quotas saved."
    except ApiError as exc:
        error = error_context(exc)
    return await anyio.to_thread.run_sync(
        lambda: _panel(request, "_quotas.html", store, inventory, settings, error=error, message=message)
    )


@post("/settings/api-keys/{key_id:str}/quotas", include_in_schema=False, opt={"rule": "admin"})
async def save_key_quotas(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
    key_id: FromPath[str],
) -> Response:
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert({k: _limit(form, k) for k in quotas.LIMITS}, quotas.Limits)
        await anyio.to_thread.run_sync(quotas.set_key, store, key_id, body)
        message = f"Quotas of key {key_id} saved."
    except ApiError as exc:
        error = error_context(exc)
    return await anyio.to_thread.run_sync(
        lambda: _panel(request, "_quotas.html", store, inventory, settings, error=error, message=message)
    )


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
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert(
            {"api_key": form.get("api_key") or "", "base_url": (form.get("base_url") or "").strip() or None},
            OpenRewardSettings,
        )
        await anyio.to_thread.run_sync(integrations.put, store, body)
        message = "OpenReward key saved."
    except ApiError as exc:
        error = error_context(exc)
    return _panel(request, "_integration.html", store, inventory, settings, error=error, message=message)


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
    form = await text_fields(request)
    error, message = None, None
    try:
        fields = {name: (form.get(name) or "").strip() or None for name in ("project", "entity", "base_url")}
        body = convert(
            {"api_key": form.get("api_key") or "", "mode": form.get("mode") or "online", **fields}, WandbSettings
        )
        await anyio.to_thread.run_sync(integrations.put_wandb, store, body)
        message = "W&B key saved: new jobs log to W&B."
    except ApiError as exc:
        error = error_context(exc)
    context = _settings_context(store, inventory, settings)
    return render(request, "_integration.html", panel="wandb", error=error, message=message, **context)


@post("/settings/wandb/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_wandb(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    integrations.delete_wandb(store)
    context = _settings_context(store, inventory, settings)
    return render(request, "_integration.html", panel="wandb", error=None, message="W&B key removed.", **context)


@post("/settings/huggingface", include_in_schema=False, opt={"rule": "admin"})
async def save_huggingface(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    """The API's PUT /v1/settings/integrations/huggingface: the token is checked with the Hub's
    whoami first (--hf-endpoint), nothing is saved otherwise."""
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert({"token": form.get("token") or ""}, hub.HuggingFaceSettings)
        saved = await anyio.to_thread.run_sync(hub.put, store, settings, body)
        message = f"Hugging Face token saved: jobs can push to the Hub as {saved.username}."
    except ApiError as exc:
        error = error_context(exc)
    context = await anyio.to_thread.run_sync(_settings_context, store, inventory, settings)
    return render(request, "_hf_integration.html", error=error, message=message, **context)


@post("/settings/huggingface/delete", include_in_schema=False, sync_to_thread=True, opt={"rule": "admin"})
def delete_huggingface(
    request: Request,
    store: NamedDependency[Store],
    inventory: NamedDependency[Inventory],
    settings: NamedDependency[Settings],
) -> Response:
    hub.delete(store)
    context = _settings_context(store, inventory, settings)
    return render(request, "_hf_integration.html", error=None, message="Hugging Face token removed.", **context)


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
    form = await text_fields(request)
    error, message = None, None
    try:
        body = convert(
            {
                "api_key": form.get("api_key") or "",
                "base_url": (form.get("base_url") or "").strip() or None,
                "image": (form.get("image") or "").strip() or None,
                # Only Lambda's form has the field; a PUT replaces every setting, so it is sent back.
                "ssh_user": (form.get("ssh_user") or "").strip() or None,
            },
            ProviderSettings,
        )
        saved = await anyio.to_thread.run_sync(provider_settings.put, store, name, body)
        message = saved.warning or f"{TITLES[name]} key saved."
    except ApiError as exc:
        error = error_context(exc)
    return _panel(request, "_providers.html", store, inventory, settings, error=error, message=message)


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
