"""Domain errors and the one mapper that turns any exception into API.md's error shape."""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import sqlite3
from collections import deque

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

log = logging.getLogger("veri_box")

TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
}


class ApiError(Exception):
    """An error a client can act on; `status` picks the HTTP status and error type."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def bad_request(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param)


def not_found(kind: str, id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"{kind.replace(' ', '_')}_not_found", f"No {kind} with id '{id}'.", param)


def conflict(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(409, code, message, param)


class ErrorDetail(msgspec.Struct):
    type: str
    code: str
    message: str
    param: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    type_ = TYPES_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"type": type_, "code": code, "message": message, "param": param}}


# Bodies other than uploads are small; uploads get their own, configurable limit (app.py uses it).
JSON_BODY_LIMIT = 8 * 1024 * 1024
CLIENT_DISCONNECTED = "client disconnected prematurely"  # litestar.connection.Request.stream()

OUT_OF_RANGE = "Number out of range"
UNKNOWN_FIELD = "Object contains unknown field"
MISSING_FIELD = "Object missing required field"
_NAMED_FIELD = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def split_validation_error(err: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's one line as (message, param): 'Expected `int` >= 1 - at `$.gpu.count`' gives
    ('Expected `int` >= 1', 'gpu.count')."""
    message, _, where = str(err).partition(" - at `$")
    return message, field_param(message, where.rstrip("`").lstrip(".") or None)


def field_param(message: str, path: str | None) -> str | None:
    """The field a message is about: its path, or for an unknown or missing field, that field
    under the path (msgspec names it in the message, not in the path)."""
    named = _NAMED_FIELD.match(message)
    if named is None:
        return path
    return f"{path}.{named.group(1)}" if path else named.group(1)


def validation_error(message: str, param: str | None) -> ApiError:
    """A msgspec failure as the API reports it; "unknown field" and "missing field" get their own codes."""
    if message.startswith(UNKNOWN_FIELD):
        return bad_request("unknown_field", f"Unknown field '{param}'.", param)
    if message.startswith(MISSING_FIELD):
        return bad_request("missing_field", f"The field '{param}' is required.", param)
    where = f" for '{param}'" if param else ""
    return bad_request("invalid_value", f"Invalid value{where}: {message}.", param)


def _decode_failure(detail: str) -> ApiError | None:
    """msgspec's complaints about a body it could not decode: malformed or cut short is
    `invalid_json`; a number too large for a float is `invalid_value` (its field is found later)."""
    if "malformed" in detail.lower() or "truncated" in detail.lower():
        return bad_request("invalid_json", f"The request body is not valid JSON: {detail}.")
    if detail.startswith(OUT_OF_RANGE):
        return bad_request("invalid_value", f"A number in the request body is out of range ({detail}).")
    return None


def _from_validation(exc: ValidationException) -> ApiError:
    """Litestar reports msgspec failures as a list of {message, key, source}, already split;
    the first one names `param`."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    if not extra:
        detail = exc.detail or "The request body could not be read."
        return _decode_failure(detail) or bad_request("invalid_request", detail)
    first = extra[0] if isinstance(extra[0], dict) else {"message": str(extra[0])}
    message = str(first.get("message", "invalid value"))
    key = first.get("key")
    key = None if key in (None, "data", "") else str(key)
    return validation_error(message, field_param(message, key))


_FRAMEWORK_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
}


def insufficient_storage(what: str) -> ApiError:
    return ApiError(
        507,
        "insufficient_storage",
        f"The box's disk is full ({what}); nothing was changed. Free space on the data directory's disk and retry.",
    )


def _is_disk_full(exc: BaseException) -> str | None:
    """What ran out, if `exc` is the disk (or quota) running full, else None."""
    if isinstance(exc, sqlite3.OperationalError) and "database or disk is full" in str(exc):
        return "the database could not grow"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "a file could not be written"
    return None


def _too_deep(exc: BaseException) -> bool:
    """A RecursionError of the JSON decoders (msgspec, json), not of our own code: a bug there
    must stay a 500."""
    return isinstance(exc, RecursionError) and any(
        phrase in str(exc) for phrase in ("while deserializing", "decoding a JSON")
    )


def too_large(multipart: bool) -> ApiError:
    """An oversize body: uploads (multipart) have their own limits; other bodies are JSON."""
    if multipart:
        return bad_request(
            "file_too_large",
            "The upload is larger than this box accepts: datasets up to `veri-box serve --max-upload-mb`, "
            "reward functions up to 1 MiB.",
            "file",
        )
    return bad_request(
        "body_too_large", f"JSON request bodies are limited to {JSON_BODY_LIMIT // 2**20} MiB on this box; send less."
    )


def to_api_error(exc: Exception, multipart: bool = True) -> ApiError:
    """The API's error for any exception; `multipart` says whether the request was an upload
    (an oversize body is then `file_too_large`, else `body_too_large`)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException) and exc.detail == CLIENT_DISCONNECTED:
        # The client went away (e.g. an aborted upload): nothing failed here, and nobody reads the answer.
        log.info("a client disconnected before sending its whole request body")
        return bad_request("invalid_request", "The client disconnected before sending the whole request body.")
    if full := _is_disk_full(exc):
        log.error("disk full: %s (%s)", full, exc)
        return insufficient_storage(full)
    if _too_deep(exc):
        return bad_request(
            "json_too_deep", "The request body nests arrays or objects too deeply; no field of the API needs that."
        )
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = exc.detail or ""
        if status == 413 or "Request Entity Too Large" in detail:
            # API.md: an oversize body is a 400 like every other bad input.
            return too_large(multipart)
        if status == 400 and (decoded := _decode_failure(detail)):
            return decoded
        if status == 404:
            return ApiError(404, "not_found", "There is no such route on this server.")
        if status == 405:
            return ApiError(405, "method_not_allowed", f"{detail or 'Method not allowed'} for this route.")
        if 400 <= status < 500:
            code = _FRAMEWORK_CODES.get(status, "invalid_request")
            return ApiError(status, code, detail or "The request could not be processed.")
    log.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", "The server failed to handle this request; see the server log.")


def _number_out_of_range(body: object) -> str | None:
    """The path of the first number too large for a float in a JSON body (Python's json reads
    it as infinity), as `param` names fields: msgspec's message hides dict keys."""
    if not isinstance(body, bytes) or len(body) > JSON_BODY_LIMIT:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    todo: deque[tuple[str, object]] = deque([("", value)])
    while todo:
        path, item = todo.popleft()
        if isinstance(item, float) and math.isinf(item):
            return path or None
        if isinstance(item, dict):
            todo.extend((f"{path}.{key}" if path else str(key), child) for key, child in item.items())
        elif isinstance(item, list):
            todo.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _with_param(err: ApiError, request: Request) -> ApiError:
    """A number out of range names its field, as every other bad value does."""
    if err.code != "invalid_value" or err.param is not None or OUT_OF_RANGE not in err.message:
        return err
    param = _number_out_of_range(getattr(request, "_body", None))
    if param is None:
        return err
    code = "invalid_hyperparameter" if param.startswith("hyperparameters.") else "invalid_value"
    return bad_request(code, f"'{param}' is out of range: a number this large is not a finite float.", param)


def exception_handler(request: Request, exc: Exception) -> Response:
    multipart = request.headers.get("content-type", "").startswith("multipart/")
    err = _with_param(to_api_error(exc, multipart), request)
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if err.status == 405 and isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    return Response(
        error_body(err.status, err.code, err.message, err.param),
        status_code=err.status,
        headers=headers,
        media_type="application/json",
    )
