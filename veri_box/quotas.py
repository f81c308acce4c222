"""Quotas and budgets: what one key may hold at once and spend a month, and what the box may spend.
The runner calls this module, so it has no routes (they are in api_keys.py).

Limits live in the store's `quotas` table by scope: 'default' (the lab default, for every key
without its own value), 'box' (the box-wide monthly cloud budget) and an api key's id. A null
limit means no limit; a key's own null falls back to the lab default.

How each limit acts (docs/api.md says the same):
- Concurrency (running jobs, GPUs held at once): a job that could never fit (it asks more GPUs
  than the key may hold, or the key may run no job at all) is refused at submit with 429
  `quota_exceeded`. Otherwise it is accepted and WAITS in the queue while its key is at a limit,
  with one `waiting_for_quota` event: refusing would make people poll and resubmit, and the
  queue is already where a job waits for devices. Other keys' jobs go past it.
- Monthly cloud spend (per key, calendar month UTC): a job that may run on a rented GPU is refused
  at submit with 429 `quota_exceeded` once the key has reached its limit, and with 402
  `budget_exceeded` once the box has reached its budget; a running cloud job whose key reaches
  its limit is cancelled by the runner with a `spend_limit_reached` event.
GPUs are counted as devices held: on a box without GPUs, the cpu pool's slots count the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from .errors import ApiError, not_found
from .placement import Placement
from .store import Store, now

DEFAULT, BOX = "default", "box"
LIMITS = ("max_running_jobs", "max_gpus", "monthly_spend_usd")

Count = Annotated[int, Meta(ge=0, le=100_000)]
Usd = Annotated[float, Meta(ge=0, le=10_000_000)]


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    """Limits of one key or of the lab default; null: no limit (a key's null: the lab default's)."""

    max_running_jobs: Count | None = None
    max_gpus: Count | None = None
    monthly_spend_usd: Usd | None = None


class LabQuotas(msgspec.Struct, forbid_unknown_fields=True):
    """PUT /v1/settings/quotas: the lab default for every key, and the box's monthly cloud budget."""

    default: Limits = msgspec.field(default_factory=Limits)
    monthly_budget_usd: Usd | None = None


class LabQuotasOut(msgspec.Struct):
    default: Limits
    monthly_budget_usd: float | None
    box_spend_usd: float  # this calendar month, every key's cloud instances
    resets_at: str
    object: str = "quota_settings"


class Usage(msgspec.Struct):
    running_jobs: int
    gpus: int
    spend_usd: float  # cloud spend of this key's jobs this calendar month (UTC)
    month_started_at: str
    resets_at: str


class KeyQuotas(msgspec.Struct):
    """A key's own limits, the limits that apply (own, else the lab default) and its usage."""

    api_key_id: str
    own: Limits
    effective: Limits
    usage: Usage
    object: str = "api_key_quotas"


# -- months and spend ---------------------------------------------------------------------------


