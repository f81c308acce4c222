"""The library: datasets (upload, preview rows and clips, delete) and reward functions (upload,
view the source, test on a dataset's rows, delete), each through its noun's service functions."""

from __future__ import annotations

import json

import anyio
from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.response import File

from .. import dataset_files, datasets, paths, reward_tests
from .. import reward_functions as rf_mod
from ..auth import caller_id
from ..errors import ApiError, bad_request
from ..settings import Settings
from ..store import Store
from .rendering import PAGE_SIZE, convert, error_context, render, text_fields


def _datasets_context(store: Store, after: str | None) -> dict:
    rows, more = store.list_datasets(PAGE_SIZE, after)
    busy = store.datasets_in_use([r["id"] for r in rows])
    return {"datasets": rows, "has_more": more, "after": after, "busy": busy}


@get("/datasets", include_in_schema=False, sync_to_thread=True)
def datasets_page(request: Request, store: NamedDependency[Store], after: FromQuery[str | None] = None) -> Response:
    return render(request, "datasets.html", message=None, error=None, **_datasets_context(store, after))


async def upload_dataset(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings]
) -> Response:
    form = await request.form()
    upload = form.get("file")
    name = form.get("name") or None
    error, message = None, None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise bad_request("missing_field", "Choose a file to upload.", "file")
        dataset = await datasets.create(store, settings, upload, name, caller_id(request))
        message = (
            f"Uploaded {dataset['name']}: {dataset['num_rows']} rows, format {dataset['format']} ({dataset['id']})."
        )
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
    context = _datasets_context(store, None)
    return render(request, "_datasets_panel.html", message=message, error=error, **context)


@get("/datasets/{dataset_id:str}/rows", include_in_schema=False, sync_to_thread=True)
def dataset_rows(
    request: Request,
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    dataset_id: FromPath[str],
    offset: FromQuery[int] = 0,
) -> Response:
    dataset = datasets.get(store, dataset_id)
    page = datasets.rows(store, settings, dataset_id, max(0, offset), 20)
    columns: list[str] = []
    for row in page.data:
        for key in row:
            if key not in columns:
                columns.append(key)
    return render(
        request,
        "_dataset_rows.html",
        dataset=dataset,
        rows=page.data,
        columns=columns,
        offset=page.offset,
        has_more=page.has_more,
        preview=lambda v: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False),
    )


@get("/datasets/{dataset_id:str}/files/{path:path}", include_in_schema=False, sync_to_thread=True)
def dataset_file(
    store: NamedDependency[Store], settings: NamedDependency[Settings], dataset_id: FromPath[str], path: FromPath[str]
) -> File:
    """A clip of a video dataset, for its preview."""
    dataset = datasets.get(store, dataset_id)
    root = (paths.dataset_dir(settings.data_dir, dataset_id) / dataset["path"]).resolve()
    target = (root / path.lstrip("/")).resolve()
    # Only the clips, never another file of an upload, and never sniffed into something else.
    if (
        not target.is_relative_to(root)
        or not target.is_file()
        or not target.name.lower().endswith(dataset_files.VIDEO_EXTENSIONS)
    ):
        raise ApiError(404, "file_not_found", "This file is not a clip of the dataset.")
    return File(
        target,
        filename=target.name,
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@post(
    "/datasets/{dataset_id:str}/delete",
    include_in_schema=False,
    sync_to_thread=True,
    opt={"rule": "owner", "owns": "dataset"},
)
def delete_dataset(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], dataset_id: FromPath[str]
) -> Response:
    error, message = None, None
    try:
        datasets.delete(store, settings, dataset_id)
        message = f"Deleted dataset {dataset_id}."
    except ApiError as exc:
        error = error_context(exc)
    return render(request, "_datasets_panel.html", message=message, error=error, **_datasets_context(store, None))


# -- reward functions --------------------------------------------------------------------------


def _reward_functions_context(store: Store, after: str | None) -> dict:
    rows, more = store.list_reward_functions(PAGE_SIZE, after)
    busy = store.reward_functions_in_use([r["id"] for r in rows])
    return {"reward_functions": rows, "has_more": more, "after": after, "busy": busy}


@get("/reward-functions", include_in_schema=False, sync_to_thread=True)
def reward_functions_page(
    request: Request, store: NamedDependency[Store], after: FromQuery[str | None] = None
) -> Response:
    return render(request, "reward_functions.html", message=None, error=None, **_reward_functions_context(store, after))


