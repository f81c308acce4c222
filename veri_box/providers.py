"""Cloud GPU providers: what they quote, and one adapter per provider to launch and follow an instance.

Each provider is a small module speaking its public REST API over httpx (no SDKs): runpod.py
(REST API v2), lambda_cloud.py (Cloud API v1), prime_intellect.py (API v1). This module holds
what they share: the structs the rest of the box sees (Offer, Launched, InstanceState), the
error kinds every failure is mapped to, the HTTP plumbing (timeouts, 429 Retry-After, error
mapping, the API key kept out of every message), the GPU type names, and `Providers`, which
reads the configured keys from the `integrations` table and answers "who has this GPU, and
for how much" across all of them at once.

API keys live only in the database row: they go in an Authorization header and nowhere else.
Every message a ProviderError carries is scrubbed of the key, and nothing here logs a header.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
import msgspec

from .inventory import type_name

if TYPE_CHECKING:
    from .settings import Settings
    from .store import Store

log = logging.getLogger(__name__)

NAMES = ("runpod", "lambda", "prime_intellect")
TITLES = {"runpod": "RunPod", "lambda": "Lambda", "prime_intellect": "Prime Intellect"}

Kind = Literal["not_configured", "auth_failed", "no_capacity", "rate_limited", "transient"]
KINDS: tuple[Kind, ...] = ("not_configured", "auth_failed", "no_capacity", "rate_limited", "transient")

# Quotes feed placement and the dashboard, so a slow provider must not hold either up.
QUOTE_TIMEOUT_S = 8.0
# Launch and terminate may take a provider longer; still bounded so a tick never hangs.
CALL_TIMEOUT_S = 30.0
# A 429 asking for a longer pause than this is handed to the caller (kind rate_limited, with
# retry_after_s) rather than slept through: the runner's tick must not stall for minutes.
MAX_RETRY_WAIT_S = 15.0
# Quotes wait less: placement and the dashboard would rather skip a provider than stall.
QUOTE_RETRY_WAIT_S = 2.0
MAX_RETRIES = 3
OFFERS_TTL_S = 30.0


class Offer(msgspec.Struct, kw_only=True):
    provider: str
    gpu_type: str  # the API's name, such as "H100-80GB"
    gpu_count: int
    price_per_hr: float  # USD per hour for all gpu_count GPUs
    region: str
    available: bool
    provider_gpu: str  # the provider's own type id ("NVIDIA H100 80GB HBM3", "gpu_1x_h100_pcie")
    extra: dict = {}  # what launch needs besides (Prime's cloudId and socket, RunPod's cloud tier)


class Launched(msgspec.Struct, kw_only=True):
    instance_id: str
    region: str
    price_per_hr: float


class InstanceState(msgspec.Struct, kw_only=True):
    state: Literal["pending", "running", "terminated", "error"]
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    message: str | None = None


class ProviderError(Exception):
    """A provider call that failed, sorted into one of KINDS so callers can decide: no_capacity
    -> try the next offer; rate_limited -> wait retry_after_s; transient -> try again later;
    auth_failed / not_configured -> tell the user to fix the key."""

    def __init__(self, provider: str, kind: Kind, message: str, retry_after_s: float | None = None):
        super().__init__(f"{TITLES.get(provider, provider)}: {message}")
        self.provider = provider
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


class Adapter(Protocol):
    name: str

    def quote(self, gpu_type: str | None, count: int | None) -> list[Offer]:
        """Offers for one API type (None: every type) at one GPU count (None: every count the
        provider lists), in stock or not."""
        ...

    def launch(self, offer: Offer, name: str, public_key: str, image: str | None) -> Launched:
        """Rent the offer's machine named `name`, letting `public_key` log in over SSH."""
        ...

    def status(self, instance_id: str) -> InstanceState:
        """Where the instance is, with its SSH endpoint once it has one. An instance the provider
        no longer knows is "terminated"."""
        ...

    def terminate(self, instance_id: str) -> None:
        """Stop paying for it; an instance already gone is not an error."""
        ...

    def list_instances(self, prefix: str) -> list[tuple[str, str, str]]:
        """(instance_id, name, state) of the account's instances whose name starts with prefix."""
        ...

    def close(self) -> None:
        """Close its HTTP connections."""
        ...


# -- GPU type names -----------------------------------------------------------------------------

_API_TYPE = re.compile(r"^(?P<family>[A-Za-z0-9]+)-(?P<gib>\d+)GB$")


def api_type(product: str, memory_gb: float) -> str:
    """A provider's GPU product name and memory -> the API's type name, by the same rule as the
    box's own nvidia-smi detection ("NVIDIA H100 80GB HBM3", 80 -> "H100-80GB"), so a cloud
    H100 and a local one are the same type."""
    return type_name(product, int(memory_gb * 1024))


def key_name(public_key: str) -> str:
    """The name the box registers its public key under at a provider: veri-box-<sha256 prefix>,
    the same on every provider and stable across restarts."""
    parts = public_key.split()
    return "veri-box-" + hashlib.sha256((parts[1] if len(parts) > 1 else public_key).encode()).hexdigest()[:12]


