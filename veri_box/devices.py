"""GET /v1/gpu/availability: every device type of this box with its free count and price."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from .inventory import CPU, DeviceType, Inventory, InventoryError, build_inventory, in_use, type_name
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


class AvailabilityList(msgspec.Struct):
    availability: list[Availability]
    object: str = "list"


@get("/v1/gpu/availability", tags=["devices"], sync_to_thread=True)
def availability(store: NamedDependency[Store], inventory: NamedDependency[Inventory]) -> AvailabilityList:
    """Every device type on this box with its total and free counts."""
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
    return AvailabilityList(availability=rows)
