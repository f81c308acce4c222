"""Stand-ins for the three cloud providers' APIs on 127.0.0.1, for tests.

Each is a real HTTP server (http.server in a thread, a free port) answering the provider's own
paths with its own bodies, status values and error bodies, written from its public docs:

- RunPodStandIn: RunPod REST API v2 (docs.runpod.io/api-reference-v2, the docs repo's
  api-reference-v2/openapi.json): GET /v2/catalog/gpus, POST/GET /v2/pods, GET/DELETE
  /v2/pods/{id}; problem+json errors {title, status, detail}; a 400 for no capacity (the docs:
  capacity exhaustion has no code of its own); 429 with Retry-After.
- LambdaStandIn: Lambda Cloud API v1 (docs.lambda.ai/api/cloud, its OpenAPI document):
  GET /api/v1/instance-types, GET/POST /api/v1/ssh-keys, POST
  /api/v1/instance-operations/launch and /terminate, GET /api/v1/instances[/{id}];
  {"data": ...} bodies, {"error": {code, message, suggestion}} errors; at most one launch per
  `launch_interval_s` (the documented ~12 s) or a 429. Instances are ip:22, as on Lambda: each
  gets its own loopback address (127.0.x.y) with sshd on port 22.
- PrimeStandIn: Prime Intellect API v1 (docs.primeintellect.ai/api-reference and the official
  `prime` CLI's client): GET /api/v1/availability/gpus (paginated), GET/POST /api/v1/ssh_keys/,
  POST/GET /api/v1/pods/, GET/DELETE /api/v1/pods/{id}; FastAPI {"detail": ...} errors;
  sshConnection "user@host -p port".

Every launched "instance" is a real OpenSSH server (tests/sshd.py) that authorizes the key the
launch carried, as the provider does: RunPod the PUBLIC_KEY env of the create request; Lambda
the registered key named in ssh_key_names; Prime the keys uploaded to the account. An
instance's sshd accepts one login name, `ssh_user` (default the current user, root here: only
an existing user can log in). RunPod and Prime report it in their SSH endpoint; Lambda's API
reports none (its images log in as `ubuntu`), so a box talking to the Lambda stand-in is set up
with {"ssh_user": <that user>} and any other name is refused. `image_bin` makes every instance
boot an "image": a home of its own and that folder first on PATH (sshd's SetEnv). A pod
reports "provisioning" for `boot_polls` status reads (default 1), then running with its SSH
endpoint.

Driving them from a test:
    api = RunPodStandIn.start(tmp_path)              # .url, .api_key; .stop() at the end
    api.catalogue = [RunPodGpu("NVIDIA H100 80GB HBM3", 80, price=2.99)]   # what it sells
    api.capacity_error = True                        # every launch refused for capacity
    api.rate_limit(count=1, retry_after_s=1)         # the next request(s) answer 429
    api.fail(count=1, status=500)                    # the next request(s) answer 500
    api.delay_s = 2                                  # every answer comes 2 s late
    api.image_bin = "/path/to/venv/bin"              # instances boot an image with that python3
    api.ssh_user = "root"                            # the one login name instances accept
    api.kill(instance_id)                            # the machine dies: sshd and its processes
    api.instances[instance_id].sshd                  # the instance's Sshd (port, host key...)
    api.requests                                     # (monotonic time, method, path) seen
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from sshd import Sshd

IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Instance:
    id: str
    name: str
    sshd: Sshd | None
    status: str  # in the provider's own words
    price_per_hr: float
    gpu: str
    gpu_count: int
    region: str
    polls: int = 0
    extra: dict = field(default_factory=dict)


class Reply(Exception):
    def __init__(self, status: int, body, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


class StandIn:
    """What every stand-in shares: the server thread, auth, injected failures, instances."""

    killed_status = "ERROR"
    boot_status = "PROVISIONING"

    def __init__(self, directory: Path, api_key: str | None = None, boot_polls: int = 1):
        self.directory = Path(directory)
        self.api_key = api_key or "sk-test-" + secrets.token_hex(16)
        self.boot_polls = boot_polls
        self.capacity_error = False
        # The image every instance boots: None, the machine's own environment; a folder (a venv's
        # bin), a home per instance with that folder first on PATH, as a provider's PyTorch image
        # puts its python3 there.
        self.image_bin: str | None = None
        self.own_home = False  # True: a home per instance (HOME), also without an image_bin
        self.ssh_user: str | None = None  # the login name instances accept (None: the test user)
        self.delay_s = 0.0  # test hook: every answer comes this much later (a slow provider)
        self.instances: dict[str, Instance] = {}
        self.requests: list[tuple[float, str, str]] = []
        self.lock = threading.RLock()
        self._rate_limited: list[float] = []
        self._failures: list[int] = []
        self._ids = itertools.count(1)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read .requests instead
                pass

            def _serve(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = stand_in._dispatch(method, self.path, dict(self.headers), raw)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                ctype = headers.pop("Content-Type", "application/json")
                if data:
                    self.send_header("Content-Type", ctype)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def do_PUT(self):
                self._serve("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=type(self).__name__, daemon=True)

    @classmethod
    def start(cls, directory: Path, **kwargs):
        stand_in = cls(directory, **kwargs)
        stand_in.thread.start()
        return stand_in

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for instance in self.instances.values():
                if instance.sshd:
                    instance.sshd.stop()

    # -- test hooks ---------------------------------------------------------------------------

    def rate_limit(self, count: int = 1, retry_after_s: float = 1) -> None:
        """The next `count` requests answer 429 with Retry-After: retry_after_s."""
        with self.lock:
            self._rate_limited.extend([retry_after_s] * count)

    def fail(self, count: int = 1, status: int = 500) -> None:
        """The next `count` requests answer `status` with the provider's error body."""
        with self.lock:
            self._failures.extend([status] * count)

    def kill(self, instance_id: str, status: str | None = None) -> None:
        """The machine dies: its sshd and every process started through it are SIGKILLed, and the
        API reports it in `status` (the provider's word for a dead machine by default)."""
        with self.lock:
            instance = self.instances[instance_id]
            instance.status = status or self.killed_status
        if instance.sshd:
            instance.sshd.kill()

    def running(self) -> list[Instance]:
        with self.lock:
            return [i for i in self.instances.values() if i.sshd and i.sshd.alive]

    # -- plumbing -----------------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, headers: dict, raw: bytes):
        url = urlparse(path)
        with self.lock:
            self.requests.append((time.monotonic(), method, url.path))
        time.sleep(self.delay_s)
        try:
            self.check_auth({k.lower(): v for k, v in headers.items()})
            with self.lock:
                wait = self._rate_limited.pop(0) if self._rate_limited else None
                failure = self._failures.pop(0) if self._failures else None
            if wait is not None:
                raise Reply(429, self.error_body(429, "rate limit exceeded"), {"Retry-After": f"{wait:g}"})
            if failure is not None:
                raise Reply(failure, self.error_body(failure, "internal error"))
            body = json.loads(raw) if raw else None
            query = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(url.query).items()}
            return 200, *self.route(method, url.path, query, body)
        except Reply as reply:
            return reply.status, reply.body, dict(reply.headers)

    def route(self, method, path, query, body):
        """(body, headers) for a 200, or raise Reply."""
        for pattern, verb, handler in self.routes():
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                return handler(query, body, *match.groups()), {}
        raise Reply(404, self.error_body(404, f"no route {method} {path}"))

    def bearer(self, headers: dict) -> str | None:
        value = headers.get("authorization") or ""
        return value[7:] if value.startswith("Bearer ") else None

    def new_id(self, prefix: str = "") -> str:
        return f"{prefix}{next(self._ids):04d}{secrets.token_hex(4)}"

    def boot(self, name: str, public_keys: list[str], host: str = "127.0.0.1", port: int | None = None) -> Sshd:
        """The instance's machine: an sshd for `ssh_user` (default the user running the tests),
        booting the image of `image_bin` if set (a home of its own, that folder first on PATH)."""
        directory = self.directory / f"instance-{name}-{secrets.token_hex(3)}"
        env = None
        if self.image_bin or self.own_home:
            home = directory / "home"
            home.mkdir(parents=True)
            env = {"HOME": str(home), "PATH": f"{self.image_bin}:{IMAGE_PATH}" if self.image_bin else IMAGE_PATH}
        server = Sshd.start(directory, host=host, port=port, env=env, user=self.ssh_user)
        for key in public_keys:
            if key.strip():
                server.authorize(key)
        return server

    def poll(self, instance: Instance) -> bool:
        """Counts a status read; True once the instance has booted (after boot_polls reads)."""
        instance.polls += 1
        return instance.polls > self.boot_polls

    def take(self, instance_id: str) -> Instance | None:
        """Remove an instance and stop its machine (terminate)."""
        with self.lock:
            instance = self.instances.pop(instance_id, None)
        if instance and instance.sshd:
            instance.sshd.stop()
        return instance


