"""API keys: created here or on the command line; only their SHA-256 is stored. Also the routes
that set and read quotas (veri_box/quotas.py holds no routes: the runner imports it)."""

from __future__ import annotations

from typing import Annotated, Literal

import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from . import __version__, quotas
from .auth import ADMIN, MEMBER, caller
from .errors import ApiError, bad_request, conflict, not_found
from .schemas import After, Deleted, ListOf, ReadLimit
from .store import Store

Role = Literal["admin", "member"]


class ApiKey(msgspec.Struct):
    id: str
    name: str
    key_prefix: str
    created_at: str
    last_used_at: str | None
    object: str = "api_key"
    role: str = MEMBER  # admin: keys, settings, quotas, any object; member: its own objects, reads


class NewApiKey(ApiKey):
    key: str = ""


class Me(msgspec.Struct):
    """Who is asking: the key (what `veri whoami` and `veri doctor` read). A box has no user
    accounts or billing; the key stands for its holder."""

    id: str
    name: str
    key_prefix: str
    user_id: str  # the key's id: the identity behind a key on this box
    plan: str
    workspace: dict[str, str]  # `veri whoami` prints it as "NAME (KIND)": the key's name
    box_version: str
    object: str = "me"
    role: str = MEMBER
    quotas: quotas.Limits | None = None  # the limits that apply to this key (its own, else the lab's)
    usage: quotas.Usage | None = None  # this calendar month (UTC) and now


class CreateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Role = MEMBER


class UpdateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    role: Role


class Reassign(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, Meta(min_length=1, max_length=64)]  # the id of the live key that takes them


class Reassigned(msgspec.Struct):
    id: str  # the key whose objects moved
    to: str
    jobs: int
    datasets: int
    reward_functions: int
    deployments: int = 0
    object: str = "reassignment"


def to_api(row: dict) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        role=row.get("role") or MEMBER,
    )


# -- service functions (the API's controller and the dashboard both call these) ---------------


def create(store: Store, name: str, role: str = MEMBER) -> NewApiKey:
    """A new key; the returned struct is the only place its secret ever appears. Only admins
    reach this (the route's rule): a member who could mint keys could multiply the per-key
    quotas, so members ask an admin for another key."""
    if role not in (ADMIN, MEMBER):
        raise bad_request("invalid_value", "role must be 'admin' or 'member'.", "role")
    row, key = store.create_api_key(name.strip() or name, role)
    return NewApiKey(**msgspec.structs.asdict(to_api(row)), key=key)


def list_(store: Store, limit: int = 20, after: str | None = None) -> tuple[list[dict], bool]:
    """Live keys, newest first: (rows, has_more)."""
    return store.list_api_keys(limit, after)