def month_bounds(at: datetime | None = None) -> tuple[str, str]:
    """(start of this calendar month, start of the next), UTC stamps."""
    at = at or datetime.now(UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m-%dT%H:%M:%S.000Z"), nxt.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def spend(store: Store, key_id: str | None) -> float:
    """USD of cloud instances this month: a key's jobs' (every key's when None). An instance is
    billed from launch to termination (or now); only the part inside this month counts."""
    start, _ = month_bounds()
    return round(store.instances_spend_usd(key_id, start, now()), 4)


# -- limits and usage ---------------------------------------------------------------------------


def _limits(row: dict | None) -> Limits:
    return Limits(**{k: row[k] for k in LIMITS}) if row else Limits()


def own(store: Store, key_id: str) -> Limits:
    return _limits(store.get_quota(key_id))


def effective(store: Store, key_id: str) -> Limits:
    mine, lab = own(store, key_id), _limits(store.get_quota(DEFAULT))
    return Limits(**{k: getattr(mine, k) if getattr(mine, k) is not None else getattr(lab, k) for k in LIMITS})


def usage(store: Store, key_id: str) -> Usage:
    placed = store.jobs_placed_by(key_id)
    start, reset = month_bounds()
    return Usage(
        running_jobs=len(placed),
        gpus=sum((j["gpu"] or j["gpu_requested"])["count"] for j in placed),
        spend_usd=spend(store, key_id),
        month_started_at=start,
        resets_at=reset,
    )


def key_quotas(store: Store, key_id: str) -> KeyQuotas:
    return KeyQuotas(
        api_key_id=key_id, own=own(store, key_id), effective=effective(store, key_id), usage=usage(store, key_id)
    )


def lab(store: Store) -> LabQuotasOut:
    box = store.get_quota(BOX)
    return LabQuotasOut(
        default=_limits(store.get_quota(DEFAULT)),
        monthly_budget_usd=box["monthly_spend_usd"] if box else None,
        box_spend_usd=spend(store, None),
        resets_at=month_bounds()[1],
    )


def set_key(store: Store, key_id: str, limits: Limits) -> KeyQuotas:
    if store.get_api_key(key_id) is None:
        raise not_found("api key", key_id)
    store.put_quota(key_id, msgspec.structs.asdict(limits))
    return key_quotas(store, key_id)


def set_lab(store: Store, body: LabQuotas) -> LabQuotasOut:
    store.put_quota(DEFAULT, msgspec.structs.asdict(body.default))
    store.put_quota(BOX, {"max_running_jobs": None, "max_gpus": None, "monthly_spend_usd": body.monthly_budget_usd})
    return lab(store)


# -- enforcement --------------------------------------------------------------------------------


def _refuse(limit: str, value: float, used: float, resets: str | None, status: int = 429) -> ApiError:
    code = "quota_exceeded" if status == 429 else "budget_exceeded"
    when = f"it resets at {resets}" if resets else "ask an admin of this box to raise it"
    what = {
        "max_running_jobs": "running jobs at once",
        "max_gpus": "GPUs held at once",
        "monthly_spend_usd": "cloud spend this month (USD)",
        "monthly_budget_usd": "the box's cloud budget this month (USD)",
    }[limit]
    return ApiError(
        status,
        code,
        f"This job would pass the limit {limit} ({what}): the limit is {value:g}, usage is {used:g}; {when}.",
        limit,
    )


def check_submit(store: Store, placement: Placement, key_id: str | None, gpu: dict, provider: str | None) -> None:
    """Refuse at submit what a key's limits can never let run, and cloud jobs past a spend limit."""
    if key_id is None:
        return
    limits = effective(store, key_id)
    if limits.max_running_jobs == 0:
        raise _refuse("max_running_jobs", 0, usage(store, key_id).running_jobs, None)
    if limits.max_gpus is not None and gpu["count"] > limits.max_gpus:
        raise _refuse("max_gpus", limits.max_gpus, gpu["count"], None)
    if not _may_rent(placement, gpu, provider):
        return
    _, reset = month_bounds()
    if limits.monthly_spend_usd is not None:
        used = spend(store, key_id)
        if used >= limits.monthly_spend_usd:
            raise _refuse("monthly_spend_usd", limits.monthly_spend_usd, used, reset)
    box = store.get_quota(BOX)
    if box and box["monthly_spend_usd"] is not None:
        used = spend(store, None)
        if used >= box["monthly_spend_usd"]:
            raise _refuse("monthly_budget_usd", box["monthly_spend_usd"], used, reset, status=402)


def _may_rent(placement: Placement, gpu: dict, provider: str | None) -> bool:
    return placement.target(gpu["type"], provider) == "cloud" or (provider is None and placement.burst_after_s > 0)


def spend_warning(
    store: Store, placement: Placement, key_id: str | None, gpu: dict, provider: str | None
) -> dict | None:
    """The `spend_warning` event's metadata for a job that may rent a GPU under a spend limit:
    the cheapest offer's price and how long the job can run before the limit cancels it."""
    if key_id is None or not _may_rent(placement, gpu, provider) or placement.providers is None:
        return None
    room = []
    limit = effective(store, key_id).monthly_spend_usd
    if limit is not None:
        room.append(("monthly_spend_usd", limit, spend(store, key_id)))
    box = store.get_quota(BOX)
    if box and box["monthly_spend_usd"] is not None:
        room.append(("monthly_budget_usd", box["monthly_spend_usd"], spend(store, None)))
    if not room:
        return None
    try:
        offers = placement.providers.offers(gpu["type"], gpu["count"], only=(provider,) if provider else None)
    except Exception:  # a provider that does not answer only costs the warning
        return None
    if not offers:
        return None
    price = offers[0].price_per_hr
    name, value, used = min(room, key=lambda r: r[1] - r[2])
    hours = max(value - used, 0.0) / price if price > 0 else None
    message = (
        f"At {offers[0].provider}'s ${price:g}/h this job can run about {hours:.2f} h before {name} "
        f"(${value:g}, ${used:.2f} used this month) is reached; it is then cancelled."
        if hours is not None
        else f"{name} is ${value:g}; ${used:.2f} used this month."
    )
    return {
        "limit": name,
        "value": value,
        "usage": used,
        "price_per_hr": price,
        "hours_left": round(hours, 3) if hours is not None else None,
        "message": message,
    }


def waiting_for(store: Store, job: dict) -> dict | None:
    """Why a queued job must wait for its key's concurrency limits (None: it may start now);
    the `waiting_for_quota` event's metadata."""
    key_id = job.get("created_by")
    if not key_id:
        return None
    limits = effective(store, key_id)
    if limits.max_running_jobs is None and limits.max_gpus is None:
        return None
    # Only what is held now (the runner asks this every tick for every queued job: no spend query).
    placed = store.jobs_placed_by(key_id)
    running, gpus = len(placed), sum((j["gpu"] or j["gpu_requested"])["count"] for j in placed)
    if limits.max_running_jobs is not None and running + 1 > limits.max_running_jobs:
        return {"limit": "max_running_jobs", "value": limits.max_running_jobs, "usage": running}
    count = job["gpu_requested"]["count"]
    if limits.max_gpus is not None and gpus + count > limits.max_gpus:
        return {"limit": "max_gpus", "value": limits.max_gpus, "usage": gpus, "requested": count}
    return None


def over_spend(store: Store, key_id: str | None) -> dict | None:
    """The spend_limit_reached metadata when a key has reached its monthly spend limit, or the
    box its monthly budget (None: neither)."""
    limit = effective(store, key_id).monthly_spend_usd if key_id else None
    if limit is not None:
        used = spend(store, key_id)
        if used >= limit:
            return {"reason": "spend_limit_reached", "limit": "monthly_spend_usd", "value": limit, "usage": used}
    box = store.get_quota(BOX)
    if box and box["monthly_spend_usd"] is not None:
        used = spend(store, None)
        if used >= box["monthly_spend_usd"]:
            return {
                "reason": "spend_limit_reached",
                "limit": "monthly_budget_usd",
                "value": box["monthly_spend_usd"],
                "usage": used,
            }
    return None


def cloud_refusal(store: Store, job: dict) -> tuple[str, str] | None:
    """(code, message) when a queued job about to rent a GPU may not (its key or the box is past
    a spend limit): the runner fails it rather than launch (a job that waited, or bursts)."""
    over = over_spend(store, job.get("created_by"))
    if over is None:
        return None
    status = 402 if over["limit"] == "monthly_budget_usd" else 429
    error = _refuse(over["limit"], over["value"], over["usage"], month_bounds()[1], status)
    return error.code, error.message
