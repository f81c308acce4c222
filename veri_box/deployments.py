"""Deployments: a trained job's model (or a model the box has) served behind an OpenAI-compatible
chat endpoint, `POST /v1/deployments/{id}/chat/completions`, guarded by the box's API keys.

A deployment is a supervised child process (trainers/serve.py) started like a trainer: in the
trainers' sandbox, on a device of this box's inventory that no job holds (the runner counts the
devices a deployment holds as taken, and the Supervisor places deployments only on devices no
job holds), cancelled with SIGTERM then SIGKILL, and re-attached after a server restart while it
still runs (its pid and start time are in SQLite; a deployment whose process is gone then is
`stopped`, stop_reason `server_restarted`). The child listens on a unix socket in its folder
(data_dir/deployments/ID/serve.sock), which only the box can reach: the sandbox has no network.

Statuses are the ones veri-sdk reads: queued (waiting for a device), provisioning (the model
loading), serving, stopped, failed. Engine: vLLM (trainers/serve_vllm.py: vLLM's own OpenAI
server on the socket, the job's LoRA adapter served beside its base) when vLLM is installed for
the trainers' interpreter and the device is a GPU; else transformers (trainers/serve.py, the
adapter merged through PEFT). The proxy speaks OpenAI to the client either way.

A deployment may ask for several GPUs of one type (the cpu pool serves one process on one slot):
it takes them all or waits, and serves on them as one process, every one visible to it (vLLM's
tensor parallel group; transformers splits the model across them with device_map "auto").

Placement is FIFO per device type across jobs and deployments: a queued deployment waits behind
an older queued local job of its type. The other way round: this tick runs before the runner
places jobs, so an older deployment that fits takes its devices first; one that does not fit
keeps the free devices of its type from newer jobs (held() counts them for the runner's pass).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from trainers import serve  # stdlib only at import: its MAX_BATCH, the batch the estimate counts
from trainers.contract import DatasetConfig, Devices, JobConfig

from . import deployment_requests, executors, memory, models, paths, quotas
from .auth import caller_id
from .errors import ApiError, bad_request, conflict, not_found
from .inventory import CPU, Inventory
from .schemas import After, Deleted, ListOf
from .settings import Settings
from .store import Store, new_id, now, seconds_between

log = logging.getLogger("veri_box.deployments")

QUEUED, PROVISIONING, SERVING, STOPPED, FAILED = "queued", "provisioning", "serving", "stopped", "failed"
LIVE = (QUEUED, PROVISIONING, SERVING)
ENDED = (STOPPED, FAILED)
TRANSFORMERS, VLLM, AUTO = "transformers", "vllm", "auto"
MODULES = {TRANSFORMERS: "trainers.serve", VLLM: "trainers.serve_vllm"}
LORA_NAME = "trained"  # the name vLLM serves a job's LoRA adapter (or full fine-tune) under
INSTALL_VLLM = "./install.sh --vllm"
SOURCES = ("training_job", "huggingface")
MAX_N, MAX_TOKENS, MAX_STOP = 8, 4096, 4
ROLES = ("system", "user", "assistant")
LOG_LINES = 20


# -- the API's shapes ------------------------------------------------------------------------------


class GpuSpec(msgspec.Struct, forbid_unknown_fields=True):
    """veri-sdk sends {gpu_type, gpu_count}; the seed's jobs use {type, count}: both are read."""

    gpu_type: str | None = None
    gpu_count: int | None = None
    type: str | None = None
    count: int | None = None


