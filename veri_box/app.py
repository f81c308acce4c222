"""The Litestar application: the Box of shared objects, and one factory that wires it and the
routes together. Handlers reach the Box's objects only through dependency injection."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from litestar import Litestar, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin

from . import __version__, artifacts, cost, dashboard, datasets, deployment_requests, deployments, devices, hub, paths
from .api_keys import QUOTA_ROUTES, ApiKeyController, whoami
from .audit import audit_middleware, list_audit
from .auth import Signer, api_key_guard, rule_guard
from .datasets import DatasetController
from .errors import JSON_BODY_LIMIT, ErrorBody, exception_handler
from .evaluations import EvaluationController
from .integrations import IntegrationController, WandbController
from .inventory import Inventory, build_inventory
from .job_outputs import JobOutputController
from .jobs import JobController
from .merges import MergeController
from .models import ModelController
from .placement import CLOUDS, SLURM, Placement
from .provider_settings import ProviderSettingsController
from .providers import Providers
from .remote import RemoteExecutor
from .reward_functions import RewardFunctionController
from .reward_tests import ROUTES as REWARD_TEST_ROUTES
from .runner import Runner
from .sessions import Sessions, session_signer
from .settings import Settings, SettingsError
from .store import Store

log = logging.getLogger("veri_box")

# Bodies other than uploads are small; uploads get their own, configurable limit.
TICK_S = 1.0

ERROR_RESPONSES = {
    status: ResponseSpec(data_container=ErrorBody, description=description)
    for status, description in [
        (400, "Invalid request: `error.code` says why and `error.param` names the field."),
        (401, "Missing, invalid or revoked API key."),
        (404, "No such resource."),
        (405, "Method not allowed on this route."),
        (409, "The resource is in use."),
    ]
}


@get(["/healthz", "/health"], tags=["health"], include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness, without a key: `/health` is the path `veri doctor` asks."""
    return {"status": "ok", "version": __version__}


