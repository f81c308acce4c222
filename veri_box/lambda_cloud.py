"""Lambda over its Cloud API v1 (https://cloud.lambda.ai/api/v1, docs.lambda.ai/api/cloud;
cloud.lambdalabs.com is the older host of the same API).

What this relies on (the public API reference and its OpenAPI document, v1.x):
- Auth: `Authorization: Bearer <key>`. Success bodies are {"data": ...}; errors are
  {"error": {code, message, suggestion}}: 401 global/invalid-api-key, 403 global/account-inactive,
  404 global/object-does-not-exist, 400 global/invalid-parameters, and on launch
  instance-operations/launch/insufficient-capacity and global/quota-exceeded.
- GET /api/v1/instance-types -> {"data": {NAME: {"instance_type": {name, description,
  gpu_description, price_cents_per_hour (the whole instance), specs: {vcpus, memory_gib,
  storage_gib, gpus}}, "regions_with_capacity_available": [{name, description}]}}}.
- GET/POST /api/v1/ssh-keys: {"data": [{id, name, public_key}]} / {name, public_key} -> {"data":
  {id, name, public_key}}. A launch names exactly one registered key, so the box's key is
  registered (as veri-box-<fingerprint>) the first time it is needed.
- POST /api/v1/instance-operations/launch {region_name, instance_type_name, ssh_key_names: [one],
  name, quantity: 1} -> {"data": {"instance_ids": [id]}}. Documented rate limit: about one
  launch per 12 s (1 request/s for the rest), so launches are paced process-wide.
- GET /api/v1/instances/{id} -> {"data": {id, name, ip, status: booting|active|unhealthy|
  terminating|terminated|preempted, region, instance_type, ...}}; GET /api/v1/instances -> {"data":
  [...]}; POST /api/v1/instance-operations/terminate {"instance_ids": [id]} -> {"data":
  {"terminated_instances": [...]}}.
- SSH is the instance's own sshd on ip:22 as user `ubuntu` (the API reports no port or user;
  options {"ssh_user": ...} overrides the user).
Unclear in the docs: the body of a 429 (we key on the status and Retry-After only), and whether
terminating an unknown instance answers 404 or 400 global/object-does-not-exist (both read as
"already gone").
"""

from __future__ import annotations

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
    Pacer,
    api_type,
    key_name,
    message,
)

NAME = "lambda"
BASE_URL = "https://cloud.lambda.ai"
LAUNCH_INTERVAL_S = 12.0
SSH_USER = "ubuntu"
STATES = {
    "booting": "pending",
    "active": "running",
    "unhealthy": "error",
    "terminating": "terminated",
    "terminated": "terminated",
    "preempted": "terminated",
}
GONE = "global/object-does-not-exist"

# One pacer per API host: the limit is the account's, whichever job or adapter launches.
_pacers: dict[str, Pacer] = {}


