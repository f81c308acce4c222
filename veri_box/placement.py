"""Where a job's trainer runs: this box's own devices, a Slurm cluster, or a GPU rented from a
cloud provider. Checked at submit (so a job that cannot run anywhere is a 400, not a failure
an hour later) and decided again when the runner places it (capacity changes in between).

The rules, in order: a job that names a provider goes there; otherwise the box's own devices
when it has that GPU type (it waits for them while they are busy, unless --burst-after-s sends
it on); otherwise a Slurm partition with that type; otherwise the cheapest cloud offer in stock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import bad_request
from .inventory import Inventory

if TYPE_CHECKING:  # both are plain Python, but the cluster is optional and the import order matters
    from .providers import Offer, Providers
    from .slurm import Cluster

LOCAL = "local"
SLURM = "slurm"
CLOUDS = ("runpod", "lambda", "prime_intellect")
KNOWN = (LOCAL, SLURM, *CLOUDS)


@dataclass(frozen=True)
class Route:
    """Where a queued job goes now: `executor` is "local", "slurm" or "cloud"; None means it
    waits (its devices are busy, or no provider has one in stock right now)."""

    executor: str | None
    offers: list[Offer] | None = None  # cloud: cheapest first
    burst: bool = False  # a local job sent to the cloud after waiting --burst-after-s


class Placement:
    def __init__(
        self,
        inventory: Inventory,
        cluster: Cluster | None = None,
        providers: Providers | None = None,
        burst_after_s: float = 0.0,
    ):
        self.inventory = inventory
        self.cluster = cluster
        self.providers = providers
        self.burst_after_s = burst_after_s

    def target(self, gpu_type: str, provider: str | None) -> str:
        """Which kind of place the rules pick for this GPU type: LOCAL, SLURM or "cloud"."""
        if provider == LOCAL or (provider is None and gpu_type in self.inventory.types):
            return LOCAL
        if provider == SLURM or (provider is None and self._on_slurm(gpu_type)):
            return SLURM
        return "cloud"

    # -- at submit ---------------------------------------------------------------------------

    def check(self, gpu_type: str, count: int, provider: str | None) -> None:
        """Raise a 400 unless the job could run somewhere: the named provider, or by the rules."""
        if provider not in (None, *KNOWN):
            raise bad_request(
                "provider_unavailable",
                f"Unknown provider '{provider}'; use one of {', '.join(KNOWN)}, or omit it to let the box choose.",
                "provider",
            )
        target = self.target(gpu_type, provider)
        if target == LOCAL:
            self._check_local(gpu_type, count)
            return
        if target == SLURM:
            self._check_slurm(gpu_type, count)
            return
        if provider in CLOUDS and provider not in self._configured():
            raise bad_request(
                "provider_not_configured",
                f"Provider '{provider}' has no API key on this box; set one with "
                f"PUT /v1/settings/providers/{provider} (or on the dashboard's Settings page).",
                "provider",
            )
        if not self._configured() or not self._offers(gpu_type, count, provider):
            raise bad_request("gpu_unavailable", self._nowhere(gpu_type, count, provider), "gpu.type")

    def _check_local(self, gpu_type: str, count: int) -> None:
        device = self.inventory.types.get(gpu_type)
        if device is None:
            raise bad_request(
                "gpu_unavailable",
                f"This box has no '{gpu_type}' devices; it has: {self.inventory.describe()}.",
                "gpu.type",
            )
        if count > device.count:
            raise bad_request(
                "gpu_unavailable",
                f"gpu.count {count} is more than the {device.count} {gpu_type} device(s) this box has.",
                "gpu.count",
            )

    def _check_slurm(self, gpu_type: str, count: int) -> None:
        if self.cluster is None:
            raise bad_request(
                "provider_not_configured",
                "This box has no Slurm cluster; start it with veri-box serve --slurm PARTITION.",
                "provider",
            )
        types = self.cluster.types()
        if gpu_type not in types:
            have = ", ".join(f"{t} x{n}" for t, n in types.items()) or "none"
            raise bad_request(
                "gpu_unavailable", f"The Slurm partitions have no '{gpu_type}' GPUs; they have: {have}.", "gpu.type"
            )

    def _nowhere(self, gpu_type: str, count: int, provider: str | None) -> str:
        """What exists, for a job that cannot run anywhere: local, Slurm and the providers' quotes."""
        where = f"No {count} x '{gpu_type}' " + (f"at {provider}" if provider else "anywhere this box can reach")
        parts = [f"this box has: {self.inventory.describe()}"]
        if self.cluster is not None:
            parts.append("Slurm has: " + (", ".join(f"{t} x{n}" for t, n in self.cluster.types().items()) or "none"))
        if not self._configured():
            parts.append("no cloud provider is configured (PUT /v1/settings/providers/{runpod|lambda|prime_intellect})")
        else:
            quotes = [q for q in self.providers.quotes() if provider in (None, q.provider)]  # type: ignore[union-attr]
            in_stock = sorted(
                {f"{q.gpu_type} x{q.gpu_count} at {q.provider} ${q.price_per_hr:.2f}/h" for q in quotes if q.available}
            )
            parts.append("in stock at the providers: " + (", ".join(in_stock[:20]) or "nothing"))
            errors = self.providers.last_errors()  # type: ignore[union-attr]
            parts += [f"{name} did not answer: {why}" for name, why in errors.items() if provider in (None, name)]
        return f"{where}; " + "; ".join(parts) + "."

    # -- when placing ------------------------------------------------------------------------

    def route(self, job: dict, waited_s: float, local_busy: bool) -> Route | tuple[str, str]:
        """Where a queued job goes now, or (error code, message) if it can no longer run anywhere
        it may. `local_busy`: its type's local devices are all taken (or an earlier job of the
        type waits for them)."""
        kind, count = job["gpu_requested"]["type"], job["gpu_requested"]["count"]
        named = job["provider_requested"]
        target = self.target(kind, named)
        if target == LOCAL:
            device = self.inventory.types.get(kind)
            if device is None or count > device.count:
                have = self.inventory.describe()
                return "gpu_unavailable", f"This box no longer has {count} '{kind}' device(s); it has: {have}."
            burst = self.burst_after_s
            if named is None and local_busy and burst and waited_s >= burst and self._configured():
                offers = self._offers(kind, count, None)
                if offers:
                    return Route("cloud", offers, burst=True)
            return Route(LOCAL)
        if target == SLURM:
            if self.cluster is None or kind not in self.cluster.types():
                return "gpu_unavailable", f"The Slurm cluster no longer has '{kind}' GPUs."
            return Route(SLURM)
        if named in CLOUDS and named not in self._configured():
            return "provider_not_configured", f"Provider '{named}' was removed from this box's settings."
        if not self._configured():  # its local or Slurm devices went away, and no cloud can stand in
            return "gpu_unavailable", self._nowhere(kind, count, named)
        offers = self._offers(kind, count, named)
        return Route("cloud", offers) if offers else Route(None)

    # -- helpers -----------------------------------------------------------------------------

    def _on_slurm(self, gpu_type: str) -> bool:
        return self.cluster is not None and gpu_type in self.cluster.types()

    def _configured(self) -> list[str]:
        return self.providers.configured() if self.providers is not None else []

    def _offers(self, gpu_type: str, count: int, only: str | None) -> list[Any]:
        if self.providers is None:
            return []
        return self.providers.offers(gpu_type, count, only=(only,) if only else None)
