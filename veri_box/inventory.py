"""The device types this box can train on: local NVIDIA GPUs and the `cpu` pool.

Types use the hosted API's names (`A100-80GB`, `H100-80GB`, ...), so a script written for
the hosted service asks for the same `gpu.type` here. Plain Python: the runner places jobs
with it, and the API (devices.py) and dashboard show it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from .store import Store

CPU = "cpu"

# (pattern in the NVIDIA product name, API family name); the memory size is appended.
_FAMILIES = [
    (r"\bH200\b", "H200"),
    (r"\bH100\b", "H100"),
    (r"\bH20\b", "H20"),
    (r"\bGH200\b", "GH200"),
    (r"\bB200\b", "B200"),
    (r"\bA100\b", "A100"),
    (r"\bA800\b", "A800"),
    (r"\bA6000\b", "A6000"),
    (r"\bA40\b", "A40"),
    (r"\bA10G?\b", "A10"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"\bV100\b", "V100"),
    (r"\bT4\b", "T4"),
    (r"RTX\s*PRO\s*6000", "RTXPRO6000"),
    (r"RTX\s*6000\s*Ada", "RTX6000Ada"),
    (r"RTX\s*5090", "RTX5090"),
    (r"RTX\s*4090", "RTX4090"),
    (r"RTX\s*3090", "RTX3090"),
]
# Marketed sizes: nvidia-smi reports a little less than the number on the box.
_SIZES = [16, 20, 24, 32, 40, 48, 80, 94, 96, 141, 180, 192]


def type_name(product: str, memory_mib: int) -> str:
    """'NVIDIA A100-SXM4-80GB', 81920 -> 'A100-80GB'."""
    family = next((name for pattern, name in _FAMILIES if re.search(pattern, product, re.I)), None)
    if family is None:
        family = re.sub(r"[^A-Za-z0-9]+", "", product.replace("NVIDIA", "")) or "GPU"
    gib = memory_mib / 1024
    size = min(_SIZES, key=lambda s: abs(s - gib)) if gib > 12 else round(gib)
    return f"{family}-{size}GB"


@dataclass
class DeviceType:
    type: str
    indices: list[int]  # CUDA device indices (cpu: slot numbers)
    price_per_hr: float = 0.0

    @property
    def count(self) -> int:
        return len(self.indices)


@dataclass
class Inventory:
    types: dict[str, DeviceType] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.types:
            return "none (start veri-box with --gpus or --cpu-slots)"
        return ", ".join(f"{t.type} x{t.count}" for t in self.types.values())


def detect_nvidia() -> list[tuple[int, str, int]]:
    """(index, product name, memory MiB) for each GPU nvidia-smi sees; empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            gpus.append((int(parts[0]), parts[1], int(parts[2])))
    return gpus


class InventoryError(ValueError):
    pass


def build_inventory(gpus: str, cpu_slots: int, prices: dict[str, float] | None = None) -> Inventory:
    """From the --gpus and --cpu-slots settings: 'auto' detects, 'none' has no GPUs, and
    'TYPE:N,TYPE:N' declares them (indices counted in order) for machines detection gets wrong."""
    inventory = Inventory()
    spec = gpus.strip()
    if spec == "auto":
        for index, product, memory in detect_nvidia():
            name = type_name(product, memory)
            inventory.types.setdefault(name, DeviceType(name, [])).indices.append(index)
    elif spec and spec != "none":
        next_index = 0
        for part in spec.split(","):
            name, _, count = part.strip().partition(":")
            if not name or not count.isdigit() or int(count) < 1 or name == CPU:
                raise InventoryError(
                    f"--gpus expects 'auto', 'none' or TYPE:N[,TYPE:N] (e.g. A100-80GB:2); got {part!r}"
                )
            inventory.types.setdefault(name, DeviceType(name, [])).indices.extend(
                range(next_index, next_index + int(count))
            )
            next_index += int(count)
    if cpu_slots < 0:
        raise InventoryError("--cpu-slots must be 0 or more")
    if cpu_slots:
        inventory.types[CPU] = DeviceType(CPU, list(range(cpu_slots)))
    for device in inventory.types.values():
        device.price_per_hr = (prices or {}).get(device.type, 0.0)
    return inventory


def in_use(store: Store) -> dict[str, int]:
    """Devices held by jobs whose trainer may still be running (and by deployments), by type."""
    used: dict[str, int] = {}
    for job in store.jobs_holding_devices():
        used[job["gpu"]["type"]] = used.get(job["gpu"]["type"], 0) + len(job["devices"])
    for deployment in store.deployments_holding_devices():  # a serving process holds its device too
        used[deployment["gpu"]["type"]] = used.get(deployment["gpu"]["type"], 0) + len(deployment["devices"])
    return used
