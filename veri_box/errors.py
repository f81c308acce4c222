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


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def _from_validation(exc: ValidationException) -> ApiError:
    """Litestar reports msgspec failures as a list of {message, key, source}; name the
    first one as `param` and turn "unknown field" into its own code."""
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
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        param = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        return bad_request("unknown_field", f"Unknown field '{param}'.", param)
    if message.startswith("Object missing required field") and "`" in message:
        field = message.split("`")[1]
        param = f"{key}.{field}" if key else field
        return bad_request("missing_field", f"The field '{param}' is required.", param)
    where = f" for '{key}'" if key else ""
    return bad_request("invalid_value", f"Invalid value{where}: {message}.", key)


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