# -- RunPod REST API v2 ---------------------------------------------------------------------------


@dataclass
class RunPodGpu:
    id: str  # "NVIDIA H100 80GB HBM3"
    memory: int  # GB
    price: float  # secure cloud, USD/h per GPU
    max_count: int = 8
    availability: str = "HIGH"  # NONE | LOW | MEDIUM | HIGH
    data_centers: tuple[str, ...] = ("US-KS-2",)


class RunPodStandIn(StandIn):
    killed_status = "EXITED"

    def __init__(self, directory: Path, **kwargs):
        super().__init__(directory, **kwargs)
        self.echo_token = False  # test hook: a 401 that repeats the refused token
        self.catalogue = [
            RunPodGpu("NVIDIA H100 80GB HBM3", 80, 2.99),
            RunPodGpu("NVIDIA A100 80GB PCIe", 80, 1.64),
            RunPodGpu("NVIDIA GeForce RTX 4090", 24, 0.69),
            RunPodGpu("NVIDIA L4", 24, 0.43, availability="NONE", data_centers=()),
        ]

    def error_body(self, status: int, detail: str) -> dict:
        titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
        return {"title": titles.get(status, "Internal Server Error"), "status": status, "detail": detail}

    def check_auth(self, headers: dict) -> None:
        token = self.bearer(headers)
        if token is None:
            raise Reply(401, self.error_body(401, "missing bearer token"), {"Content-Type": "application/problem+json"})
        if token != self.api_key:
            detail = f"invalid bearer token {token}" if self.echo_token else "invalid bearer token"
            raise Reply(401, self.error_body(401, detail), {"Content-Type": "application/problem+json"})

    def routes(self):
        return [
            (r"/v2/catalog/gpus", "GET", self.catalog),
            (r"/v2/pods", "POST", self.create),
            (r"/v2/pods", "GET", self.list),
            (r"/v2/pods/([^/]+)", "GET", self.get),
            (r"/v2/pods/([^/]+)", "DELETE", self.delete),
        ]

    def catalog(self, query, body):
        count = int(query.get("count") or 1)
        with_stock = query.get("include") == "AVAILABILITY" and query.get("product")
        gpus = []
        for g in self.catalogue:
            if g.max_count < count:
                continue
            gpu = {
                "id": g.id,
                "name": g.id.replace("NVIDIA ", "").replace("GeForce ", ""),
                "pool": None,
                "manufacturer": "NVIDIA",
                "memory": g.memory,
                "secure": True,
                "community": False,
                "price": {"secure": g.price, "community": round(g.price * 0.8, 2)},
                "maxCount": {"secure": g.max_count, "community": 0},
            }
            if with_stock:
                gpu["availability"] = g.availability
                gpu["dataCenters"] = [{"id": dc, "name": dc, "availability": g.availability} for dc in g.data_centers]
            gpus.append(gpu)
        return {"gpus": gpus}

    def pod(self, instance: Instance) -> dict:
        ssh = instance.sshd
        live = instance.status == "RUNNING" and ssh is not None
        direct = (
            {
                "host": ssh.host,
                "port": ssh.port,
                "username": ssh.user,
                "command": f"ssh {ssh.user}@{ssh.host} -p {ssh.port}",
            }
            if live
            else None
        )
        return {
            "id": instance.id,
            "name": instance.name,
            "image": instance.extra["image"],
            "args": "",
            "disk": instance.extra.get("disk", 50),
            "ports": instance.extra["ports"],
            "env": {k: v for k, v in instance.extra["env"].items() if k != "PUBLIC_KEY"},
            "registry": None,
            "status": instance.status,
            "actions": ["terminate"],
            "mounts": {},
            "gpu": {"id": instance.gpu, "count": instance.gpu_count},
            "cloud": instance.extra["cloud"],
            "dataCenterId": instance.region,
            "cudaVersion": "12.8",
            "ssh": {"proxy": None, "direct": direct},
            "template": None,
            "cost": instance.price_per_hr,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": {"ports": [{"private": 22, "public": ssh.port, "type": "tcp", "ip": ssh.host}]}
            if live
            else None,
            "createdAt": instance.extra["created"],
            "startedAt": instance.extra["created"] if live else None,
        }

    def create(self, query, body):
        if not isinstance(body, dict) or not body.get("name") or not body.get("image") or not body.get("gpu"):
            raise Reply(422, {**self.error_body(422, "Request validation failed."), "title": "Unprocessable Entity"})
        gpu_id, count = body["gpu"].get("id"), int(body["gpu"].get("count") or 1)
        entry = next((g for g in self.catalogue if g.id == gpu_id), None)
        if entry is None:
            raise Reply(400, self.error_body(400, f"unknown GPU type {gpu_id!r}"))
        if self.capacity_error or entry.availability == "NONE" or count > entry.max_count:
            raise Reply(
                400,
                self.error_body(
                    400,
                    "There are no longer any instances available with the requested specifications. "
                    "Please refresh and try again.",
                ),
            )
        env = body.get("env") or {}
        sshd = (
            self.boot(body["name"], (env.get("PUBLIC_KEY") or "").splitlines())
            if "22/tcp" in (body.get("ports") or [])
            else None
        )
        instance = Instance(
            id=self.new_id(),
            name=body["name"],
            sshd=sshd,
            status="PROVISIONING",
            price_per_hr=round(entry.price * count, 4),
            gpu=gpu_id,
            gpu_count=count,
            region=entry.data_centers[0] if entry.data_centers else "US-KS-2",
            extra={
                "image": body["image"],
                "env": env,
                "ports": body.get("ports") or [],
                "cloud": body.get("cloud") or "SECURE",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        with self.lock:
            self.instances[instance.id] = instance
        return self.pod(instance)

    def route(self, method, path, query, body):
        result, headers = super().route(method, path, query, body)
        if method == "POST" and path == "/v2/pods":
            raise Reply(201, result)
        if method == "DELETE":
            raise Reply(204, None)
        return result, headers

    def get(self, query, body, pod_id):
        with self.lock:
            instance = self.instances.get(pod_id)
            if instance is None:
                raise Reply(404, self.error_body(404, "pod not found"))
            if instance.status == "PROVISIONING" and self.poll(instance):
                instance.status = "RUNNING"
            return self.pod(instance)

    def list(self, query, body):
        with self.lock:
            return {"pods": [self.pod(i) for i in self.instances.values()]}

    def delete(self, query, body, pod_id):
        if self.take(pod_id) is None:
            raise Reply(404, self.error_body(404, "pod not found"))


# -- Lambda Cloud API v1 ----------------------------------------------------------------------------


@dataclass
class LambdaType:
    name: str  # "gpu_1x_h100_pcie"
    gpu_description: str  # "H100 (80 GB PCIe)"
    gpus: int
    price_cents_per_hour: int
    regions: tuple[str, ...] = ("us-east-1",)  # regions with capacity; () = sold out


_REGIONS = {"us-east-1": "Virginia, USA", "us-west-1": "California, USA", "us-south-1": "Texas, USA"}


def _loopback_with_free_22() -> str:
    """A 127.x.y.z address on which port 22 is free: Lambda instances are ip:22."""
    for _ in range(200):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((host, 22))
                return host
            except OSError:
                continue
    raise RuntimeError("no loopback address with port 22 free")


class LambdaStandIn(StandIn):
    killed_status = "unhealthy"

    def __init__(self, directory: Path, launch_interval_s: float = 12.0, **kwargs):
        super().__init__(directory, **kwargs)
        self.launch_interval_s = launch_interval_s
        self.last_launch = -1e9
        self.ssh_keys: list[dict] = []
        self.catalogue = [
            LambdaType("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 1, 249),
            LambdaType("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392),
            LambdaType("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 1, 129),
            LambdaType("gpu_1x_a6000", "A6000 (48 GB)", 1, 80, regions=()),
        ]

    def error_body(self, status: int, message: str, code: str | None = None, suggestion: str | None = None) -> dict:
        codes = {400: "global/invalid-parameters", 404: "global/object-does-not-exist", 500: "global/unknown"}
        # The 429 body is not in the public docs; shaped like every other Lambda error.
        return {
            "error": {"code": code or codes.get(status, "global/unknown"), "message": message, "suggestion": suggestion}
        }

    def check_auth(self, headers: dict) -> None:
        token = self.bearer(headers)
        if token is None:
            raise Reply(401, self.error_body(401, "No API key was provided.", "global/invalid-api-key"))
        if token != self.api_key:
            raise Reply(
                401,
                self.error_body(
                    401,
                    "API key was invalid, expired, or deleted.",
                    "global/invalid-api-key",
                    "Check your API key or create a new one, then try again.",
                ),
            )

    def routes(self):
        return [
            (r"/api/v1/instance-types", "GET", self.types),
            (r"/api/v1/ssh-keys", "GET", self.keys),
            (r"/api/v1/ssh-keys", "POST", self.add_key),
            (r"/api/v1/instance-operations/launch", "POST", self.launch),
            (r"/api/v1/instance-operations/terminate", "POST", self.terminate),
            (r"/api/v1/instances", "GET", self.list),
            (r"/api/v1/instances/([^/]+)", "GET", self.get),
        ]

    def types(self, query, body):
        data = {}
        for t in self.catalogue:
            data[t.name] = {
                "instance_type": {
                    "name": t.name,
                    "description": f"{t.gpus}x {t.gpu_description}",
                    "gpu_description": t.gpu_description,
                    "price_cents_per_hour": t.price_cents_per_hour,
                    "specs": {"vcpus": 26 * t.gpus, "memory_gib": 200 * t.gpus, "storage_gib": 1024, "gpus": t.gpus},
                },
                "regions_with_capacity_available": [{"name": r, "description": _REGIONS.get(r, r)} for r in t.regions],
            }
        return {"data": data}

    def keys(self, query, body):
        with self.lock:
            return {"data": list(self.ssh_keys)}

    def add_key(self, query, body):
        name, public_key = (body or {}).get("name"), (body or {}).get("public_key")
        if not name:
            raise Reply(400, self.error_body(400, "Invalid request data."))
        with self.lock:
            if any(k["name"] == name for k in self.ssh_keys):
                raise Reply(400, self.error_body(400, f"SSH key with name {name} already exists", "global/duplicate"))
            key = {"id": secrets.token_hex(16), "name": name, "public_key": public_key}
            self.ssh_keys.append(key)
            return {"data": key}

    def instance(self, i: Instance) -> dict:
        booted = i.status != "booting"
        return {
            "id": i.id,
            "name": i.name,
            "ip": i.sshd.host if booted and i.sshd else None,
            "private_ip": None,
            "status": i.status,
            "ssh_key_names": i.extra["ssh_key_names"],
            "file_system_names": [],
            "region": {"name": i.region, "description": _REGIONS.get(i.region, i.region)},
            "instance_type": {
                "name": i.gpu,
                "description": i.extra["description"],
                "price_cents_per_hour": int(i.price_per_hr * 100),
            },
            "hostname": f"{i.id}.cloud.lambdalabs.com",
            "is_reserved": False,
        }

    def launch(self, query, body):
        body = body or {}
        with self.lock:
            wait = self.last_launch + self.launch_interval_s - time.monotonic()
            if wait > 0:
                raise Reply(429, self.error_body(429, "Too many launch requests."), {"Retry-After": f"{int(wait) + 1}"})
            self.last_launch = time.monotonic()
        missing = [f for f in ("region_name", "instance_type_name", "ssh_key_names") if not body.get(f)]
        if missing:
            raise Reply(400, self.error_body(400, f"Missing required parameters: {', '.join(missing)}."))
        entry = next((t for t in self.catalogue if t.name == body["instance_type_name"]), None)
        if entry is None:
            raise Reply(404, self.error_body(404, "Instance type not found.", suggestion="List the instance types."))
        names = body["ssh_key_names"]
        if len(names) != 1:
            raise Reply(400, self.error_body(400, "Currently, exactly one SSH key must be specified."))
        with self.lock:
            key = next((k for k in self.ssh_keys if k["name"] == names[0]), None)
        if key is None:
            raise Reply(
                404, self.error_body(404, f"SSH key {names[0]} does not exist.", suggestion="Add the key first.")
            )
        if self.capacity_error or body["region_name"] not in entry.regions:
            raise Reply(
                400,
                self.error_body(
                    400,
                    "Not enough capacity to fulfill launch request.",
                    "instance-operations/launch/insufficient-capacity",
                    "Choose an instance type with more availability, or try again later.",
                ),
            )
        name = body.get("name") or ""
        instance = Instance(
            id=secrets.token_hex(16),
            name=name,
            sshd=self.boot(name, [key["public_key"]], host=_loopback_with_free_22(), port=22),
            status="booting",
            price_per_hr=entry.price_cents_per_hour / 100,
            gpu=entry.name,
            gpu_count=entry.gpus,
            region=body["region_name"],
            extra={"ssh_key_names": names, "description": f"{entry.gpus}x {entry.gpu_description}"},
        )
        with self.lock:
            self.instances[instance.id] = instance
        return {"data": {"instance_ids": [instance.id]}}

    def get(self, query, body, instance_id):
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None:
                raise Reply(404, self.error_body(404, "Specified instance does not exist."))
            if instance.status == "booting" and self.poll(instance):
                instance.status = "active"
            return {"data": self.instance(instance)}

    def list(self, query, body):
        with self.lock:
            return {"data": [self.instance(i) for i in self.instances.values()]}

    def terminate(self, query, body):
        ids = (body or {}).get("instance_ids") or []
        with self.lock:
            unknown = [i for i in ids if i not in self.instances]
        if unknown:
            raise Reply(404, self.error_body(404, "Specified instance does not exist."))
        done = []
        for instance_id in ids:
            instance = self.take(instance_id)
            instance.status = "terminated"
            done.append(self.instance(instance))
        return {"data": {"terminated_instances": done}}


# -- Prime Intellect API v1 ------------------------------------------------------------------------


@dataclass
class PrimeOffer:
    gpu_type: str  # "H100_80GB"
    gpu_count: int
    price: float  # prices.onDemand
    memory: int = 80
    stock: str = "Available"  # Available | High | Medium | Low | Unavailable
    data_center: str = "US-1"
    provider: str = "hyperstack"
    socket: str = "PCIe"
    cloud_id: str = ""


class PrimeStandIn(StandIn):
    killed_status = "ERROR"

    def __init__(self, directory: Path, **kwargs):
        super().__init__(directory, **kwargs)
        self.ssh_keys: list[dict] = []
        self.catalogue = [
            PrimeOffer("H100_80GB", 1, 2.49, cloud_id="n3-H100x1"),
            PrimeOffer("A100_80GB", 1, 1.45, cloud_id="n3-A100x1"),
            PrimeOffer("RTX4090_24GB", 1, 0.55, memory=24, stock="Unavailable", cloud_id="rtx4090x1"),
        ]

    def error_body(self, status: int, detail: str) -> dict:
        return {"detail": detail}

    def check_auth(self, headers: dict) -> None:
        token = self.bearer(headers)
        if token is None:
            raise Reply(401, {"detail": "Not authenticated"})
        if token != self.api_key:
            raise Reply(401, {"detail": "Invalid API key"})

    def routes(self):
        return [
            (r"/api/v1/availability/gpus", "GET", self.availability),
            (r"/api/v1/ssh_keys/?", "GET", self.keys),
            (r"/api/v1/ssh_keys/?", "POST", self.add_key),
            (r"/api/v1/pods/?", "POST", self.create),
            (r"/api/v1/pods/?", "GET", self.list),
            (r"/api/v1/pods/status", "GET", self.statuses),
            (r"/api/v1/pods/([^/]+)", "GET", self.get),
            (r"/api/v1/pods/([^/]+)", "DELETE", self.delete),
        ]

    def availability(self, query, body):
        items = [
            {
                "cloudId": o.cloud_id or f"{o.gpu_type}x{o.gpu_count}",
                "gpuType": o.gpu_type,
                "socket": o.socket,
                "provider": o.provider,
                "dataCenter": o.data_center,
                "country": "US",
                "gpuCount": o.gpu_count,
                "gpuMemory": o.memory,
                "disk": {"minCount": None, "defaultCount": 100, "maxCount": None, "pricePerUnit": None, "step": None},
                "vcpu": {"defaultCount": 16, "step": None},
                "memory": {"defaultCount": 128, "step": None},
                "stockStatus": o.stock,
                "security": "secure_cloud",
                "prices": {"onDemand": o.price, "communityPrice": None, "isVariable": None, "currency": "USD"},
                "images": ["ubuntu_22_cuda_12", "cuda_12_1_pytorch_2_2"],
                "isSpot": None,
                "prepaidTime": None,
            }
            for o in self.catalogue
            if (not query.get("gpu_type") or o.gpu_type == query["gpu_type"])
            and (not query.get("gpu_count") or o.gpu_count == int(query["gpu_count"]))
        ]
        page, size = int(query.get("page") or 1), int(query.get("page_size") or 100)
        return {"items": items[(page - 1) * size : page * size], "totalCount": len(items)}

    def page(self, query, rows):
        offset, limit = int(query.get("offset") or 0), int(query.get("limit") or 100)
        return {"total_count": len(rows), "offset": offset, "limit": limit, "data": rows[offset : offset + limit]}

    def keys(self, query, body):
        with self.lock:
            return self.page(query, list(self.ssh_keys))

    def add_key(self, query, body):
        body = body or {}
        if not body.get("name") or not body.get("publicKey"):
            raise Reply(422, {"detail": [{"loc": ["body", "publicKey"], "msg": "Field required", "type": "missing"}]})
        with self.lock:
            key = {
                "id": secrets.token_hex(12),
                "userId": "user-1",
                "name": body["name"],
                "publicKey": body["publicKey"],
                "isPrimary": not self.ssh_keys,
                "isUserKey": True,
            }
            self.ssh_keys.append(key)
            return key

    def pod(self, i: Instance) -> dict:
        ssh = i.sshd
        active = i.status == "ACTIVE"
        return {
            "id": i.id,
            "userId": "user-1",
            "teamId": None,
            "name": i.name,
            "type": "HOSTED",
            "providerType": i.extra["provider"],
            "status": i.status,
            "installationStatus": "FINISHED" if active else "PENDING",
            "installationFailure": "machine lost" if i.status == "ERROR" else None,
            "installationProgress": 100 if active else 0,
            "createdAt": i.extra["created"],
            "gpuName": i.gpu,
            "gpuCount": i.gpu_count,
            "socket": i.extra["socket"],
            "priceHr": i.price_per_hr,
            "environmentType": i.extra["image"],
            "sshConnection": f"{ssh.user}@{ssh.host} -p {ssh.port}" if active and ssh else None,
            "ip": ssh.host if active and ssh else None,
            "primePortMapping": [{"internal": "22", "external": str(ssh.port), "protocol": "TCP", "usedBy": "SSH"}]
            if active and ssh
            else [],
        }

    def create(self, query, body):
        pod = (body or {}).get("pod") or {}
        if not pod.get("cloudId") or not pod.get("gpuType") or not pod.get("gpuCount"):
            raise Reply(
                422, {"detail": [{"loc": ["body", "pod", "cloudId"], "msg": "Field required", "type": "missing"}]}
            )
        entry = next(
            (o for o in self.catalogue if (o.cloud_id or f"{o.gpu_type}x{o.gpu_count}") == pod["cloudId"]), None
        )
        if entry is None:
            raise Reply(404, {"detail": f"Offer {pod['cloudId']} not found"})
        if self.capacity_error or entry.stock == "Unavailable":
            raise Reply(400, {"detail": "No capacity available for the requested configuration."})
        with self.lock:
            keys = [k["publicKey"] for k in self.ssh_keys]
        name = pod.get("name") or ""
        instance = Instance(
            id=secrets.token_hex(16),
            name=name,
            sshd=self.boot(name, keys),
            status="PROVISIONING",
            price_per_hr=entry.price,
            gpu=entry.gpu_type,
            gpu_count=entry.gpu_count,
            region=entry.data_center,
            extra={
                "provider": (body.get("provider") or {}).get("type") or entry.provider,
                "socket": entry.socket,
                "image": pod.get("image") or "ubuntu_22_cuda_12",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        with self.lock:
            self.instances[instance.id] = instance
        return self.pod(instance)

    def _advance(self, instance: Instance) -> None:
        if instance.status == "PROVISIONING" and self.poll(instance):
            instance.status = "ACTIVE"

    def get(self, query, body, pod_id):
        with self.lock:
            instance = self.instances.get(pod_id)
            if instance is None:
                raise Reply(404, {"detail": "Pod not found"})
            self._advance(instance)
            return self.pod(instance)

    def statuses(self, query, body):
        ids = query.get("pod_ids") or []
        ids = [ids] if isinstance(ids, str) else ids
        with self.lock:
            found = [self.instances[i] for i in ids if i in self.instances]
            for instance in found:
                self._advance(instance)
            return {
                "data": [
                    {
                        k: v
                        for k, v in self.pod(i).items()
                        if k
                        in (
                            "status",
                            "sshConnection",
                            "ip",
                            "priceHr",
                            "primePortMapping",
                            "installationFailure",
                            "installationProgress",
                        )
                    }
                    | {"podId": i.id, "providerType": i.extra["provider"]}
                    for i in found
                ]
            }

    def list(self, query, body):
        with self.lock:
            return self.page(query, [self.pod(i) for i in self.instances.values()])

    def delete(self, query, body, pod_id):
        if self.take(pod_id) is None:
            raise Reply(404, {"detail": "Pod not found"})
        return {"status": "ok"}


# -- the Hugging Face Hub (what snapshot_download asks) ---------------------------------------------


class HubStandIn:
    """The Hub's download paths for one model repo at one revision, for `--hf-endpoint`: GET
    /api/models/{repo}/tree/{revision} (the file listing huggingface_hub's snapshot_download
    reads) and HEAD/GET /{repo}/resolve/{revision}/{file} with X-Repo-Commit and ETag, from
    huggingface_hub's own client (file_download.py, hf_api.list_repo_tree). Anything else: 404
    with the Hub's X-Error-Code. `.requests`: (method, path) seen.

        hub = HubStandIn.start("org/name", "0123...abcd", {"config.json": b"{}"})   # .url; .stop()
    """

    def __init__(self, repo_id: str, revision: str, files: dict[str, bytes]):
        self.repo_id, self.revision, self.files = repo_id, revision, files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                status, headers, body = hub.route(unquote(urlparse(self.path).path))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="HubStandIn", daemon=True)

    @classmethod
    def start(cls, repo_id: str, revision: str, files: dict[str, bytes]) -> HubStandIn:
        hub = cls(repo_id, revision, files)
        hub.thread.start()
        return hub

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if path.rstrip("/") == f"/api/models/{self.repo_id}/tree/{self.revision}":
            listing = [
                {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                for name, data in self.files.items()
            ]
            return 200, {"Content-Type": "application/json"}, json.dumps(listing).encode()
        prefix = f"/{self.repo_id}/resolve/{self.revision}/"
        if path.startswith(prefix) and path[len(prefix) :] in self.files:
            data = self.files[path[len(prefix) :]]
            headers = {
                "X-Repo-Commit": self.revision,
                "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return 200, headers, data
        return 404, {"X-Error-Code": "EntryNotFound", "Content-Type": "application/json"}, b'{"error": "not found"}'