def me(store: Store, key_id: str) -> Me:
    row = store.get_api_key(key_id)
    if row is None:  # revoked between the guard and here
        raise not_found("api key", key_id)
    return Me(
        id=row["id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        user_id=row["id"],
        plan="self-hosted",
        workspace={"id": row["id"], "name": row["name"], "kind": "veri-box API key"},
        box_version=__version__,
        role=row.get("role") or MEMBER,
        quotas=quotas.effective(store, key_id),
        usage=quotas.usage(store, key_id),
    )


def revoke(store: Store, key_id: str) -> None:
    """Revoke a key; its objects keep naming it (an admin may reassign them). The last admin key
    cannot go: nobody would be left to manage the box."""
    row = store.get_api_key(key_id)
    if row is None:
        raise not_found("api key", key_id)
    if row.get("role") == ADMIN and store.count_admin_keys() <= 1:
        raise conflict(
            "last_admin",
            "This is the box's last admin key; create another admin key first "
            "(`veri-box keys create --admin`), then revoke this one.",
        )
    if not store.revoke_api_key(key_id):
        raise not_found("api key", key_id)


def set_role(store: Store, key_id: str, role: str) -> ApiKey:
    """Make a key an admin or a member; the last admin stays one (as for revoking it)."""
    row = store.get_api_key(key_id)
    if row is None:
        raise not_found("api key", key_id)
    if row.get("role") == ADMIN and role != ADMIN and store.count_admin_keys() <= 1:
        raise conflict("last_admin", "This is the box's last admin key; make another key an admin first.")
    store.set_api_key_role(key_id, role)
    return to_api(store.get_api_key(key_id))  # type: ignore[arg-type]


def reassign(store: Store, key_id: str, to: str) -> Reassigned:
    """Move every job, dataset and reward function of `key_id` (live or revoked) to the live key `to`."""
    if store.any_api_key(key_id) is None:
        raise not_found("api key", key_id)
    if store.get_api_key(to) is None:
        raise ApiError(404, "api_key_not_found", f"No live api key with id '{to}' to take the objects.", "to")
    moved = store.reassign(key_id, to)
    return Reassigned(id=key_id, to=to, **moved)


# -- controller --------------------------------------------------------------------------------


class ApiKeyController(Controller):
    path = "/v1/api_keys"
    tags = ["api keys"]

    @litestar.post("/", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def create(self, store: NamedDependency[Store], data: JSONBody[CreateApiKey]) -> NewApiKey:
        """Admins only: `role` is member unless it says admin."""
        return create(store, data.name, data.role)

    @litestar.get("/", sync_to_thread=True)
    def list_(self, store: NamedDependency[Store], limit: ReadLimit = 20, after: After = None) -> ListOf[ApiKey]:
        rows, more = list_(store, limit, after)
        return ListOf(data=[to_api(r) for r in rows], has_more=more)

    @litestar.delete("/{key_id:str}", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def revoke(self, store: NamedDependency[Store], key_id: FromPath[str]) -> Deleted:
        revoke(store, key_id)
        return Deleted(id=key_id, object="api_key")

    @litestar.patch("/{key_id:str}", sync_to_thread=True, opt={"rule": "admin"})
    def update(self, store: NamedDependency[Store], key_id: FromPath[str], data: JSONBody[UpdateApiKey]) -> ApiKey:
        """Change a key's role (admins only)."""
        return set_role(store, key_id, data.role)

    @litestar.post("/{key_id:str}/reassign", status_code=200, sync_to_thread=True, opt={"rule": "admin"})
    def reassign(self, store: NamedDependency[Store], key_id: FromPath[str], data: JSONBody[Reassign]) -> Reassigned:
        """Give every object of a key (a revoked one's too) to another live key."""
        return reassign(store, key_id, data.to)


@litestar.get("/v1/me", tags=["api keys"], sync_to_thread=True)
def whoami(request: Request, store: NamedDependency[Store]) -> Me:
    """The API key of this request: its id, name, role, the quotas that apply and its usage this month."""
    who = caller(request)
    return me(store, who.id if who else request.scope["state"]["api_key_id"])


# -- routes (admins set limits; anyone reads their own through GET /v1/me) ---------------------------


@litestar.put("/v1/api_keys/{key_id:str}/quotas", tags=["quotas"], sync_to_thread=True, opt={"rule": "admin"})
def put_key_quotas(
    store: NamedDependency[Store], key_id: FromPath[str], data: JSONBody[quotas.Limits]
) -> quotas.KeyQuotas:
    """Set one key's limits (a null limit: the lab default applies)."""
    return quotas.set_key(store, key_id, data)


@litestar.get("/v1/api_keys/{key_id:str}/quotas", tags=["quotas"], sync_to_thread=True)
def get_key_quotas(request: Request, store: NamedDependency[Store], key_id: FromPath[str]) -> quotas.KeyQuotas:
    """A key's limits and usage: members may read their own, admins any."""
    who = caller(request)
    if who is not None and not who.is_admin and who.id != key_id:
        raise ApiError(403, "forbidden", "A member key may read only its own quotas (GET /v1/me shows them).")
    if store.get_api_key(key_id) is None:
        raise not_found("api key", key_id)
    return quotas.key_quotas(store, key_id)


@litestar.put("/v1/settings/quotas", tags=["quotas"], sync_to_thread=True, opt={"rule": "admin"})
def put_lab_quotas(store: NamedDependency[Store], data: JSONBody[quotas.LabQuotas]) -> quotas.LabQuotasOut:
    """Set the lab default limits and the box's monthly cloud budget (null: no limit)."""
    return quotas.set_lab(store, data)


@litestar.get("/v1/settings/quotas", tags=["quotas"], sync_to_thread=True)
def get_lab_quotas(store: NamedDependency[Store]) -> quotas.LabQuotasOut:
    return quotas.lab(store)


QUOTA_ROUTES = [put_key_quotas, get_key_quotas, put_lab_quotas, get_lab_quotas]
