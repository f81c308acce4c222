"""Reward functions: Python files checked by reading their syntax tree, never imported here.

The trainer process is the only place user code runs; the server only proves the file
parses and defines a function TRL can call as `f(prompts=..., completions=..., **columns)`.
"""

from __future__ import annotations

import ast
import hashlib
from typing import Annotated

import anyio
import litestar
import msgspec
from litestar import Controller, Request, Response
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath

from . import paths, python_source
from . import store as store_mod
from .auth import Owner, caller_id, owner
from .errors import bad_request, conflict, not_found
from .schemas import After, Deleted, ListOf, ReadLimit
from .settings import Settings
from .store import Store

MAX_SOURCE_BYTES = 1024 * 1024
FORMATS = ("trl",)


def find_entrypoint(source: str, param: str = "file") -> str:
    """The name of the function the trainer will call: `reward`, or else the only public
    top-level function. Raises a 400 naming the problem and its line."""
    try:
        tree = python_source.parse(source)
    except SyntaxError as err:
        raise bad_request(
            "invalid_reward_function", f"The reward function has a syntax error on line {err.lineno}: {err.msg}.", param
        ) from None
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    by_name = {f.name: f for f in functions}
    if "reward" in by_name:
        func = by_name["reward"]
    else:
        public = [f for f in functions if not f.name.startswith("_")]
        if len(public) != 1:
            found = ", ".join(f.name for f in public) or "none"
            raise bad_request(
                "invalid_reward_function",
                "Define `def reward(completions, **kwargs) -> list[float]` (or exactly one public "
                f"top-level function); public functions found: {found}.",
                param,
            )
        func = public[0]
    _check_signature(func, param)
    return func.name


def _check_signature(func: ast.FunctionDef | ast.AsyncFunctionDef, param: str) -> None:
    args = func.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if isinstance(func, ast.AsyncFunctionDef):
        raise bad_request(
            "invalid_reward_function",
            f"`{func.name}` (line {func.lineno}) is async; reward functions must be plain functions.",
            param,
        )
    # TRL passes everything by keyword: prompts, completions, completion_ids and each dataset column.
    if "completions" not in names or args.kwarg is None:
        raise bad_request(
            "invalid_reward_function",
            f"`{func.name}` (line {func.lineno}) must accept `completions` and `**kwargs`: TRL calls it as "
            f"{func.name}(prompts=..., completions=..., completion_ids=..., **dataset_columns).",
            param,
        )
    if any(a.arg in ("completions",) for a in args.posonlyargs):
        raise bad_request(
            "invalid_reward_function",
            f"`completions` must not be positional-only in `{func.name}`; TRL passes it by keyword.",
            param,
        )


class RewardFunction(msgspec.Struct):
    id: str
    name: str
    format: str
    entrypoint: str
    sha256: str
    created_at: str
    object: str = "reward_function"
    created_by: Owner | None = None  # the key that uploaded it (null: before roles existed)


def to_api(row: dict) -> RewardFunction:
    return RewardFunction(
        id=row["id"],
        name=row["name"],
        format=row["format"],
        entrypoint=row["entrypoint"],
        sha256=row["sha256"],
        created_at=row["created_at"],
        created_by=owner(row),
    )


