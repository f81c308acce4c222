"""API keys: created here or on the command line; only their SHA-256 is stored."""

from __future__ import annotations

from typing import Annotated

import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from . import __version__
from .errors import not_found
from .schemas import After, Deleted, ListOf, ReadLimit
from .store import Store


class ApiKey(msgspec.Struct):
    id: str
    name: str
    key_prefix: str
    created_at: str
    last_used_at: str | None
    object: str = "api_key"


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


class CreateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]


def to_api(row: dict) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


# -- service functions (the API's controller and the dashboard both call these) ---------------


def create(store: Store, name: str) -> NewApiKey:
    """A new key; the returned struct is the only place its secret ever appears."""
    row, key = store.create_api_key(name.strip() or name)
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
    )


def revoke(store: Store, key_id: str) -> None:
    if not store.revoke_api_key(key_id):
        raise not_found("api key", key_id)


# -- controller --------------------------------------------------------------------------------


class ApiKeyController(Controller):
    path = "/v1/api_keys"
    tags = ["api keys"]

    @litestar.post("/", status_code=200, sync_to_thread=True)
    def create(self, store: NamedDependency[Store], data: JSONBody[CreateApiKey]) -> NewApiKey:
        return create(store, data.name)

    @litestar.get("/", sync_to_thread=True)
    def list_(self, store: NamedDependency[Store], limit: ReadLimit = 20, after: After = None) -> ListOf[ApiKey]:
        rows, more = list_(store, limit, after)
        return ListOf(data=[to_api(r) for r in rows], has_more=more)

    @litestar.delete("/{key_id:str}", status_code=200, sync_to_thread=True)
    def revoke(self, store: NamedDependency[Store], key_id: FromPath[str]) -> Deleted:
        revoke(store, key_id)
        return Deleted(id=key_id, object="api_key")


@litestar.get("/v1/me", tags=["api keys"], sync_to_thread=True)
def whoami(request: Request, store: NamedDependency[Store]) -> Me:
    """The API key of this request: its id and name (what `veri whoami` shows)."""
    return me(store, request.scope["state"]["api_key_id"])