def split_type(gpu_type: str) -> tuple[str, int] | None:
    """ "H100-80GB" -> ("H100", 80); None for a name not in the API's FAMILY-NNGB shape."""
    match = _API_TYPE.match(gpu_type)
    return (match["family"], int(match["gib"])) if match else None


# -- HTTP plumbing ------------------------------------------------------------------------------

Classifier = Callable[[httpx.Response, Any], "tuple[Kind, str] | None"]


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta-seconds form every provider here sends; an HTTP date is
    read as "soon", 1 s)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


class Http:
    """One provider's API: base URL, auth header, timeouts, 429 handling and error mapping.

    `classify(response, body)` is the provider's reading of its own error bodies (a capacity code,
    a problem+json detail); it returns (kind, message) or None to fall back to the status code:
    401/403 auth_failed, 429 rate_limited, 5xx transient, other 4xx transient with the body's
    message (a provider's unexpected refusal is worth another try later, not a crash)."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        api_key: str,
        headers: dict[str, str],
        classify: Classifier,
        timeout_s: float = CALL_TIMEOUT_S,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
    ):
        self.provider = provider
        self.api_key = api_key
        self.classify = classify
        self.max_retry_wait_s = max_retry_wait_s
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def error(self, kind: Kind, message: str, retry_after_s: float | None = None) -> ProviderError:
        return ProviderError(self.provider, kind, self.scrub(message), retry_after_s)

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        timeout_s: float | None = None,
        max_retry_wait_s: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response when its status is in `ok`; else a ProviderError. A 429 is retried after
        its Retry-After (up to MAX_RETRIES times, each wait at most max_retry_wait_s)."""
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        patience = self.max_retry_wait_s if max_retry_wait_s is None else max_retry_wait_s
        for attempt in range(MAX_RETRIES + 1):
            if self.client.is_closed:  # the box is shutting down (Providers.close): no more calls
                raise self.error("transient", f"{method} {path} not sent: the box is shutting down")
            try:
                response = self.client.request(method, path, **kwargs)
            except RuntimeError as err:  # closed between the check and the call
                raise self.error("transient", f"{method} {path} not sent: {err}") from None
            except httpx.TimeoutException:
                raise self.error("transient", f"{method} {path} timed out") from None
            except httpx.HTTPError as err:
                raise self.error("transient", f"{method} {path} failed: {type(err).__name__}: {err}") from None
            if response.status_code in ok:
                return response
            body = _body(response)
            if response.status_code == 429:
                wait = retry_after(response)
                if attempt < MAX_RETRIES and (wait is None or wait <= patience):
                    # Without a Retry-After, back off 1, 2, 4 s.
                    time.sleep(min(2**attempt, patience) if wait is None else wait)
                    continue
                raise self.error("rate_limited", f"rate limited on {method} {path}: {message(body)}", wait)
            raise self._mapped(method, path, response, body)
        raise AssertionError("unreachable")

    def _mapped(self, method: str, path: str, response: httpx.Response, body: Any) -> ProviderError:
        mapped = self.classify(response, body)
        if mapped:
            return self.error(*mapped)
        status = response.status_code
        detail = message(body)
        if status in (401, 403):
            return self.error("auth_failed", f"the API key was refused (HTTP {status}: {detail})")
        return self.error("transient", f"{method} {path} answered HTTP {status}: {detail}")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self.error("transient", f"{method} {path} answered non-JSON: {response.text[:200]!r}") from None

    def close(self) -> None:
        self.client.close()


def message(body: Any) -> str:
    """The human part of an error body, whatever its shape: problem+json `detail`, Lambda's
    {"error": {"message"}}, FastAPI's {"detail"}, or the raw text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("detail", "message", "title", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:500] if body not in (None, "") else "no details"


class Pacer:
    """At most one call per `interval_s`, across every adapter instance in the process that shares
    the pacer (Lambda allows one launch per ~12 s per account, whichever job asks)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.lock = threading.Lock()
        self.last = -1e9

    def wait(self) -> float:
        """Sleep until the next call may go; returns the seconds waited."""
        with self.lock:
            waited = max(0.0, self.last + self.interval_s - time.monotonic())
            if waited:
                time.sleep(waited)
            self.last = time.monotonic()
            return waited


# -- all configured providers --------------------------------------------------------------------


def build(name: str, api_key: str, base_url: str | None, options: dict | None) -> Adapter:
    """The adapter for one integration row. Imports are local: each module imports this one."""
    if name == "runpod":
        from .runpod import RunPod

        return RunPod(api_key, base_url, options or {})
    if name == "lambda":
        from .lambda_cloud import LambdaCloud

        return LambdaCloud(api_key, base_url, options or {})
    if name == "prime_intellect":
        from .prime_intellect import PrimeIntellect

        return PrimeIntellect(api_key, base_url, options or {})
    raise ProviderError(name, "not_configured", f"unknown provider {name!r}; known: {', '.join(NAMES)}")


