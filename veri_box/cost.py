"""GET /v1/cost/estimate: what a job of that GPU shape and length would cost where the box would
run it, by the same rules as a submitted job (placement.py): this box's devices at
`--price-per-hour`, a Slurm partition at its price, or the cheapest in-stock cloud offer at
the provider's live quote. The box adds nothing on top of what the devices cost: the `markup`
the official client sends is ignored."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import Parameter

from .errors import ApiError, bad_request
from .inventory import in_use
from .placement import LOCAL, SLURM, Placement
from .store import Store

# placement.check names the job's fields; the estimate's query names them like this.
_PARAMS = {"gpu.type": "gpu_type", "gpu.count": "gpu_count"}


class Quote(msgspec.Struct):
    provider: str
    region: str
    gpu_count: int
    price_per_hr: float  # for all gpu_count GPUs
    estimated_cost_usd: float
    available: bool


class CostEstimate(msgspec.Struct):
    provider: str  # where a job of this shape would run: "local", "slurm" or a cloud provider
    gpu_type: str
    gpu_count: int
    duration_minutes: float
    region: str
    price_per_hr: float  # for all gpu_count GPUs
    price_per_gpu_hr: float
    estimated_cost_usd: float
    available: bool  # whether it could start now (free devices, in stock)
    offers: list[Quote]  # cloud: every in-stock offer of this shape, cheapest first
    currency: str = "usd"
    object: str = "cost_estimate"


def _usd(price_per_hr: float, minutes: float) -> float:
    return round(price_per_hr * minutes / 60, 4)


def estimate(
    store: Store, placement: Placement, gpu_type: str, gpu_count: int, minutes: float, provider: str | None
) -> CostEstimate:
    """Where a job of this shape would go (or `provider`), at that place's price; the submit-time
    400s (provider_unavailable, provider_not_configured, gpu_unavailable) when it could go nowhere."""
    try:
        placement.check(gpu_type, gpu_count, provider)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, exc.message, _PARAMS.get(exc.param or "", exc.param)) from None
    target = placement.target(gpu_type, provider)
    if target == LOCAL:
        device = placement.inventory.types[gpu_type]
        free = device.count - in_use(store).get(gpu_type, 0)
        price = device.price_per_hr * gpu_count
        return _estimate(LOCAL, gpu_type, gpu_count, minutes, "local", price, free >= gpu_count, [])
    if target == SLURM and placement.cluster is not None:  # check() refused slurm without a cluster
        return _slurm(placement.cluster.availability(), gpu_type, gpu_count, minutes)
    only = (provider,) if provider else None
    offers = placement.providers.offers(gpu_type, gpu_count, only=only)  # type: ignore[union-attr]
    quotes = [
        Quote(o.provider, o.region, o.gpu_count, o.price_per_hr, _usd(o.price_per_hr, minutes), o.available)
        for o in offers
    ]
    if not offers:  # sold out between placement's look and this one
        raise bad_request("gpu_unavailable", f"No provider has {gpu_count} x '{gpu_type}' in stock now.", "gpu_type")
    best = offers[0]
    return _estimate(best.provider, gpu_type, gpu_count, minutes, best.region, best.price_per_hr, True, quotes)


def _slurm(rows: list[dict], gpu_type: str, count: int, minutes: float) -> CostEstimate:
    """The cheapest partition with `count` idle GPUs of the type on a node, else the cheapest.
    A row's price is for its gpu_count GPUs (--price-per-hour x the largest node's GPUs)."""
    rows = [r for r in rows if r["gpu_type"] == gpu_type]
    if not rows:
        raise bad_request("gpu_unavailable", f"No Slurm partition reports '{gpu_type}' GPUs now.", "gpu_type")

    def per_gpu(row: dict) -> float:
        return row["price_per_hr"] / max(row["gpu_count"], 1)

    row = min(rows, key=lambda r: (r["available"] < count, per_gpu(r)))
    price = per_gpu(row) * count
    return _estimate(SLURM, gpu_type, count, minutes, row["region"], price, row["available"] >= count, [])


def _estimate(
    provider: str,
    gpu_type: str,
    count: int,
    minutes: float,
    region: str,
    price_per_hr: float,
    available: bool,
    offers: list[Quote],
) -> CostEstimate:
    return CostEstimate(
        provider=provider,
        gpu_type=gpu_type,
        gpu_count=count,
        duration_minutes=minutes,
        region=region,
        price_per_hr=round(price_per_hr, 4),
        price_per_gpu_hr=round(price_per_hr / count, 4),
        estimated_cost_usd=_usd(price_per_hr, minutes),
        available=available,
        offers=offers,
    )


@get("/v1/cost/estimate", tags=["cost"], sync_to_thread=True)
def cost_estimate(
    store: NamedDependency[Store],
    placement: NamedDependency[Placement],
    gpu_type: Annotated[str | None, Parameter(max_length=100)] = None,
    gpu_count: Annotated[int, Parameter(ge=1, le=1024)] = 1,
    duration_minutes: Annotated[float, Parameter(ge=0, le=10_000_000)] = 60,
    provider: Annotated[str | None, Parameter(max_length=100)] = None,
) -> CostEstimate:
    """The cost of `duration_minutes` on `gpu_count` x `gpu_type` where the box would run it
    (or at `provider`)."""
    if not gpu_type:  # checked here rather than by Litestar, whose 400 would name no field
        raise bad_request("missing_field", "The query parameter 'gpu_type' is required (e.g. A100-80GB).", "gpu_type")
    return estimate(store, placement, gpu_type, gpu_count, duration_minutes, provider)
