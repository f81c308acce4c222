"""Prime Intellect over its API v1 (https://api.primeintellect.ai, docs.primeintellect.ai/api-reference),
read alongside the official `prime` CLI's client (packages/prime/src/prime_cli/api/*.py).

What this relies on:
- Auth: `Authorization: Bearer <key>`; errors are FastAPI-shaped {"detail": "..."} (401 key
  refused, 402 payment required, 404, 422 validation).
- GET /api/v1/availability/gpus?gpu_type=H100_80GB&gpu_count=N&page=P&page_size=100 ->
  {"items": [{cloudId, gpuType, socket, provider, dataCenter, country, gpuCount, gpuMemory,
  stockStatus, security, prices: {onDemand, communityPrice, currency}, images}], "totalCount"}.
  Prime's type names are FAMILY_NNGB (H100_80GB, A100_80GB, H200_141GB appear in the docs and
  CLI; RTX4090_24GB, RTXA6000_48GB, L4_24GB are read by the same pattern).
- GET/POST /api/v1/ssh_keys/: {"data": [{id, name, publicKey, isPrimary}]} / {name, publicKey}.
  A pod is reached with the account's SSH keys, so the box's key is uploaded when absent.
- POST /api/v1/pods/ {"pod": {name, cloudId, gpuType, socket, gpuCount, image, dataCenterId,
  security}, "provider": {"type": <offer's provider>}} -> Pod {id, status, priceHr, ...}.
- GET /api/v1/pods/{id} -> Pod {id, name, status: PROVISIONING|PENDING|ACTIVE|ERROR|TERMINATED|
  STOPPED, installationStatus (FINISHED when ready), installationFailure, sshConnection
  ("root@1.2.3.4 -p 22", or a one-element list), ip, priceHr}.
- GET /api/v1/pods/?offset=&limit= -> {total_count, offset, limit, data: [Pod]};
  DELETE /api/v1/pods/{id}.
Unclear in the public docs, and how it is read here: whether prices.onDemand is per GPU or for the
whole offer (read as the whole offer, as the CLI's Price/Hr column shows it; the pod's own
priceHr is taken at launch); how a capacity refusal on create is worded (a 400/409 is read as
no_capacity); and whether non-primary uploaded keys reach a pod (the key is uploaded; the
stand-in installs every key on the account).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from .providers import (
    CALL_TIMEOUT_S,
    QUOTE_RETRY_WAIT_S,
    QUOTE_TIMEOUT_S,
    Http,
    InstanceState,
    Kind,
    Launched,
    Offer,
    api_type,
    key_name,
    message,
    split_type,
)

NAME = "prime_intellect"
BASE_URL = "https://api.primeintellect.ai"
DEFAULT_IMAGE = "ubuntu_22_cuda_12"
PAGE = 100
STATES = {
    "PROVISIONING": "pending",
    "PENDING": "pending",
    "ACTIVE": "running",
    "ERROR": "error",
    "TERMINATED": "terminated",
    "STOPPED": "terminated",
}
UNAVAILABLE = {"", "Unavailable", "None", None}
_PRIME_TYPE = re.compile(r"^(?P<family>.+)_(?P<gib>\d+)GB$")


def classify(response: httpx.Response, body: Any) -> tuple[Kind, str] | None:
    status = response.status_code
    creating = response.request.method == "POST" and response.request.url.path.rstrip("/").endswith("/pods")
    if status in (400, 409) and creating:
        return "no_capacity", f"the pod could not be created: {message(body)}"
    if status == 402:
        return "auth_failed", f"payment required on the account: {message(body)}"
    return None


def to_api(prime_type: str, memory_gb: float | None) -> str | None:
    """ "H100_80GB" -> "H100-80GB", "RTXA6000_48GB" -> "A6000-48GB"."""
    match = _PRIME_TYPE.match(prime_type)
    if not match:
        return None
    family = match["family"].replace("RTXA", "RTX A")  # Prime writes the RTX A-series without a space
    return api_type(family, memory_gb or int(match["gib"]))


def to_prime(gpu_type: str) -> str | None:
    """ "H100-80GB" -> "H100_80GB", "A6000-48GB" -> "RTXA6000_48GB"."""
    parts = split_type(gpu_type)
    if parts is None:
        return None
    family, gib = parts
    if re.fullmatch(r"A[456]000|A[245]500", family):
        family = "RTX" + family
    return f"{family}_{gib}GB"


def _ssh(connection: Any) -> tuple[str, str, int] | None:
    """ "root@1.2.3.4 -p 22" (or [that]) -> ("root", "1.2.3.4", 22)."""
    if isinstance(connection, list):
        connection = next((c for c in connection if c), None)
    if not connection:
        return None
    target, _, port = str(connection).partition(" -p ")
    user, _, host = target.strip().rpartition("@")
    return (user or "root", host, int(port.strip() or 22)) if host else None


class PrimeIntellect:
    name = NAME

    def __init__(self, api_key: str, base_url: str | None = None, options: dict | None = None):
        self.options = options or {}
        self.http = Http(
            NAME, base_url or BASE_URL, api_key, {"Authorization": f"Bearer {api_key}"}, classify, CALL_TIMEOUT_S
        )

    def _pages(self, path: str, params: dict, items: str, total: str, quoting: bool = False) -> list:
        """Every page of a list: the availability routes page by page/page_size into items and
        totalCount, the others by offset/limit into data and total_count."""
        waits = {"timeout_s": QUOTE_TIMEOUT_S, "max_retry_wait_s": QUOTE_RETRY_WAIT_S} if quoting else {}
        found: list = []
        page = 1
        while True:
            if items == "items":
                query = {**params, "page": page, "page_size": PAGE}
            else:
                query = {**params, "offset": (page - 1) * PAGE, "limit": PAGE}
            body = self.http.json("GET", path, params=query, **waits) or {}
            batch = body.get(items) or []
            found.extend(batch)
            if not batch or len(found) >= int(body.get(total) or 0):
                return found
            page += 1

    def quote(self, gpu_type: str | None, count: int | None) -> list[Offer]:
        params: dict = {}
        if gpu_type:
            prime = to_prime(gpu_type)
            if prime is None:
                return []
            params["gpu_type"] = prime
        if count:
            params["gpu_count"] = count
        offers = []
        for item in self._pages("/api/v1/availability/gpus", params, "items", "totalCount", quoting=True):
            kind = to_api(item.get("gpuType") or "", item.get("gpuMemory"))
            prices = item.get("prices") or {}
            price = prices.get("onDemand") if prices.get("onDemand") is not None else prices.get("communityPrice")
            gpus = int(item.get("gpuCount") or 0)
            if kind is None or price is None or (gpu_type and kind != gpu_type) or (count and gpus != count):
                continue
            offers.append(
                Offer(
                    provider=NAME,
                    gpu_type=kind,
                    gpu_count=gpus,
                    price_per_hr=float(price),
                    region=item.get("dataCenter") or item.get("country") or "",
                    available=item.get("stockStatus") not in UNAVAILABLE,
                    provider_gpu=item["gpuType"],
                    extra={
                        "cloudId": item.get("cloudId"),
                        "socket": item.get("socket"),
                        "provider": item.get("provider"),
                        "dataCenterId": item.get("dataCenter"),
                        "security": item.get("security"),
                    },
                )
            )
        return offers

    def _upload_key(self, public_key: str) -> None:
        wanted = public_key.split()[:2]
        for key in self._pages("/api/v1/ssh_keys/", {}, "data", "total_count"):
            if (key.get("publicKey") or "").split()[:2] == wanted:
                return
        self.http.json("POST", "/api/v1/ssh_keys/", json={"name": key_name(public_key), "publicKey": public_key})

    def launch(self, offer: Offer, name: str, public_key: str, image: str | None) -> Launched:
        self._upload_key(public_key)
        extra = offer.extra
        pod = {
            "name": name,
            "cloudId": extra.get("cloudId"),
            "gpuType": offer.provider_gpu,
            "socket": extra.get("socket"),
            "gpuCount": offer.gpu_count,
            "image": image or self.options.get("image") or DEFAULT_IMAGE,
            "dataCenterId": extra.get("dataCenterId"),
            "security": extra.get("security"),
        }
        created = self.http.json(
            "POST",
            "/api/v1/pods/",
            json={"pod": pod, "provider": {"type": extra["provider"]} if extra.get("provider") else {}},
        )
        return Launched(
            instance_id=created["id"],
            region=offer.region,
            price_per_hr=float(created.get("priceHr") or offer.price_per_hr),
        )

    def status(self, instance_id: str) -> InstanceState:
        response = self.http.request("GET", f"/api/v1/pods/{instance_id}", ok=(200, 404))
        if response.status_code == 404:
            return InstanceState(state="terminated", message="Prime Intellect no longer knows this pod")
        pod = response.json()
        state = STATES.get(pod.get("status"), "pending")
        if state == "error":
            return InstanceState(state="error", message=pod.get("installationFailure") or "pod status ERROR")
        ssh = _ssh(pod.get("sshConnection"))
        installed = pod.get("installationStatus") in (None, "FINISHED")
        if state == "running" and ssh and installed:
            user, host, port = ssh
            return InstanceState(state="running", ssh_host=host, ssh_port=port, ssh_user=user)
        if state == "running":
            return InstanceState(state="pending", message="active, still installing or without an SSH connection")
        return InstanceState(state=state, message=f"pod status {pod.get('status')}")

    def terminate(self, instance_id: str) -> None:
        self.http.request("DELETE", f"/api/v1/pods/{instance_id}", ok=(200, 204, 404))

    def list_instances(self, prefix: str) -> list[tuple[str, str, str]]:
        return [
            (pod["id"], pod.get("name") or "", STATES.get(pod.get("status"), "pending"))
            for pod in self._pages("/api/v1/pods/", {}, "data", "total_count")
            if (pod.get("name") or "").startswith(prefix)
        ]

    def close(self) -> None:
        self.http.close()