class Providers:
    """The configured providers (rows named runpod / lambda / prime_intellect in `integrations`:
    api_key, base_url, options {"image": ...}), their adapters, and their offers.

    Thread-safe: the runner's tick, the API and the dashboard call it concurrently. Offers and
    quotes are cached for OFFERS_TTL_S, keyed also on each row's updated_at, so a key changed in
    Settings takes effect on the next call."""

    def __init__(self, store: Store, settings: Settings | None = None):
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._adapters: dict[str, tuple[tuple, Adapter]] = {}
        self._cache: dict[tuple, tuple[float, list[Offer]]] = {}
        self._errors: dict[str, str] = {}

    def _rows(self) -> dict[str, dict]:
        rows = {}
        for name in NAMES:
            row = self.store.get_integration(name)
            if row and row.get("api_key"):
                rows[name] = row
        return rows

    def configured(self) -> list[str]:
        return list(self._rows())

    def image(self, name: str) -> str | None:
        """The image the user set for this provider (options.image), or None for its default."""
        row = self.store.get_integration(name)
        return ((row or {}).get("options") or {}).get("image") if row else None

    def _adapter_for(self, name: str, row: dict) -> Adapter:
        fingerprint = (row["api_key"], row.get("base_url"), row.get("updated_at"))
        with self._lock:
            held = self._adapters.get(name)
            if held and held[0] == fingerprint:
                return held[1]
            adapter = build(name, row["api_key"], row.get("base_url"), row.get("options") or {})
            self._adapters[name] = (fingerprint, adapter)
            if held:
                held[1].close()  # the key or URL changed: its connections are no longer wanted
            return adapter

    def adapter(self, name: str) -> Adapter:
        if name not in NAMES:
            raise ProviderError(name, "not_configured", f"unknown provider {name!r}; known: {', '.join(NAMES)}")
        row = self.store.get_integration(name)
        if not row or not row.get("api_key"):
            raise ProviderError(
                name, "not_configured", f"no API key is set (PUT /v1/settings/providers/{name} with an api_key)"
            )
        return self._adapter_for(name, row)

    def offers(self, gpu_type: str, count: int, only: list[str] | tuple[str, ...] | None = None) -> list[Offer]:
        """In-stock offers for `count` GPUs of `gpu_type` from every configured provider (or those
        in `only`), cheapest first. Providers are asked in parallel; one that fails is logged,
        remembered in last_errors() and skipped."""
        offers = self._gather(("offers", gpu_type, count), only, lambda a: a.quote(gpu_type, count))
        return [o for o in offers if o.available]

    def quotes(self) -> list[Offer]:
        """Every type at every count of every configured provider, in stock or not (the dashboard's
        quote table and GET /v1/gpu/availability), cheapest first."""
        return self._gather(("quotes",), None, lambda a: a.quote(None, None))

    def close(self) -> None:
        """Close every adapter's HTTP client (at the box's shutdown). A call still in flight ends
        as a transient ProviderError, which the remote executor retries rather than failing a job
        (a shutdown is not a job's end); an adapter asked for afterwards is built anew."""
        with self._lock:
            held, self._adapters = list(self._adapters.values()), {}
        for _, adapter in held:
            try:
                adapter.close()
            except Exception:  # noqa: BLE001 - one client failing to close must not keep the others open
                log.exception("closing the %s adapter", getattr(adapter, "name", "?"))

    def last_errors(self) -> dict[str, str]:
        """provider -> why its last query failed (cleared by its next success)."""
        with self._lock:
            return dict(self._errors)

    def _gather(self, what: tuple, only, ask: Callable[[Adapter], list[Offer]]) -> list[Offer]:
        rows = self._rows()
        names = [n for n in rows if only is None or n in only]
        key = (*what, tuple((n, rows[n].get("updated_at")) for n in names))
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < OFFERS_TTL_S:
                return list(hit[1])
        adapters = {n: self._adapter_for(n, rows[n]) for n in names}
        results: list[Offer] = []
        if adapters:
            with ThreadPoolExecutor(max_workers=len(adapters), thread_name_prefix="quote") as pool:
                futures = {n: pool.submit(ask, a) for n, a in adapters.items()}
                for name, future in futures.items():
                    try:
                        found = future.result()
                    except ProviderError as err:
                        log.warning("provider %s skipped (%s): %s", name, err.kind, err)
                        with self._lock:
                            self._errors[name] = str(err)
                        continue
                    except Exception as err:  # a provider answering nonsense must not take the others down
                        log.exception("provider %s skipped: unexpected error", name)
                        with self._lock:
                            self._errors[name] = f"{TITLES[name]}: unexpected error: {type(err).__name__}"
                        continue
                    with self._lock:
                        self._errors.pop(name, None)
                    results.extend(found)
        results.sort(key=lambda o: (o.price_per_hr, not o.available, o.provider, o.gpu_type, o.region))
        with self._lock:
            self._cache[key] = (time.monotonic(), results)
        return list(results)
