"""Datasets: uploads validated row by row, stored under DATA_DIR/datasets/ID/."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import litestar
import msgspec
from litestar import Controller, Request
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, Parameter

from . import dataset_files, paths
from .auth import Owner, caller_id, owner
from .errors import bad_request, conflict, not_found
from .schemas import After, Deleted, ListOf, ReadLimit
from .settings import Settings
from .store import Conflict, Store, new_id, now

COPY_CHUNK = 1 << 20


class Dataset(msgspec.Struct):
    id: str
    name: str
    format: str
    num_rows: int
    columns: list[str]
    bytes: int
    created_at: str
    object: str = "dataset"
    source_type: str = "upload"
    source_uri: str | None = None
    huggingface_dataset: str | None = None
    created_by: Owner | None = None  # the key that uploaded it (null: before roles existed)


class DatasetUpload(msgspec.Struct):
    file: UploadFile
    name: str | None = None


class Rows(msgspec.Struct):
    data: list[dict[str, Any]]
    offset: int
    has_more: bool
    object: str = "list"


def to_api(row: dict) -> Dataset:
    return Dataset(
        id=row["id"],
        name=row["name"],
        format=row["format"],
        num_rows=row["num_rows"],
        columns=row["columns"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        created_by=owner(row),
    )


SPOOL_PREFIX = "upload-"
STAGING_PREFIX = ".staging-"


async def _spool(upload: UploadFile, out: BinaryIO, limit: int) -> int:
    """Copy the upload to a file of ours (the inspector reads it by path), counting bytes."""
    size = 0
    while chunk := await upload.read(COPY_CHUNK):
        size += len(chunk)
        if size > limit:
            raise bad_request(
                "file_too_large",
                f"Datasets are limited to {limit // 2**20} MiB on this box (veri-box serve --max-upload-mb).",
                "file",
            )
        await asyncio.to_thread(out.write, chunk)
    await asyncio.to_thread(out.flush)
    return size


def cleanup_leftovers(data_dir: Path) -> int:
    """Remove the spool files and staging directories of uploads a crash interrupted; call it at
    start-up, before the server takes uploads (a live upload's files look just the same).
    Returns how many it removed."""
    staging = paths.dataset_dir(data_dir, f"{STAGING_PREFIX}*")
    leftovers = [*paths.spool_dir(data_dir).glob(f"{SPOOL_PREFIX}*"), *staging.parent.glob(staging.name)]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(leftovers)


def store_upload(
    store: Store, settings: Settings, name: str, filename: str, upload: Path, size: int, created_by: str | None = None
) -> dict:
    """Inspect the upload into a staging directory and publish it with one rename, so a
    failure at any point leaves nothing behind."""
    dataset_id = new_id("ds_")
    final = paths.dataset_dir(settings.data_dir, dataset_id)
    staging = final.with_name(f"{STAGING_PREFIX}{dataset_id}")
    staging.mkdir(parents=True)
    try:
        limits = dataset_files.Limits.for_upload(settings.max_upload_bytes)
        inspected = dataset_files.inspect_upload(upload, filename, staging, limits)
        staging.rename(final)
    except dataset_files.DatasetError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise bad_request(err.code, err.message, err.param) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    row = {
        "id": dataset_id,
        "name": name,
        "format": inspected.format,
        "num_rows": inspected.num_rows,
        "columns": inspected.columns,
        "bytes": size,
        "filename": filename,
        "path": inspected.stored_path,
        "created_at": now(),
        "created_by": created_by,
    }
    try:
        return store.insert_dataset(row)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


# -- service functions (the API's controller and the dashboard both call these) ---------------


def get(store: Store, dataset_id: str) -> dict:
    row = store.get_dataset(dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


async def create(
    store: Store, settings: Settings, upload: UploadFile, name: str | None = None, created_by: str | None = None
) -> dict:
    """Spool an upload (within the box's size limit), inspect it row by row and store it; the
    upload is closed either way."""
    try:
        filename = Path(upload.filename or "upload").name[:200]
        name = (name or Path(filename).stem).strip()
        if not name or len(name) > 200:
            raise bad_request("invalid_name", "name must be 1 to 200 characters.", "name")
        spool_dir = paths.spool_dir(settings.data_dir)
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, spooled = tempfile.mkstemp(dir=spool_dir, prefix=SPOOL_PREFIX)
        # The spool file is ours from here on: whatever fails below (too large, a full disk, a
        # bad file) it goes.
        try:
            with open(fd, "wb") as out:
                size = await _spool(upload, out, settings.max_upload_bytes)
            if size == 0:
                raise bad_request("empty_file", "The uploaded file is empty.", "file")
            return await asyncio.to_thread(
                store_upload, store, settings, name, filename, Path(spooled), size, created_by
            )
        finally:
            Path(spooled).unlink(missing_ok=True)
    finally:
        await upload.close()


def rows(store: Store, settings: Settings, dataset_id: str, offset: int = 0, limit: int = 20) -> Rows:
    """A page of the dataset's rows, for previews."""
    row = get(store, dataset_id)
    page = dataset_files.preview_rows(
        paths.dataset_dir(settings.data_dir, dataset_id), row["format"], row["path"], offset, limit
    )
    return Rows(data=page, offset=offset, has_more=offset + len(page) < row["num_rows"])


def delete(store: Store, settings: Settings, dataset_id: str) -> None:
    """Delete a dataset no unfinished job uses, and its files."""
    get(store, dataset_id)
    try:
        store.delete_dataset(dataset_id)
    except Conflict as busy:
        raise conflict(
            "dataset_in_use",
            f"Dataset {dataset_id} is used by job {busy}, which has not finished; cancel it or wait for it to end.",
        ) from None
    shutil.rmtree(paths.dataset_dir(settings.data_dir, dataset_id), ignore_errors=True)


# -- controller --------------------------------------------------------------------------------


class DatasetController(Controller):
    path = "/v1/datasets"
    tags = ["datasets"]

    @litestar.post("/", status_code=200, opt={"rule": "member"})
    async def create(
        self,
        request: Request,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        data: Annotated[DatasetUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> Dataset:
        """Upload JSONL, Parquet, or a .zip of videos with metadata.jsonl; validated row by row."""
        return to_api(await create(store, settings, data.file, data.name, caller_id(request)))

    @litestar.get("/", sync_to_thread=True)
    def list_(self, store: NamedDependency[Store], limit: ReadLimit = 20, after: After = None) -> ListOf[Dataset]:
        found, more = store.list_datasets(limit, after)
        return ListOf(data=[to_api(r) for r in found], has_more=more)

    @litestar.get("/{dataset_id:str}", sync_to_thread=True)
    def retrieve(self, store: NamedDependency[Store], dataset_id: FromPath[str]) -> Dataset:
        return to_api(get(store, dataset_id))

    @litestar.get("/{dataset_id:str}/rows", sync_to_thread=True)
    def rows(
        self,
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        dataset_id: FromPath[str],
        limit: ReadLimit = 20,
        offset: Annotated[int, Parameter(ge=0, le=2**31)] = 0,
    ) -> Rows:
        """A page of the dataset's rows, for previews."""
        return rows(store, settings, dataset_id, offset, limit)

    @litestar.delete(
        "/{dataset_id:str}", status_code=200, sync_to_thread=True, opt={"rule": "owner", "owns": "dataset"}
    )
    def remove(
        self, store: NamedDependency[Store], settings: NamedDependency[Settings], dataset_id: FromPath[str]
    ) -> Deleted:
        delete(store, settings, dataset_id)
        return Deleted(id=dataset_id, object="dataset")
