"""Domain errors and the one mapper that turns any exception into API.md's error shape."""

from __future__ import annotations

import logging
import re

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


def _from_validation(exc: ValidationException) -> ApiError:
    """Litestar reports msgspec failures as a list of {message, key, source}, already split;
    the first one names `param`."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    if not extra:
        detail = exc.detail or "The request body could not be read."
        if "JSON is malformed" in detail or "malformed" in detail.lower():
            return bad_request("invalid_json", f"The request body is not valid JSON ({detail}).")
        return bad_request("invalid_request", detail)
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


def to_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = exc.detail or ""
        if status == 413 or "Request Entity Too Large" in detail:
            # API.md: an oversize upload is a 400 like every other bad input.
            return bad_request(
                "file_too_large",
                "The request body is larger than this box accepts (see `veri-box serve --max-upload-mb`).",
                "file",
            )
        if status == 400 and "malformed" in detail.lower():
            return bad_request("invalid_json", f"The request body is not valid JSON: {detail}.")
        if status == 404:
            return ApiError(404, "not_found", "There is no such route on this server.")
        if status == 405:
            return ApiError(405, "method_not_allowed", f"{detail or 'Method not allowed'} for this route.")
        if 400 <= status < 500:
            code = _FRAMEWORK_CODES.get(status, "invalid_request")
            return ApiError(status, code, detail or "The request could not be processed.")
    log.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", "The server failed to handle this request; see the server log.")


def exception_handler(request: Request, exc: Exception) -> Response:
    err = to_api_error(exc)
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