def _document_errors(app: Litestar) -> None:
    """Every route answers errors in one shape; say so in the OpenAPI document."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            handler.responses = {**ERROR_RESPONSES, **(handler.responses or {})}


class DataDirInUse(SettingsError):
    """Another process serves this data directory: two runners would start the same jobs twice."""


class _DataDirLock:
    """An flock on DATA_DIR/veri-box.lock, taken once per process and shared by every Box of that
    directory in it: flock conflicts even between two descriptors of one process, and tests (or a
    restart in-process) open a second Box on a directory the first still holds. The kernel drops
    the lock when the process dies, so a crashed server never leaves a stale one."""

    _held: dict[Path, tuple[int, int]] = {}  # lock file -> (descriptor, boxes holding it)
    _guard = threading.Lock()

    @classmethod
    def acquire(cls, path: Path) -> bool:
        """Take the lock file `path` (True if this process did not hold it yet) or raise DataDirInUse."""
        with cls._guard:
            if path in cls._held:
                fd, count = cls._held[path]
                cls._held[path] = (fd, count + 1)
                return False
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DataDirInUse(
                    f"another veri-box server (pid {holder}) is using the data directory {path.parent}; "
                    "stop it first, or give this one its own --data-dir."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            cls._held[path] = (fd, 1)
            return True

    @classmethod
    def release(cls, path: Path) -> None:
        with cls._guard:
            fd, count = cls._held.get(path, (-1, 0))
            if count > 1:
                cls._held[path] = (fd, count - 1)
            elif count == 1:
                del cls._held[path]
                os.close(fd)  # closing the last descriptor releases the flock


def _clean_up_after_a_crash(data_dir: Path) -> None:
    cleanup = getattr(datasets, "cleanup_leftovers", None)
    removed = cleanup(data_dir) if cleanup else 0
    if removed:
        log.info("removed %d leftover upload file(s) of an interrupted upload", removed)


@dataclass(frozen=True)
class Box:
    """The objects one box shares, built once: the app hands each to handlers as a dependency of
    the same name; tests and the CLI hold the Box itself."""

    settings: Settings
    store: Store
    inventory: Inventory
    placement: Placement
    runner: Runner
    signer: Signer
    sessions: Sessions

    @classmethod
    def open(cls, settings: Settings, inventory: Inventory | None = None) -> Box:
        """The box of `settings.data_dir` (made if new); the inventory from the settings unless given.
        Raises DataDirInUse while another process serves that directory; the lock is held until
        the last Box of the directory in this process is gone."""
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = paths.lock_file(data_dir).resolve()
        first = _DataDirLock.acquire(lock)
        try:
            if first:  # a Box of this process may be taking uploads: their files are not leftovers
                _clean_up_after_a_crash(data_dir)
            store = Store(paths.db(data_dir))
            signer = Signer(store.box_value("url_signing_secret", lambda: secrets.token_hex(32)))
            inventory = inventory or build_inventory(settings.gpus, settings.cpu_slots, settings.prices())
            placement = _placement(settings, store, inventory)
            runner = Runner(store, settings, placement, _executors(settings, store, placement))
            sessions = Sessions(store, session_signer(store))
            box = cls(settings, store, inventory, placement, runner, signer, sessions)
            runner.deployments = deployments.Supervisor(store, settings, inventory)
            runner.on_completed = hub.completion_hook(box)  # a job with hf_push is pushed once it completes
        except BaseException:
            _DataDirLock.release(lock)
            raise
        weakref.finalize(box, _DataDirLock.release, lock)
        return box


def _placement(settings: Settings, store: Store, inventory: Inventory) -> Placement:
    """Where jobs can run: this box's devices, the Slurm partitions of --slurm (checked now: a
    cluster the box cannot use stops it from starting, with the reason), the cloud providers."""
    cluster = None
    if settings.slurm_partitions():
        from . import slurm

        cluster = slurm.connect(settings)
    return Placement(inventory, cluster, Providers(store, settings), settings.burst_after_s)


def _executors(settings: Settings, store: Store, placement: Placement) -> dict:
    """The executors beyond the local one, by provider name (one remote executor serves every cloud)."""
    executors: dict[str, Any] = {}
    if placement.cluster is not None:
        from .slurm import SlurmExecutor

        executors[SLURM] = SlurmExecutor(settings, store, placement.cluster)
    remote = RemoteExecutor(settings, store, placement.providers)
    executors.update({name: remote for name in CLOUDS})
    return executors


def _close_providers(box: Box) -> None:
    """The cloud adapters' HTTP clients go with the app (their pooled connections to the providers)."""
    providers = getattr(box.placement, "providers", None)
    if providers is not None:
        providers.close()


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def create_app(box: Box | Settings, inventory: Inventory | None = None, run_jobs: bool = True) -> Litestar:
    """The whole box, from a Box or from Settings (then opened here, with `inventory` if given).
    `run_jobs=False` serves the API without placing jobs (tests of the API layer use it so
    their jobs stay queued)."""
    if isinstance(box, Settings):
        box = Box.open(box, inventory)
    elif inventory is not None:
        raise ValueError("a Box brings its own inventory")
    settings = box.settings

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # Through `box`, not its runner alone: the app holds its Box, and so the data directory's
        # lock, for as long as the app lives.
        runner = box.runner
        if not run_jobs:
            try:
                yield
            finally:
                _close_providers(box)
            return
        await anyio.to_thread.run_sync(runner.recover)
        await anyio.to_thread.run_sync(hub.recover, box)
        scheduler = AsyncIOScheduler()
        # Supervision touches files and SQLite: it runs in a worker thread, never on the loop.
        scheduler.add_job(
            anyio.to_thread.run_sync,
            "interval",
            args=[runner.tick],
            seconds=TICK_S,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(),
        )
        scheduler.start()
        try:
            yield
        finally:
            # Trainers run in their own sessions and keep going; the next start re-attaches.
            scheduler.shutdown(wait=False)
            if runner.deployments is not None:
                await anyio.to_thread.run_sync(runner.deployments.shutdown)
            _close_providers(box)

    uploads = Router(
        path="/", route_handlers=[DatasetController], request_max_body_size=settings.max_upload_bytes + 1024 * 1024
    )
    api = Router(
        path="/",
        # The key guard says who asks; the rule guard checks each route's opt['rule'] (roles).
        guards=[api_key_guard(box.store), rule_guard(box.store)],
        route_handlers=[
            ApiKeyController,
            whoami,
            uploads,
            RewardFunctionController,
            *REWARD_TEST_ROUTES,
            JobController,
            JobOutputController,
            MergeController,
            deployments.DeploymentController,
            deployment_requests.DeploymentRequestController,
            EvaluationController,
            ModelController,
            IntegrationController,
            hub.HuggingFaceController,
            hub.HubPushController,
            WandbController,
            artifacts.tensorboard,
            ProviderSettingsController,
            devices.availability,
            cost.cost_estimate,
            list_audit,
            *QUOTA_ROUTES,
        ],
    )
    app = Litestar(
        route_handlers=[api, artifacts.download, healthz, *dashboard.routers(settings, box.sessions, box.store)],
        # Every write, API and dashboard, is recorded in the audit trail here (veri_box/audit.py).
        middleware=[audit_middleware(box.store)],
        # The Box itself too, for services that take it whole (the Hub push, merges).
        dependencies={**{f.name: _provide(getattr(box, f.name)) for f in fields(box)}, "box": _provide(box)},
        lifespan=[lifespan],
        exception_handlers={HTTPException: exception_handler, Exception: exception_handler},
        request_max_body_size=JSON_BODY_LIMIT,
        openapi_config=OpenAPIConfig(
            title="veri-box", version=__version__, path="/schema", render_plugins=[SwaggerRenderPlugin()]
        ),
        debug=False,
    )
    _document_errors(app)
    return app