def prepare(
    settings: Settings, name: str, source: str, fmt: str = "trl", inline: bool = False, param: str = "file"
) -> dict:
    """Check `source` and write it under the data dir; returns the row to insert."""
    entrypoint = find_entrypoint(source, param)
    rf_id = store_mod.new_id("rf_")
    path = paths.reward_function_file(settings.data_dir, rf_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {
        "id": rf_id,
        "name": name,
        "format": fmt,
        "entrypoint": entrypoint,
        "sha256": hashlib.sha256(data).hexdigest(),
        "path": str(path.relative_to(settings.data_dir)),
        "inline": int(inline),
        "created_at": store_mod.now(),
    }


def decode_source(raw: bytes, param: str = "file") -> str:
    if not raw.strip():
        raise bad_request("empty_file", "The reward function file is empty.", param)
    if len(raw) > MAX_SOURCE_BYTES:
        raise bad_request("file_too_large", "Reward function files are limited to 1 MiB.", param)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise bad_request(
            "invalid_encoding", f"The reward function is not UTF-8 text (byte {err.start}).", param
        ) from None


class RewardFunctionUpload(msgspec.Struct):
    name: str
    file: UploadFile
    format: str = "trl"


# -- service functions (the API's controller and the dashboard both call these) ---------------


def get(store: Store, rf_id: str) -> dict:
    row = store.get_reward_function(rf_id)
    if row is None:
        raise not_found("reward function", rf_id)
    return row


def create(
    store: Store,
    settings: Settings,
    name: str,
    filename: str,
    raw: bytes,
    fmt: str = "trl",
    created_by: str | None = None,
) -> dict:
    """Check an uploaded .py file (name, format, encoding, entrypoint) and store it."""
    name = name.strip()
    if not name or len(name) > 200:
        raise bad_request("invalid_name", "name must be 1 to 200 characters.", "name")
    if fmt not in FORMATS:
        raise bad_request("invalid_format", f"format must be one of: {', '.join(FORMATS)}.", "format")
    if not filename.endswith(".py"):
        raise bad_request("invalid_file_type", "Upload the reward function as a .py file.", "file")
    row = prepare(settings, name, decode_source(raw), fmt)
    return store.insert_reward_function({**row, "created_by": created_by})


def source(store: Store, settings: Settings, rf_id: str) -> bytes:
    return (settings.data_dir / get(store, rf_id)["path"]).read_bytes()


def delete(store: Store, settings: Settings, rf_id: str) -> None:
    """Delete a reward function no unfinished job uses, and its file."""
    row = get(store, rf_id)
    try:
        store.delete_reward_function(rf_id)
    except store_mod.Conflict as busy:
        raise conflict(
            "reward_function_in_use",
            f"Reward function {rf_id} is used by job {busy}, which has not finished; cancel it or wait for it to end.",
        ) from None
    # Jobs that ran keep their own copy in their job directory, so the file can go.
    (settings.data_dir / row["path"]).unlink(missing_ok=True)


# -- controller --------------------------------------------------------------------------------


class RewardFunctionController(Controller):
    path = "/v1/reward_functions"
    tags = ["reward functions"]

    @litestar.post("/", status_code=200, request_max_body_size=2 * MAX_SOURCE_BYTES, opt={"rule": "member"})
    async def create(
        self,
        request: Request,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        data: Annotated[RewardFunctionUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> RewardFunction:
        raw = await data.file.read()
        row = await anyio.to_thread.run_sync(
            create, store, settings, data.name, data.file.filename or "", raw, data.format, caller_id(request)
        )
        return to_api(row)

    # The handlers below read SQLite and files: in a worker thread, never on the event loop.
    @litestar.get("/", sync_to_thread=True)
    def list_(
        self, store: NamedDependency[Store], limit: ReadLimit = 20, after: After = None
    ) -> ListOf[RewardFunction]:
        rows, more = store.list_reward_functions(limit, after)
        return ListOf(data=[to_api(r) for r in rows], has_more=more)

    @litestar.get("/{rf_id:str}", sync_to_thread=True)
    def retrieve(self, store: NamedDependency[Store], rf_id: FromPath[str]) -> RewardFunction:
        return to_api(get(store, rf_id))

    @litestar.get("/{rf_id:str}/source", media_type="text/x-python", sync_to_thread=True)
    def source(
        self, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
    ) -> Response[bytes]:
        return Response(source(store, settings, rf_id), media_type="text/x-python; charset=utf-8")

    @litestar.delete(
        "/{rf_id:str}", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "reward_function"}
    )
    def remove(
        self, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
    ) -> Deleted:
        delete(store, settings, rf_id)
        return Deleted(id=rf_id, object="reward_function")
