"""RunPod over its REST API v2 (https://api.runpod.io, docs.runpod.io/api-reference-v2; v1 at
rest.runpod.io/v1 was retired on 2026-11-15).

What this relies on, from the v2 OpenAPI document (docs repo api-reference-v2/openapi.json):
- Auth: `Authorization: Bearer <key>`; errors are application/problem+json {title, status, detail}.
- GET /v2/catalog/gpus?include=AVAILABILITY&product=POD&count=N&cloud=SECURE -> {"gpus": [{id,
  name, memory (GB), secure, community, price: {secure, community} (USD/h for ONE GPU),
  maxCount: {secure, community}, availability: NONE|LOW|MEDIUM|HIGH, dataCenters: [{id, name,
  availability}]}]}.
- POST /v2/pods {name, image, gpu: {id, count}, cloud, ports: ["22/tcp"], env: {PUBLIC_KEY},
  disk, startSsh} -> 201 Pod. RunPod images start sshd with the keys in PUBLIC_KEY; startSsh
  only injects the account's registered keys "unless the request already sets one", so ours
  wins without touching the account. Failures: 400 = a rule broken OR no capacity ("capacity
  exhaustion currently carries no machine-readable code of its own"), so a 400 on create is
  read as no_capacity (the docs' advice: try the next candidate); 402 insufficient balance;
  403 no access to the pool; 429 with Retry-After.
- GET /v2/pods/{id} -> Pod {id, name, status: PROVISIONING|STARTING|RUNNING|EXITED|ERROR|
  TERMINATED, cost (USD/h), dataCenterId, ssh: {proxy, direct: {host, port, username}},
  runtime: {ports: [{private, public, type, ip}]}}. `ssh.direct` is the pod's own sshd over the
  published 22/tcp (the proxy carries an interactive shell only: no SFTP), null until mapped.
- DELETE /v2/pods/{id} -> 204; afterwards the pod "no longer appears" (404).
- GET /v2/pods -> {"pods": [Pod]}.
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
    api_type,
    message,
)

NAME = "runpod"
BASE_URL = "https://api.runpod.io"
# A RunPod official image (the v2 docs' example): it honours PUBLIC_KEY and starts sshd.
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
STATES = {
    "PROVISIONING": "pending",
    "STARTING": "pending",
    "RUNNING": "running",
    "EXITED": "error",  # the container stopped: whatever ran in it is gone
    "ERROR": "error",
    "TERMINATED": "terminated",
}


def classify(response: httpx.Response, body: Any) -> tuple[Kind, str] | None:
    status = response.status_code
    if status == 400 and response.request.method == "POST" and response.request.url.path.endswith("/v2/pods"):
        return "no_capacity", f"the pod could not be placed: {message(body)}"
    if status == 402:
        return "auth_failed", f"insufficient balance on the account: {message(body)}"
    return None


class RunPod:
    name = NAME

    def __init__(self, api_key: str, base_url: str | None = None, options: dict | None = None):
        self.options = options or {}
        # SECURE or COMMUNITY; the API's default is SECURE.
        self.cloud = str(self.options.get("cloud") or "SECURE").upper()
        self.http = Http(
            NAME, base_url or BASE_URL, api_key, {"Authorization": f"Bearer {api_key}"}, classify, CALL_TIMEOUT_S
        )

    def quote(self, gpu_type: str | None, count: int | None) -> list[Offer]:
        gpus = count or 1
        body = self.http.json(
            "GET",
            "/v2/catalog/gpus",
            params={"include": "AVAILABILITY", "product": "POD", "count": gpus, "cloud": self.cloud},
            timeout_s=QUOTE_TIMEOUT_S,
            max_retry_wait_s=QUOTE_RETRY_WAIT_S,
        )
        tier = self.cloud.lower()
        offers = []
        for gpu in (body or {}).get("gpus", []):
            if not gpu.get(tier) or gpu.get("manufacturer") not in (None, "NVIDIA"):
                continue
            kind = api_type(gpu["id"], gpu.get("memory") or 0)
            per_gpu = (gpu.get("price") or {}).get(tier)
            if (gpu_type and kind != gpu_type) or per_gpu is None:
                continue
            if ((gpu.get("maxCount") or {}).get(tier) or 0) < gpus:
                continue
            centers = [dc for dc in gpu.get("dataCenters") or [] if dc.get("availability") not in (None, "NONE")]
            order = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}
            centers.sort(key=lambda dc: order.get(dc["availability"], 3))
            offers.append(
                Offer(
                    provider=NAME,
                    gpu_type=kind,
                    gpu_count=gpus,
                    price_per_hr=round(per_gpu * gpus, 4),
                    # The scheduler picks the data center at create; this is where stock is best.
                    region=centers[0]["id"] if centers else "",
                    available=gpu.get("availability") not in (None, "NONE"),
                    provider_gpu=gpu["id"],
                    extra={"cloud": self.cloud},
                )
            )
        return offers

    def launch(self, offer: Offer, name: str, public_key: str, image: str | None) -> Launched:
        pod = self.http.json(
            "POST",
            "/v2/pods",
            json={
                "name": name,
                "image": image or self.options.get("image") or DEFAULT_IMAGE,
                "gpu": {"id": offer.provider_gpu, "count": offer.gpu_count},
                "cloud": offer.extra.get("cloud", self.cloud),
                "ports": ["22/tcp"],
                "env": {"PUBLIC_KEY": public_key},
                "startSsh": True,
                "disk": int(self.options.get("disk_gb") or 50),
            },
        )
        return Launched(
            instance_id=pod["id"],
            region=pod.get("dataCenterId") or offer.region,
            price_per_hr=float(pod.get("cost") or offer.price_per_hr),
        )

    def status(self, instance_id: str) -> InstanceState:
        response = self.http.request("GET", f"/v2/pods/{instance_id}", ok=(200, 404))
        if response.status_code == 404:
            return InstanceState(state="terminated", message="RunPod no longer knows this pod")
        pod = response.json()
        state = STATES.get(pod.get("status"), "pending")
        direct = (pod.get("ssh") or {}).get("direct")
        if direct is None:
            # Older pods report only the live port map; 22/tcp published is the same sshd.
            ports = (pod.get("runtime") or {}).get("ports") or []
            port = next((p for p in ports if p.get("private") == 22 and p.get("public")), None)
            if port and port.get("ip"):
                direct = {"host": port["ip"], "port": port["public"], "username": "root"}
        if state == "running" and direct is None:
            # RUNNING but 22/tcp not mapped yet: not reachable, so not ready.
            return InstanceState(state="pending", message="running, waiting for the SSH port mapping")
        if state == "running":
            return InstanceState(
                state="running", ssh_host=direct["host"], ssh_port=int(direct["port"]), ssh_user=direct["username"]
            )
        return InstanceState(state=state, message=f"pod status {pod.get('status')}")

    def terminate(self, instance_id: str) -> None:
        self.http.request("DELETE", f"/v2/pods/{instance_id}", ok=(200, 204, 404))

    def list_instances(self, prefix: str) -> list[tuple[str, str, str]]:
        body = self.http.json("GET", "/v2/pods")
        return [
            (pod["id"], pod.get("name") or "", STATES.get(pod.get("status"), "pending"))
            for pod in (body or {}).get("pods", [])
            if (pod.get("name") or "").startswith(prefix)
        ]

    def close(self) -> None:
        self.http.close()
