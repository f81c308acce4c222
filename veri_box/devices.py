"""GET /v1/gpu/availability: every place this box can run a job, one row per GPU type and
shape: its own devices (with the free count and --price-per-hour), the Slurm partitions of
--slurm, and the live quotes of every configured cloud provider. A provider that does not
answer is listed under `providers` with its error, never a failed request."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import Parameter

from . import sandbox
from .inventory import CPU, DeviceType, Inventory, InventoryError, build_inventory, in_use, type_name
from .placement import LOCAL, SLURM, Placement
from .settings import Settings
from .store import Store

__all__ = ["CPU", "DeviceType", "Inventory", "InventoryError", "build_inventory", "in_use", "type_name"]


class Availability(msgspec.Struct):
    provider: str
    gpu_type: str
    region: str
    gpu_count: int
    available: int  # GPUs of the row that could be had now (local: free devices; cloud: all or none)
    status: str  # "available", "busy" (all held) or "unavailable" (not in stock; Slurm: no node takes jobs)
    price_per_hr: float  # local: per device; Slurm and cloud: for the row's gpu_count GPUs
    price_per_gpu_hr: float
    detail: str | None = None  # the provider's own name for the GPU, or the partition's nodes


class ProviderStatus(msgspec.Struct):
    provider: str
    status: str  # "ok" or "error"
    detail: str | None  # why it gave no rows


class BoxInfo(msgspec.Struct):
    sandbox: str  # "bwrap" or "none"
    warning: str | None  # set when trainers run without a sandbox


class AvailabilityList(msgspec.Struct):
    availability: list[Availability]
    providers: list[ProviderStatus]  # each configured cloud provider: answered, or why not
    box: BoxInfo
    object: str = "list"


def box_info(settings: Settings) -> BoxInfo:
    """The mode the executor runs trainers in (resolved once per process, so the same answer)."""
    return BoxInfo(**sandbox.describe(sandbox.resolve(settings.sandbox)))


def local_rows(store: Store, inventory: Inventory) -> list[Availability]:
    used = in_use(store)
    rows = []
    for device in inventory.types.values():
        free = max(device.count - used.get(device.type, 0), 0)
        rows.append(
            Availability(
                provider=LOCAL,
                gpu_type=device.type,
                region="local",
                gpu_count=device.count,
                available=free,
                status="available" if free else "busy",
                price_per_hr=device.price_per_hr,
                price_per_gpu_hr=device.price_per_hr,
            )
        )
    return rows


def slurm_rows(placement: Placement) -> list[Availability]:
    """The partitions' rows (slurm.py keeps its last sinfo view when the controller is slow)."""
    if placement.cluster is None:
        return []
    return [
        Availability(
            provider=SLURM,
            gpu_type=row["gpu_type"],
            region=row["region"],
            gpu_count=row["gpu_count"],
            available=row["available"],
            status=row["status"],
            price_per_hr=row["price_per_hr"],
            price_per_gpu_hr=round(row["price_per_hr"] / max(row["gpu_count"], 1), 4),
            detail=row.get("detail"),
        )
        for row in placement.cluster.availability()
    ]


def cloud_rows(placement: Placement) -> tuple[list[Availability], list[ProviderStatus]]:
    """Every configured provider's quotes (cached by Providers), and which of them failed."""
    providers = placement.providers
    if providers is None or not providers.configured():
        return [], []
    rows = [
        Availability(
            provider=offer.provider,
            gpu_type=offer.gpu_type,
            region=offer.region,
            gpu_count=offer.gpu_count,
            available=offer.gpu_count if offer.available else 0,
            status="available" if offer.available else "unavailable",
            price_per_hr=offer.price_per_hr,
            price_per_gpu_hr=round(offer.price_per_hr / max(offer.gpu_count, 1), 4),
            detail=offer.provider_gpu or None,
        )
        for offer in providers.quotes()
    ]
    errors = providers.last_errors()
    statuses = [
        ProviderStatus(name, "error", errors[name]) if name in errors else ProviderStatus(name, "ok", None)
        for name in providers.configured()
    ]
    return sorted(rows, key=lambda r: (r.gpu_type, r.price_per_hr, r.provider)), statuses


def availability_list(
    store: Store,
    placement: Placement,
    settings: Settings,
    provider: str | None = None,
    gpu_type: str | None = None,
    region: str | None = None,
) -> AvailabilityList:
    """Local, Slurm and cloud rows, filtered as the official client's filters ask."""
    cloud, statuses = cloud_rows(placement)
    rows = [
        row
        for row in [*local_rows(store, placement.inventory), *slurm_rows(placement), *cloud]
        if provider in (None, row.provider)
        and (gpu_type is None or gpu_type.lower() == row.gpu_type.lower())
        and region in (None, row.region)
    ]
    statuses = [s for s in statuses if provider in (None, s.provider)]
    return AvailabilityList(availability=rows, providers=statuses, box=box_info(settings))


@get("/v1/gpu/availability", tags=["devices"], sync_to_thread=True)
def availability(
    store: NamedDependency[Store],
    placement: NamedDependency[Placement],
    settings: NamedDependency[Settings],
    provider: Annotated[str | None, Parameter(max_length=100)] = None,
    gpu_type: Annotated[str | None, Parameter(max_length=100)] = None,
    region: Annotated[str | None, Parameter(max_length=200)] = None,
) -> AvailabilityList:
    """Every device type on this box with its total and free counts, the Slurm partitions, each
    configured cloud provider's quotes, and the box's sandbox."""
    return availability_list(store, placement, settings, provider, gpu_type, region)