@post("/reward-functions", include_in_schema=False, opt={"rule": "member"})
async def upload_reward_function(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings]
) -> Response:
    form = await request.form()
    upload = form.get("file")
    error, message = None, None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise bad_request("missing_field", "Choose a .py file to upload.", "file")
        raw = await upload.read()
        created = await anyio.to_thread.run_sync(
            lambda: rf_mod.create(
                store,
                settings,
                str(form.get("name") or ""),
                upload.filename,
                raw,
                str(form.get("format") or "trl"),
                caller_id(request),
            )
        )
        message = f"Uploaded {created['name']}: calls {created['entrypoint']}() ({created['id']})."
    except (ApiError, HTTPException) as exc:
        error = error_context(exc)
    return render(
        request, "_reward_functions_panel.html", message=message, error=error, **_reward_functions_context(store, None)
    )


@get("/reward-functions/{rf_id:str}/source", include_in_schema=False, sync_to_thread=True)
def reward_function_source(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
) -> Response:
    row = rf_mod.get(store, rf_id)
    source = rf_mod.source(store, settings, rf_id).decode("utf-8", errors="replace")
    return render(request, "_reward_source.html", rf=row, source=source)


@post(
    "/reward-functions/{rf_id:str}/delete",
    include_in_schema=False,
    sync_to_thread=True,
    opt={"rule": "owner", "owns": "reward_function"},
)
def delete_reward_function(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings], rf_id: FromPath[str]
) -> Response:
    error, message = None, None
    try:
        rf_mod.delete(store, settings, rf_id)
        message = f"Deleted reward function {rf_id}."
    except ApiError as exc:
        error = error_context(exc)
    return render(
        request, "_reward_functions_panel.html", message=message, error=error, **_reward_functions_context(store, None)
    )


# -- reward test runs: a form and a results fragment, reusable wherever a reward function is chosen --


def _reward_test_datasets(store: Store) -> list[dict]:
    rows, _ = store.list_datasets(100, None)
    return [d for d in rows if "grpo" in dataset_files.compatible_methods(d["format"])]


@get("/reward-functions/test-form", include_in_schema=False, sync_to_thread=True)
def reward_test_form(
    request: Request,
    store: NamedDependency[Store],
    reward_function_id: FromQuery[str | None] = None,
    dataset_id: FromQuery[str | None] = None,
    source_selector: FromQuery[str | None] = None,
) -> Response:
    """The test form for an uploaded reward function, or, with `source_selector` (a CSS selector
    such as `#reward_source`), for the source field of the page the form is put in (the new-job
    form's inline source), sent along with the form."""
    rf = rf_mod.get(store, reward_function_id) if reward_function_id else None
    return render(
        request,
        "_reward_test_form.html",
        rf=rf,
        datasets=_reward_test_datasets(store),
        dataset_id=dataset_id,
        max_rows=reward_tests.MAX_ROWS,
        default_rows=reward_tests.DEFAULT_ROWS,
        source_selector=source_selector,
    )


def _number(form: dict[str, str], key: str, kind: type, default: float) -> float:
    try:
        return kind(form.get(key) or default)
    except ValueError:
        raise bad_request("invalid_value", f"'{key}' must be a number.", key) from None


def _test_request(form: dict[str, str]) -> reward_tests.RewardTestRequest:
    """The form's fields as the API's request: typed completions one per line."""
    typed = [line for line in form.get("completions", "").splitlines() if line.strip()]
    fields = {
        "dataset_id": form.get("dataset_id") or None,
        "rows": None if typed else _number(form, "rows", int, reward_tests.DEFAULT_ROWS),
        "completions": typed or None,
        "timeout_s": _number(form, "timeout_s", float, 10),
    }
    # `reward_source` is the new-job form's name for the same field.
    source = form.get("source") or form.get("reward_source") or ""
    if source.strip():
        return convert({**fields, "source": source}, reward_tests.InlineRewardTestRequest)
    return convert(fields, reward_tests.RewardTestRequest)


@post("/reward-functions/test", include_in_schema=False, opt={"rule": "member"})
async def run_reward_test(
    request: Request, store: NamedDependency[Store], settings: NamedDependency[Settings]
) -> Response:
    """A test run of the form's reward function (an uploaded one by id, or a source typed in the
    page), answered as the results fragment; its errors as the API's, in the fragment."""
    form = await text_fields(request)
    result, error = None, None
    try:
        body = _test_request(form)
        rf_id = form.get("reward_function_id", "")
        if isinstance(body, reward_tests.InlineRewardTestRequest):
            result = await anyio.to_thread.run_sync(reward_tests.run_inline, store, settings, body)
        elif rf_id:
            result = await anyio.to_thread.run_sync(reward_tests.run_stored, store, settings, rf_id, body)
        else:
            raise bad_request("missing_field", "Choose a reward function or write its source.", "source")
    except ApiError as exc:
        error = error_context(exc)
    return render(request, "_reward_test_result.html", result=result, error=error)
