"""GET /v1/gpu/availability: every device type of this box with its free count and price, and
how the box runs trainers (its sandbox)."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from . import sandbox
from .inventory import CPU, DeviceType, Inventory, InventoryError, build_inventory, in_use, type_name
from .settings import Settings
from .store import Store

__all__ = ["CPU", "DeviceType", "Inventory", "InventoryError", "build_inventory", "in_use", "type_name"]


class Availability(msgspec.Struct):
    provider: str
    gpu_type: str
    region: str
    gpu_count: int
    available: int
    status: str
    price_per_hr: float


class BoxInfo(msgspec.Struct):
    sandbox: str  # "bwrap" or "none"
    warning: str | None  # set when trainers run without a sandbox


class AvailabilityList(msgspec.Struct):
    availability: list[Availability]
    box: BoxInfo
    object: str = "list"


def box_info(settings: Settings) -> BoxInfo:
    """The mode the executor runs trainers in (resolved once per process, so the same answer)."""
    return BoxInfo(**sandbox.describe(sandbox.resolve(settings.sandbox)))


@get("/v1/gpu/availability", tags=["devices"], sync_to_thread=True)
def availability(
    store: NamedDependency[Store], inventory: NamedDependency[Inventory], settings: NamedDependency[Settings]
) -> AvailabilityList:
    """Every device type on this box with its total and free counts, and the box's sandbox."""
    used = in_use(store)
    rows = []
    for device in inventory.types.values():
        free = max(device.count - used.get(device.type, 0), 0)
        rows.append(
            Availability(
                provider="local",
                gpu_type=device.type,
                region="local",
                gpu_count=device.count,
                available=free,
                status="available" if free else "busy",
                price_per_hr=device.price_per_hr,
            )
        )
    return AvailabilityList(availability=rows, box=box_info(settings))