def error_code(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def classify(response: httpx.Response, body: Any) -> tuple[Kind, str] | None:
    code = error_code(body)
    if code in ("instance-operations/launch/insufficient-capacity", "global/quota-exceeded"):
        return "no_capacity", message(body)
    if code in ("global/invalid-api-key", "global/account-inactive"):
        return "auth_failed", f"the API key was refused: {message(body)}"
    return None


def _gpu_type(spec: dict) -> str | None:
    """{"gpu_description": "A100 (80 GB SXM4)"} -> "A100-80GB"; None for CPU-only types."""
    described = spec.get("gpu_description") or spec.get("description") or ""
    product, _, rest = described.partition("(")
    product = product.split("x ", 1)[-1] if product[:1].isdigit() else product  # "8x A100 " -> "A100 "
    memory = next((int(w) for w in rest.replace("GB", " GB").split() if w.isdigit()), None)
    return api_type(product.strip(), memory) if product.strip() and memory else None


class LambdaCloud:
    name = NAME

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        options: dict | None = None,
        launch_interval_s: float = LAUNCH_INTERVAL_S,
    ):
        self.options = options or {}
        self.base_url = (base_url or BASE_URL).rstrip("/")
        self.http = Http(NAME, self.base_url, api_key, {"Authorization": f"Bearer {api_key}"}, classify, CALL_TIMEOUT_S)
        self.pacer = _pacers.setdefault(self.base_url, Pacer(launch_interval_s))
        self.ssh_user = str(self.options.get("ssh_user") or SSH_USER)

    def quote(self, gpu_type: str | None, count: int | None) -> list[Offer]:
        body = self.http.json(
            "GET", "/api/v1/instance-types", timeout_s=QUOTE_TIMEOUT_S, max_retry_wait_s=QUOTE_RETRY_WAIT_S
        )
        offers = []
        for name, entry in ((body or {}).get("data") or {}).items():
            spec = entry.get("instance_type") or {}
            gpus = int((spec.get("specs") or {}).get("gpus") or 0)
            kind = _gpu_type(spec)
            if not gpus or kind is None or (gpu_type and kind != gpu_type) or (count and gpus != count):
                continue
            price = (spec.get("price_cents_per_hour") or 0) / 100
            regions = [r["name"] for r in entry.get("regions_with_capacity_available") or []]
            for region in regions or [""]:
                offers.append(
                    Offer(
                        provider=NAME,
                        gpu_type=kind,
                        gpu_count=gpus,
                        price_per_hr=price,
                        region=region,
                        available=bool(region),
                        provider_gpu=spec.get("name") or name,
                    )
                )
        return offers

    def _ssh_key(self, public_key: str) -> str:
        """The name under which the account holds this public key, registering it if absent
        (compared by key type and blob: a comment may differ)."""
        wanted = public_key.split()[:2]
        keys = self.http.json("GET", "/api/v1/ssh-keys") or {}
        for key in keys.get("data") or []:
            if (key.get("public_key") or "").split()[:2] == wanted:
                return key["name"]
        name = key_name(public_key)
        created = self.http.json("POST", "/api/v1/ssh-keys", json={"name": name, "public_key": public_key})
        return ((created or {}).get("data") or {}).get("name") or name

    def launch(self, offer: Offer, name: str, public_key: str, image: str | None) -> Launched:
        key = self._ssh_key(public_key)
        body: dict = {
            "region_name": offer.region,
            "instance_type_name": offer.provider_gpu,
            "ssh_key_names": [key],
            "name": name,
            "quantity": 1,
        }
        image = image or self.options.get("image")
        if image:
            body["image"] = {"family": image}
        self.pacer.wait()
        data = (self.http.json("POST", "/api/v1/instance-operations/launch", json=body) or {}).get("data") or {}
        ids = data.get("instance_ids") or []
        if not ids:
            raise self.http.error("transient", "the launch was accepted but returned no instance id")
        return Launched(instance_id=ids[0], region=offer.region, price_per_hr=offer.price_per_hr)

    def status(self, instance_id: str) -> InstanceState:
        response = self.http.request("GET", f"/api/v1/instances/{instance_id}", ok=(200, 404))
        if response.status_code == 404:
            return InstanceState(state="terminated", message="Lambda no longer knows this instance")
        instance = response.json().get("data") or {}
        status = instance.get("status")
        state = STATES.get(status, "pending")
        if state == "running" and not instance.get("ip"):
            return InstanceState(state="pending", message="active, waiting for an IP address")
        if state == "running":
            return InstanceState(state="running", ssh_host=instance["ip"], ssh_port=22, ssh_user=self.ssh_user)
        return InstanceState(state=state, message=f"instance status {status}")

    def terminate(self, instance_id: str) -> None:
        response = self.http.request(
            "POST", "/api/v1/instance-operations/terminate", ok=(200, 400, 404), json={"instance_ids": [instance_id]}
        )
        if response.status_code == 400:
            body = response.json() if response.content else {}
            if error_code(body) != GONE:
                raise self.http.error("transient", f"terminate refused: {message(body)}")

    def list_instances(self, prefix: str) -> list[tuple[str, str, str]]:
        body = self.http.json("GET", "/api/v1/instances") or {}
        return [
            (i["id"], i.get("name") or "", STATES.get(i.get("status"), "pending"))
            for i in body.get("data") or []
            if (i.get("name") or "").startswith(prefix)
        ]

    def close(self) -> None:
        self.http.close()