class CreateDeployment(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    gpu: GpuSpec
    source: str = "training_job"
    provider: str | None = None
    engine: str | None = None
    num_replicas: int | None = None  # veri-sdk's; one replica is all a box serves


class Gpu(msgspec.Struct):
    gpu_type: str
    gpu_count: int
    type: str
    count: int


class Event(msgspec.Struct):
    type: str
    metadata: dict[str, Any]
    created_at: str


class Deployment(msgspec.Struct, kw_only=True):
    id: str
    object: str = "deployment"
    name: str
    model: str
    source: str
    base_model: str
    status: str
    endpoint_url: str
    gpu: Gpu
    provider: str = "local"
    engine: str
    num_replicas: int = 1
    ready_replicas: int
    total_requests: int
    error: str | None
    failure_code: str | None
    stop_reason: str | None
    created_by: str | None
    created_at: str
    started_at: str | None
    stopped_at: str | None
    last_request_at: str | None
    events: list[Event]


class Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(msgspec.Struct):
    """OpenAI's chat.completions body; fields this box does not use (tools, logprobs...) are
    accepted and ignored, as a client library sends some of them by default."""

    messages: list[Message]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


# -- service functions -------------------------------------------------------------------------------


def folder(settings: Settings, deployment_id: str) -> Path:
    return settings.data_dir / "deployments" / deployment_id


def to_api(row: dict, settings: Settings) -> Deployment:
    gpu = row["gpu"] or row["gpu_requested"]
    return Deployment(
        id=row["id"],
        name=row["name"],
        model=row["model"],
        source=row["source"],
        base_model=row["base_model"],
        status=row["status"],
        endpoint_url=f"{settings.base_url}/v1/deployments/{row['id']}",
        gpu=Gpu(gpu_type=gpu["type"], gpu_count=gpu["count"], type=gpu["type"], count=gpu["count"]),
        engine=row["engine"],
        ready_replicas=1 if row["status"] == SERVING else 0,
        total_requests=row["total_requests"],
        error=row["error"],
        failure_code=row["failure_code"],
        stop_reason=row["stop_reason"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        stopped_at=row["stopped_at"],
        last_request_at=row["last_request_at"],
        events=[Event(**e) for e in row["events"]],
    )


def _gpu(spec: GpuSpec, inventory: Inventory) -> dict:
    kind = spec.gpu_type or spec.type
    if spec.gpu_count is not None and spec.count is not None and spec.gpu_count != spec.count:
        raise bad_request("invalid_value", "gpu.gpu_count and gpu.count disagree; send one of them.", "gpu.gpu_count")
    count = spec.gpu_count if spec.gpu_count is not None else (spec.count if spec.count is not None else 1)
    if not kind:
        raise bad_request("invalid_gpu", 'gpu needs gpu_type (or type), e.g. {"gpu_type": "cpu"}.', "gpu.gpu_type")
    device = inventory.types.get(kind)
    if device is None:
        raise bad_request(
            "gpu_unavailable",
            f"This box has no '{kind}' device to serve on; it has {inventory.describe()}.",
            "gpu.gpu_type",
        )
    if count < 1:
        raise bad_request("invalid_gpu_count", f"gpu_count must be 1 or more, not {count}.", "gpu.gpu_count")
    if kind == CPU and count != 1:
        raise bad_request(
            "invalid_gpu_count",
            f"On the cpu pool a deployment is one process on one slot; gpu_count must be 1, not {count}.",
            "gpu.gpu_count",
        )
    if count > device.count:
        raise bad_request(
            "gpu_unavailable",
            f"gpu_count {count} is more than the {device.count} {kind} device(s) this box has.",
            "gpu.gpu_count",
        )
    return {"type": kind, "count": count}


def served_config(base_model: str, job_id: str | None, settings: Settings) -> dict | None:
    """The config.json of the model a deployment serves, as models.read reads it (with its
    parameter count): a full fine-tune's own, else its base's (a LoRA adapter's output, told
    apart as trainers/serve.py does, by its adapter_config.json); None when the box cannot read
    it here."""
    if job_id:
        output = paths.output_dir(settings.data_dir, job_id)
        if (output / "config.json").is_file() and not (output / "adapter_config.json").is_file():
            config = models.read(job_id, "training_job", output).config
            if config:
                return config
    found = models.find(base_model, settings)
    return found.config if found is not None and found.config else None


def attention_heads(base_model: str, job_id: str | None, settings: Settings) -> int | None:
    """The model's attention head count from its config.json (served_config; a multimodal
    model's text part), or None when the box cannot read it here."""
    config = served_config(base_model, job_id, settings)
    if not config:
        return None
    heads = config.get("num_attention_heads") or (config.get("text_config") or {}).get("num_attention_heads")
    return heads if isinstance(heads, int) and heads > 0 else None


def _check_tensor_parallel(gpu: dict, base_model: str, job_id: str | None, settings: Settings) -> None:
    """vLLM splits the attention heads across its tensor parallel group and refuses a group size
    that does not divide them ("Total number of attention heads (H) must be divisible by tensor
    parallel size (N)"): a 400 now rather than a failed deployment after the load."""
    heads = attention_heads(base_model, job_id, settings)
    if gpu["count"] == 1 or heads is None or heads % gpu["count"] == 0:
        return
    fits = [n for n in range(1, gpu["count"]) if heads % n == 0]
    raise bad_request(
        "invalid_gpu_count",
        f"vLLM splits the model's {heads} attention heads across the deployment's GPUs (tensor parallel); "
        f"gpu_count must divide {heads}, and {gpu['count']} does not (try {fits[-1]}, "
        "or engine 'transformers', which splits the model's layers instead).",
        "gpu.gpu_count",
    )


def _check_memory(
    gpu: dict, engine: str, base_model: str, job_id: str | None, settings: Settings, inventory: Inventory
) -> memory.ServeFit | None:
    """Will the model fit the deployment's GPUs? The serving estimate (memory.assess_serving: its
    weights, the serving process's KV cache and activations, per GPU) against the card: 400
    `will_not_fit` when clearly over, naming the estimate and the cheapest change that fits, so a
    model that cannot fit fails now, not after minutes of loading. Not checked on the cpu pool or
    a card whose memory the type name does not say."""
    if gpu["type"] == CPU:
        return None
    types = {kind: device.count for kind, device in inventory.types.items() if kind != CPU}
    fit = memory.assess_serving(
        served_config(base_model, job_id, settings),
        engine,
        gpu,
        types,
        serve.MAX_BATCH,
        MAX_TOKENS,
        attention_heads(base_model, job_id, settings) if engine == VLLM else None,
    )
    if fit is not None and fit.estimate.verdict == "will_not_fit":
        raise bad_request("will_not_fit", fit.message or "", fit.param)
    return fit


def _model(body: CreateDeployment, store: Store, settings: Settings) -> tuple[str, str | None]:
    """(base model, job id whose output is served or None), or a 4xx saying what is wrong."""
    if body.source == "training_job":
        job = store.get_job(body.model)
        if job is None:
            raise not_found("training job", body.model, "model")
        if job["method"] != "grpo":
            raise bad_request(
                "model_incompatible",
                f"Job {job['id']} trained a {job['method']} model; only language models (grpo jobs) can be deployed.",
                "model",
            )
        if job["status"] != "completed":
            raise bad_request(
                "job_not_completed",
                f"Job {job['id']} is {job['status']}; only a completed job's model can be deployed"
                + (" (wait for it to finish)." if job["status"] in ("queued", "provisioning", "running") else "."),
                "model",
            )
        output = paths.output_dir(settings.data_dir, job["id"])
        if not output.is_dir() or not any(output.iterdir()):
            raise bad_request(
                "model_files_missing", f"The model files of job {job['id']} are gone ({output}).", "model"
            )
        return job["base_model"], job["id"]
    if body.source == "huggingface":
        found = models.find(body.model, settings)
        if found is None:
            raise bad_request("model_not_found", models.not_found_message(body.model.strip(), settings, store), "model")
        if "grpo" not in found.model.methods:
            raise bad_request(
                "model_incompatible",
                f"Model '{body.model}' is not a causal language model this box can serve.",
                "model",
            )
        return body.model.strip(), None
    raise bad_request("invalid_source", f"source must be one of {', '.join(SOURCES)}, not {body.source!r}.", "source")


def vllm_installed() -> bool:
    """Whether the trainers' interpreter (this one, on the same PYTHONPATH) has vLLM: found, not
    imported, as importing it would load torch into the server."""
    importlib.invalidate_caches()  # a vLLM installed while the box runs is seen without a restart
    return importlib.util.find_spec("vllm") is not None


def choose_engine(requested: str | None, kind: str) -> str:
    """The engine a deployment on device type `kind` runs on, or a 400 saying why not and how."""
    if requested in (None, AUTO):
        return VLLM if kind != CPU and vllm_installed() else TRANSFORMERS
    if requested == TRANSFORMERS:
        return TRANSFORMERS
    if requested != VLLM:
        raise bad_request(
            "invalid_engine", f"engine must be one of auto, vllm, transformers, not {requested!r}.", "engine"
        )
    if kind == CPU:
        raise bad_request(
            "engine_unavailable",
            "vLLM serves on GPUs only; on the cpu pool a deployment runs on transformers "
            "(omit engine, or send engine: 'transformers').",
            "engine",
        )
    if not vllm_installed():
        raise bad_request(
            "engine_unavailable",
            f"vLLM is not installed on this box: install it with `{INSTALL_VLLM}` (GPU machines only), "
            "or omit engine to serve with transformers.",
            "engine",
        )
    return VLLM


def served_model(row: dict) -> str:
    """The `model` vLLM answers to for this deployment: its job's adapter, or the base by name."""
    return LORA_NAME if row["adapter_job_id"] else row["base_model"]


def create(
    store: Store, settings: Settings, inventory: Inventory, body: CreateDeployment, created_by: str | None
) -> dict:
    """Validate and record a deployment (queued); the Supervisor places and starts it."""
    if body.provider not in (None, "local"):
        raise bad_request(
            "invalid_provider", "A box serves its deployments itself: provider must be 'local'.", "provider"
        )
    if body.num_replicas not in (None, 1):
        raise bad_request("invalid_num_replicas", "A box serves one replica per deployment.", "num_replicas")
    if not body.name.strip():
        raise bad_request("invalid_name", "name must not be blank.", "name")
    gpu = _gpu(body.gpu, inventory)
    engine = choose_engine(body.engine, gpu["type"])
    base_model, job_id = _model(body, store, settings)
    if engine == VLLM:
        _check_tensor_parallel(gpu, base_model, job_id, settings)
    fit = _check_memory(gpu, engine, base_model, job_id, settings, inventory)
    created_at = now()
    row = {
        "id": new_id("dep_"),
        "name": body.name.strip(),
        "model": body.model.strip(),
        "source": body.source,
        "base_model": base_model,
        "adapter_job_id": job_id,
        "status": QUEUED,
        "engine": engine,
        "gpu_requested": gpu,
        "created_by": created_by,
        "created_at": created_at,
        # The estimate it was accepted with (a borderline one's warning in it), for when it fails.
        "events": [{"type": "memory_estimate", "metadata": fit.metadata(), "created_at": created_at}] if fit else [],
    }
    store.insert_deployment(row)
    return store.get_deployment(row["id"])  # type: ignore[return-value]


def get(store: Store, deployment_id: str) -> dict:
    row = store.get_deployment(deployment_id)
    if row is None:
        raise not_found("deployment", deployment_id)
    return row


def stop(store: Store, deployment_id: FromPath[str], reason: str = "stopped_by_user") -> dict:
    """Stop a deployment: it reads `stopped` at once; the Supervisor's next tick ends its process
    (SIGTERM, SIGKILL after the grace period) and frees its device. Stopping a stopped or
    failed one answers it as it is."""
    row = get(store, deployment_id)
    if row["status"] in ENDED:
        return row
    stopped = store.update_deployment(
        deployment_id, allowed_from=LIVE, status=STOPPED, stop_reason=reason, stopped_at=now()
    )
    if stopped:
        store.add_deployment_event(deployment_id, "stopped", {"reason": reason})
    return get(store, deployment_id)


def delete(store: Store, settings: Settings, deployment_id: str) -> None:
    row = get(store, deployment_id)
    if row["status"] in LIVE or row["devices"] is not None:
        raise conflict(
            "deployment_running",
            f"Deployment {deployment_id} is {row['status']}; stop it first "
            f"(POST /v1/deployments/{deployment_id}/stop).",
        )
    store.delete_deployment(deployment_id)
    import shutil

    shutil.rmtree(folder(settings, deployment_id), ignore_errors=True)


# -- the serving processes --------------------------------------------------------------------------


class ServeExecutor(executors.LocalExecutor):
    """The local executor, its child's log in the deployment's folder rather than a job's, and
    one serving process however many GPUs it has."""

    def _log_path(self, job: dict, config: JobConfig) -> Path:
        return Path(config.job_dir) / "serve.log"

    # A trainer on several GPUs is one process per GPU (accelerate launch): N servers on one
    # socket here. vLLM starts its own tensor parallel workers, and transformers splits the model
    # across the GPUs it sees: one process, all of the deployment's GPUs visible.
    one_process = True


class Supervisor:
    """Places queued deployments on free devices, watches their processes, stops idle ones. The
    runner calls tick() under its own lock, before it places jobs, so the two never take the
    same device."""

    def __init__(self, store: Store, settings: Settings, inventory: Inventory):
        self.store = store
        self.settings = settings
        self.inventory = inventory
        self.executor = ServeExecutor(settings)
        # Free devices a queued deployment that does not fit yet keeps from newer jobs, by type
        # (set by each _place, read by the runner's placement right after it).
        self.reserved: dict[str, set[int]] = {}
        self._next_prune = 0.0  # when to drop the request log's old rows next (hourly)

    def recover(self) -> None:
        """At start-up: keep the serving processes that still run, stop those that are gone."""
        for row in self.store.deployments_holding_devices():
            if self.executor.reattach(row):
                log.info("re-attached to deployment %s (pid %s)", row["id"], row["pid"])
                continue
            if row["status"] in LIVE:
                self.store.update_deployment(
                    row["id"], status=STOPPED, stop_reason="server_restarted", stopped_at=now()
                )
                self.store.add_deployment_event(
                    row["id"], "stopped", {"reason": "server_restarted", "message": "its process was gone"}
                )
            self.store.update_deployment(row["id"], devices=None, pid=None)

    def shutdown(self) -> None:
        """The box is stopping: serving processes go on (the next start re-attaches them), but
        those of deployments already stopped or failed, which the next tick would have ended, get
        their SIGTERM now; else a deployment stopped just before the box would keep its device
        for as long as the box stays down."""
        for row in self.store.deployments_holding_devices():
            if row["status"] in ENDED and row["pid"]:
                self.executor.cancel(row)

    def held(self) -> dict[str, set[int]]:
        """Devices no job may take, by type (the runner adds them to the jobs'): those the
        deployments hold, and those kept for an older queued deployment still short of its count."""
        out = self._holding()
        for kind, kept in self.reserved.items():
            out.setdefault(kind, set()).update(kept)
        return out

    def _holding(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for row in self.store.deployments_holding_devices():
            out.setdefault(row["gpu"]["type"], set()).update(row["devices"])
        return out

    def tick(self) -> None:
        for row in self.store.deployments_holding_devices():
            try:
                self._supervise(row)
            except Exception:  # one broken deployment must not stop the others
                log.exception("supervising deployment %s failed", row["id"])
        self._stop_idle()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 3600
            stamp = int(time.time() * 1000)
            kept = deployment_requests.ROWS_KEPT_S
            pruned = self.store.prune_deployment_requests(
                stamp - kept * 1000, stamp - deployment_requests.HOURS_KEPT_S * 1000
            )
            if pruned:
                log.info("pruned %d deployment requests older than %d days", pruned, kept // 86400)
        self._place()

    def _supervise(self, row: dict) -> None:
        if row["status"] in ENDED:
            if row["pid"] and not row["stopped_at"]:
                self.store.update_deployment(row["id"], stopped_at=now())
            if self.executor.poll(row)[0]:
                grace = seconds_between(row["stopped_at"] or now(), now()) or 0.0
                self.executor.cancel(row, force=grace >= self.settings.cancel_grace_s)
                return
            self._release(row)
            return
        running, exit_code = self.executor.poll(row)
        if not running:
            tail = _tail(folder(self.settings, row["id"]) / "serve.log")
            message = f"The serving process exited (code {exit_code}) before it was stopped." + (
                f" Last lines of its log:\n{tail}" if tail else ""
            )
            self.store.update_deployment(
                row["id"], status=FAILED, failure_code="server_crashed", error=message, stopped_at=now()
            )
            self.store.add_deployment_event(row["id"], "failed", {"code": "server_crashed"})
            self._release(row)
            return
        if row["status"] == PROVISIONING and (folder(self.settings, row["id"]) / "ready").is_file():
            ready = json.loads((folder(self.settings, row["id"]) / "ready").read_text() or "{}")
            if self.store.update_deployment(row["id"], allowed_from=(PROVISIONING,), status=SERVING, started_at=now()):
                self.store.add_deployment_event(row["id"], "serving", {"load_s": ready.get("load_s")})

    def _release(self, row: dict) -> None:
        self.executor.release(row)
        self.store.update_deployment(row["id"], devices=None, pid=None)

    def _stop_idle(self) -> None:
        limit = self.settings.deployment_idle_stop_s
        if limit <= 0:
            return
        stamp = now()
        for row in self.store.deployments_with_status(SERVING):
            idle = seconds_between(row["last_request_at"] or row["started_at"], stamp) or 0.0
            if idle > limit:
                log.info("stopping idle deployment %s (%.0f s without a request)", row["id"], idle)
                stop(self.store, row["id"], reason="idle")
                self.store.add_deployment_event(
                    row["id"], "idle_stopped", {"idle_s": round(idle, 1), "deployment_idle_stop_s": limit}
                )

    def _place(self) -> None:
        """FIFO per device type across jobs and deployments: a deployment takes its `count` free
        devices only when no older queued job of its type waits for them (the runner, placing
        after this, gives such a job the devices); jobs held at a quota do not count, as other
        keys' jobs go past them too. A deployment that does not fit holds back the newer
        deployments of its type, and keeps the devices left free from newer jobs (`reserved`):
        with one device there are never any, with several a stream of one-GPU jobs would
        otherwise starve it."""
        self.reserved = {}
        queued = self.store.deployments_with_status(QUEUED)
        if not queued:
            return
        held = self._holding()
        for job in self.store.jobs_holding_devices():
            if job["gpu"] and job["provider"] in ("local", None):
                held.setdefault(job["gpu"]["type"], set()).update(job["devices"])
        waiting = [
            job
            for job in self.store.jobs_with_status("queued")
            if job["provider_requested"] in (None, "local") and quotas.waiting_for(self.store, job) is None
        ]
        blocked: set[str] = set()
        for row in queued:
            kind, wanted = row["gpu_requested"]["type"], row["gpu_requested"]["count"]
            device = self.inventory.types.get(kind)
            if device is not None and wanted > device.count:  # restarted with fewer: it would wait forever
                self._fail_queued(row, device.count)
                continue
            if kind in blocked or device is None:
                continue
            free = [i for i in device.indices if i not in held.get(kind, set())]
            ahead = [j for j in waiting if j["gpu_requested"]["type"] == kind and j["created_at"] < row["created_at"]]
            for job in ahead:  # each older job takes the devices it asks for; one that does not fit holds the rest
                count = job["gpu_requested"]["count"]
                if count > len(free):
                    free = []
                    break
                held.setdefault(kind, set()).update(free[:count])
                free = free[count:]
            waiting = [j for j in waiting if j not in ahead]  # reserved once, not again for the next deployment
            if len(free) < wanted:
                blocked.add(kind)  # the deployments of its type behind it wait too
                self.reserved.setdefault(kind, set()).update(free)  # and the jobs behind it
                continue
            chosen = free[:wanted]
            held.setdefault(kind, set()).update(chosen)
            self._start(row, chosen)

    def _fail_queued(self, row: dict, have: int) -> None:
        kind, wanted = row["gpu_requested"]["type"], row["gpu_requested"]["count"]
        message = (
            f"This box now has {have} {kind} device(s), fewer than the {wanted} this deployment asked for "
            "(it was restarted with fewer); create it again with a gpu_count the box has."
        )
        failed = self.store.update_deployment(
            row["id"],
            allowed_from=(QUEUED,),
            status=FAILED,
            failure_code="gpu_unavailable",
            error=message,
            stopped_at=now(),
        )
        if failed:
            self.store.add_deployment_event(row["id"], "failed", {"code": "gpu_unavailable"})

    def _start(self, row: dict, indices: list[int]) -> None:
        kind = row["gpu_requested"]["type"]
        placed = self.store.update_deployment(
            row["id"],
            allowed_from=(QUEUED,),
            status=PROVISIONING,
            devices=indices,
            gpu={"type": kind, "count": len(indices)},
        )
        if placed is None:  # stopped while queued
            return
        work = folder(self.settings, row["id"])
        work.mkdir(parents=True, exist_ok=True)
        (work / "ready").unlink(missing_ok=True)
        data_dir = self.settings.data_dir
        adapter = str(paths.output_dir(data_dir, row["adapter_job_id"])) if row["adapter_job_id"] else None
        models_dir = str(paths.models_dir(data_dir))
        serve = {"base_model": row["base_model"], "models_dir": models_dir, "adapter_dir": adapter}
        if row["engine"] == VLLM:
            serve |= {"served_model": served_model(row), "lora_name": LORA_NAME, "tensor_parallel_size": len(indices)}
        (work / "serve.json").write_text(json.dumps(serve))
        config = JobConfig(
            job_id=row["id"],
            method="grpo",
            trainer=MODULES.get(row["engine"], MODULES[TRANSFORMERS]),
            base_model=row["base_model"],
            output_name="",
            # The sandbox binds the "dataset" read-only: here the job output the child serves.
            dataset=DatasetConfig(id="", format="", columns=[], num_rows=0, path=adapter or str(work)),
            reward_functions=[],
            environments=None,
            openreward=None,
            hyperparameters={},
            seed=None,
            devices=Devices(type=kind, count=len(indices), indices=indices),
            job_dir=str(work),
            output_dir=str(work),
            models_dir=models_dir,
            checkpoints_dir=str(work),
        )
        try:
            started = self.executor.start(placed, config)
        except OSError as err:
            self.store.update_deployment(
                row["id"], status=FAILED, failure_code="start_failed", error=str(err), devices=None, stopped_at=now()
            )
            return
        self.store.update_deployment(row["id"], **started)
        self.store.add_deployment_event(
            row["id"], "provisioning", {"gpu_type": kind, "device": indices[0], "devices": indices}
        )


def _tail(path: Path, size: int = 8192) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - size, 0))
            return "\n".join(fh.read().decode("utf-8", errors="replace").splitlines()[-LOG_LINES:])
    except OSError:
        return ""


# -- chat: the OpenAI-compatible proxy -----------------------------------------------------------


def _text(message: Message, i: int) -> str:
    if message.role not in ROLES:
        raise bad_request(
            "invalid_role",
            f"messages[{i}].role must be one of {', '.join(ROLES)}, not {message.role!r}.",
            f"messages[{i}].role",
        )
    content = message.content
    if isinstance(content, list):  # OpenAI's content parts: only text ones make sense here
        parts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(
                    "unsupported_content",
                    f"messages[{i}].content: only text parts are supported.",
                    f"messages[{i}].content",
                )
            parts.append(part["text"])
        content = "".join(parts)
    if content is None:
        raise bad_request("invalid_message", f"messages[{i}] has no content.", f"messages[{i}].content")
    return content


def check_chat(body: ChatRequest) -> dict:
    """The child's /generate body, or 400 naming the field (OpenAI's error shape)."""
    if not body.messages:
        raise bad_request("invalid_messages", "messages must hold at least one message.", "messages")
    messages = [{"role": m.role, "content": _text(m, i)} for i, m in enumerate(body.messages)]
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is not None and not 1 <= max_tokens <= MAX_TOKENS:
        raise bad_request("invalid_max_tokens", f"max_tokens must be between 1 and {MAX_TOKENS}.", "max_tokens")
    if body.temperature is not None and not 0 <= body.temperature <= 2:
        raise bad_request("invalid_temperature", "temperature must be between 0 and 2.", "temperature")
    if body.top_p is not None and not 0 < body.top_p <= 1:
        raise bad_request("invalid_top_p", "top_p must be greater than 0 and at most 1.", "top_p")
    if body.n is not None and not 1 <= body.n <= MAX_N:
        raise bad_request("invalid_n", f"n must be between 1 and {MAX_N}.", "n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise bad_request("invalid_stop", f"stop takes at most {MAX_STOP} sequences.", "stop")
    return {
        "messages": messages,
        "max_tokens": max_tokens or 256,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "n": body.n or 1,
        "stop": stop,
    }


class EventStream(Stream):
    """Server-sent events. Litestar's Stream lets the handler's media type (JSON, as the same
    handler answers a non-streaming request with JSON) override its own: not here."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = "text/event-stream"
        return super().to_asgi_response(*args, **kwargs)


_clients: dict[str, httpx.AsyncClient] = {}


def _socket(settings: Settings, deployment_id: str) -> str:
    """The child's socket; through a short link in /tmp when its path is past the 107 bytes a
    unix socket address may hold (a deep data directory)."""
    path = str(folder(settings, deployment_id) / "serve.sock")
    if len(path.encode()) < 100:
        return path
    link = f"/tmp/veri-box-{os.getuid()}-{deployment_id}.sock"
    if not os.path.islink(link) or os.readlink(link) != path:
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        os.symlink(path, link)
    return link


def _client(path: str) -> httpx.AsyncClient:
    client = _clients.get(path)
    if client is None:
        client = _clients[path] = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://serve", timeout=httpx.Timeout(600, connect=5)
        )
    return client


def _unavailable(deployment_id: FromPath[str], why: str) -> ApiError:
    return ApiError(
        503,
        "upstream_unavailable",
        f"Deployment {deployment_id} did not answer ({why}); retry shortly.",
        headers={"Retry-After": "2"},
    )


async def chat(request: Request, store: Store, settings: Settings, deployment_id: str, body: ChatRequest) -> Any:
    """The proxy, each request of an existing deployment logged (deployment_requests) with how it
    ended, refusals included."""
    row = await anyio.to_thread.run_sync(store.get_deployment, deployment_id)
    if row is None:
        raise not_found("deployment", deployment_id)
    length = request.headers.get("content-length", "")
    record = deployment_requests.Recorder(
        store, deployment_id, int(length) if length.isdigit() else None, bool(body.stream), body.n or 1
    )
    try:
        answer = await _chat(settings, row, body, record)
    except ApiError as err:
        record.failed(err.status, err.code, err.message)
        record.close()
        raise
    except asyncio.CancelledError:  # the client went away before the answer
        record.close(disconnected=True)
        raise
    except Exception as err:
        record.failed(500, "internal_error", f"{type(err).__name__}: {err}")
        record.close()
        raise
    if isinstance(answer, EventStream):
        return answer  # logged when the stream ends
    record.sent(msgspec.json.encode(answer))
    record.usage(answer.get("usage"))
    record.finished(next((c.get("finish_reason") for c in answer.get("choices") or []), None))
    record.close()
    return answer


async def _recorded(events: Any, record: deployment_requests.Recorder) -> Any:
    """A stream's events, its log row written when it ends: a client that left before [DONE]
    closes the generator early."""
    complete = False
    try:
        async for data in events:
            record.sent(data)
            yield data
        complete = True
    finally:
        record.close(disconnected=not complete)


async def _chat(settings: Settings, row: dict, body: ChatRequest, record: deployment_requests.Recorder) -> Any:
    deployment_id = row["id"]
    generate = check_chat(body)
    if row["status"] in (QUEUED, PROVISIONING):
        raise ApiError(
            503,
            "deployment_waking",
            f"Deployment {deployment_id} is {row['status']} (loading its model); retry in a few seconds.",
            headers={"Retry-After": "2"},
        )
    if row["status"] != SERVING:
        raise conflict(
            "deployment_not_serving",
            f"Deployment {deployment_id} is {row['status']}; create a new deployment to chat with this model.",
        )
    record.reached_model = True
    client = _client(_socket(settings, deployment_id))
    if row["engine"] == VLLM:
        return await _chat_vllm(client, row, body, generate, record)
    upstream = client.build_request("POST", "/generate", json=generate)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TransportError as err:
        raise _unavailable(deployment_id, type(err).__name__) from None
    if response.status_code != 200:
        text = (await response.aread()).decode(errors="replace")
        await response.aclose()
        raise bad_request("invalid_request", f"The model refused the request: {text[:500]}")
    completion_id = "chatcmpl-" + new_id()
    created = int(time.time())
    model = body.model or row["name"]

    async def lines():
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            await response.aclose()

    if not body.stream:
        final: dict = {}
        async for item in lines():
            if item.get("done"):
                final = item
        if "error" in final or not final:
            raise ApiError(500, "generation_failed", f"The model failed: {final.get('error', 'no answer')}")
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c["index"],
                    "message": {"role": "assistant", "content": c["text"]},
                    "finish_reason": c["finish_reason"],
                    "logprobs": None,
                }
                for c in sorted(final["choices"], key=lambda c: c["index"])
            ],
            "usage": final["usage"],
        }

    include_usage = bool((body.stream_options or {}).get("include_usage"))

    def chunk(choices: list[dict], usage: dict | None = None) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            data["usage"] = usage
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def events():
        started: set[int] = set()
        async for item in lines():
            if not item.get("done"):
                index = item["index"]
                delta = {"content": item["text"]}
                if index not in started:
                    started.add(index)
                    delta = {"role": "assistant", **delta}
                if item["text"]:
                    record.token()
                yield chunk([{"index": index, "delta": delta, "finish_reason": None}])
                continue
            if "error" in item:
                message = f"The model failed: {item['error']}"
                record.failed(200, "generation_failed", message)
                error = {"message": message, "type": "server_error", "param": None, "code": "generation_failed"}
                yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                break
            record.usage(item["usage"])
            for c in sorted(item["choices"], key=lambda c: c["index"]):
                record.finished(c["finish_reason"])
                delta = {} if c["index"] in started else {"role": "assistant", "content": ""}
                yield chunk([{"index": c["index"], "delta": delta, "finish_reason": c["finish_reason"]}])
            if include_usage:
                yield chunk([], item["usage"])
        yield b"data: [DONE]\n\n"

    return EventStream(
        _recorded(events(), record), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _vllm_error(status: int, text: str) -> ApiError:
    """vLLM's error ({"error": {message, type, param, code: HTTP status}}) as ours: a 4xx keeps
    its status, message and param; anything else is the model failing."""
    try:
        error = json.loads(text)["error"]
        message, param = str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        message, param = text[:500], None
    if 400 <= status < 500:
        return ApiError(status, "invalid_request", f"The model refused the request: {message[:500]}", param)
    return ApiError(500, "generation_failed", f"The model failed: {message[:500]}")


async def _chat_vllm(
    client: httpx.AsyncClient, row: dict, body: ChatRequest, generate: dict, record: deployment_requests.Recorder
) -> Any:
    """Proxy to vLLM's own /v1/chat/completions: the body checked as for transformers, its
    `model` the name vLLM serves the deployment under, usage always asked for in a stream (a
    client that did not ask gets no usage chunk, as from transformers), and every answer naming
    the model the client sent, as a transformers deployment's do."""
    model = body.model or row["name"]
    upstream_body = {**generate, "model": served_model(row)}
    if not upstream_body["stop"]:
        del upstream_body["stop"]
    if body.stream:
        upstream_body |= {"stream": True, "stream_options": {"include_usage": True}}
    upstream = client.build_request("POST", "/v1/chat/completions", json=upstream_body)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TransportError as err:
        raise _unavailable(row["id"], type(err).__name__) from None
    if response.status_code != 200:
        text = (await response.aread()).decode(errors="replace")
        await response.aclose()
        raise _vllm_error(response.status_code, text)
    if not body.stream:
        try:
            answer = json.loads(await response.aread())
        finally:
            await response.aclose()
        return {**answer, "model": model}
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    async def events():
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :].strip()
                if data == "[DONE]":
                    break
                item = json.loads(data)
                if "error" in item:
                    failed = _vllm_error(500, data)
                    record.failed(200, failed.code, failed.message)
                    error = {"message": failed.message, "type": "server_error", "param": None, "code": failed.code}
                    yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                    break
                record.usage(item.get("usage"))
                choices = item.get("choices") or []
                for c in choices:
                    record.finished(c.get("finish_reason"))
                if not choices and item.get("usage") is not None and not include_usage:
                    continue  # the usage chunk the box asked for, not the client
                if not include_usage:
                    item.pop("usage", None)
                if any((c.get("delta") or {}).get("content") for c in choices):
                    record.token()
                yield b"data: " + json.dumps({**item, "model": model}).encode() + b"\n\n"
        finally:
            await response.aclose()
        yield b"data: [DONE]\n\n"

    return EventStream(
        _recorded(events(), record), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


# -- the controller -----------------------------------------------------------------------------


class DeploymentController(Controller):
    path = "/v1/deployments"
    tags = ["deployments"]

    @litestar.post("/", status_code=200, sync_to_thread=True, opt={"rule": "member"})
    def create_(
        self,
        request: Request,
        data: JSONBody[CreateDeployment],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        inventory: NamedDependency[Inventory],
    ) -> Deployment:
        return to_api(create(store, settings, inventory, data, caller_id(request)), settings)

    @litestar.get("/", sync_to_thread=True)
    def list_(
        self,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        after: After = None,
        status: Annotated[str | None, Parameter(max_length=20)] = None,
    ) -> ListOf[Deployment]:
        rows = store.list_deployments(status, limit + 1, after)
        return ListOf(data=[to_api(r, settings) for r in rows[:limit]], has_more=len(rows) > limit)

    @litestar.get("/{deployment_id:str}", sync_to_thread=True)
    def get_(
        self, deployment_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]
    ) -> Deployment:
        return to_api(get(store, deployment_id), settings)

    @litestar.post(
        "/{deployment_id:str}/stop", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "deployment"}
    )
    def stop_(
        self, deployment_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]
    ) -> Deployment:
        return to_api(stop(store, deployment_id), settings)

    @litestar.delete(
        "/{deployment_id:str}", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "deployment"}
    )
    def delete_(
        self, deployment_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]
    ) -> Deleted:
        delete(store, settings, deployment_id)
        return Deleted(id=deployment_id, object="deployment")

    @litestar.post("/{deployment_id:str}/chat/completions", status_code=200, opt={"rule": "member", "audit": False})
    async def chat_(
        self,
        request: Request,
        deployment_id: FromPath[str],
        data: JSONBody[ChatRequest],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
    ) -> Any:
        return await chat(request, store, settings, deployment_id, data)


__all__ = ["DeploymentController", "Supervisor"]
