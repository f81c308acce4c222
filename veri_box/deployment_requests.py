"""A deployment's request log and what it adds up to: `GET /v1/deployments/{id}/requests`,
`/metrics` and `/metrics/timeseries`, the routes veri-sdk's `deployments.requests`, `.metrics` and
`.metrics_timeseries` (and `veri deployments requests` / `metrics`) read.

Every chat request to an existing deployment leaves one row (migration m016): when it came, how it
ended (status code, finish reason, or the error's code and message), its tokens, and its times
measured at the box's proxy from the moment the request arrived: first byte sent, first token
sent (streams), the whole answer, and the time per output token after the first. Requests refused
before the model saw them (a bad body, a deployment still loading) are logged too: they are what a
user looks for when a client fails. Bodies are never stored. The row is written once the answer
is over, off the request's path (a SQLite commit would otherwise add to every first token), in
one transaction with the deployment's lifetime totals (total_requests counts the requests that
reached the model), its sums per hour (what the last day's counts and hourly or daily series
read) and last_request_at, which the idle stop reads. Rows are kept ROWS_KEPT_S (7 days: a
deployment at 12 requests/s writes about 460 MB of them a day), the hourly sums HOURS_KEPT_S.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from .errors import bad_request, not_found
from .settings import Settings
from .store import Store, new_id, now, seconds_between

ROWS_KEPT_S = 7 * 24 * 3600
HOURS_KEPT_S = 90 * 24 * 3600
LATENCY_SAMPLE = 10_000  # the newest requests of the last 24 h that percentiles are taken over
MAX_BUCKETS = 500
INTERVALS = {"minute": 60, "five_minutes": 300, "hour": 3600, "day": 86400}
DAY_MS = 24 * 3600 * 1000

_writing: set[asyncio.Future] = set()  # the rows still being written (held, not collected)


class Recorder:
    """One chat request, from its arrival at the proxy to the end of its answer."""

    def __init__(self, store: Store, deployment_id: str, request_bytes: int | None, streamed: bool, n: int):
        self.store = store
        self._t0 = time.perf_counter()
        self._first_byte: float | None = None
        self._first_token: float | None = None
        self._closed = False
        self.reached_model = False  # counted in the deployment's total_requests
        self.n = max(n, 1)
        arrived = datetime.now(UTC)
        self.row: dict[str, Any] = {
            "id": new_id("req_"),
            "deployment_id": deployment_id,
            "at_ms": int(arrived.timestamp() * 1000),
            "created_at": arrived.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",  # now()'s form, of the same instant
            "status_code": 200,
            "streamed": streamed,
            "prompt_tokens": None,
            "completion_tokens": None,
            "usage_reported": False,
            "request_bytes": request_bytes,
            "response_bytes": 0,
            "finish_reason": None,
            "error_category": None,
            "error_message": None,
            "client_disconnected": False,
        }

    def _ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self._t0) * 1000, 3)

    def sent(self, data: bytes) -> None:
        if self._first_byte is None:
            self._first_byte = time.perf_counter()
        self.row["response_bytes"] += len(data)

    def token(self) -> None:
        """The chunk about to go out carries the answer's first text (a stream's TTFT)."""
        if self._first_token is None:
            self._first_token = time.perf_counter()

    def usage(self, usage: dict | None) -> None:
        if usage:
            self.row.update(
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                usage_reported=True,
            )

    def finished(self, reason: str | None) -> None:
        if reason and self.row["finish_reason"] is None:
            self.row["finish_reason"] = reason

    def failed(self, status: int, code: str, message: str) -> None:
        self.row.update(status_code=status, error_category=code, error_message=message[:2000])

    def close(self, disconnected: bool = False) -> None:
        """The answer is over (or the client went away): the row, written off this path."""
        if self._closed:
            return
        self._closed = True
        end = time.perf_counter()
        row = self.row
        row["client_disconnected"] = disconnected
        row["completed_at"] = now()
        row["e2e_latency_ms"] = self._ms(end)
        row["ttfb_ms"] = self._ms(self._first_byte or end)  # a JSON answer goes out whole, at the end
        row["ttft_ms"] = self._ms(self._first_token)
        row["generation_ms"] = None if self._first_token is None else round((end - self._first_token) * 1000, 3)
        per_choice = (row["completion_tokens"] or 0) / self.n
        row["tpot_ms"] = (
            round(row["generation_ms"] / (per_choice - 1), 3)
            if row["generation_ms"] is not None and per_choice > 1
            else None
        )
        future = asyncio.ensure_future(
            anyio.to_thread.run_sync(self.store.add_deployment_request, row, self.reached_model)
        )
        _writing.add(future)
        future.add_done_callback(_writing.discard)


# -- what the routes answer --------------------------------------------------------------------


class InferenceRequest(msgspec.Struct, omit_defaults=False):
    id: str
    deployment_id: str
    status_code: int
    streamed: bool
    usage_reported: bool
    client_disconnected: bool
    client_cancelled: bool
    created_at: str
    completed_at: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None  # the whole answer, as e2e_latency_ms
    e2e_latency_ms: float | None
    ttfb_ms: float | None
    ttft_ms: float | None
    generation_ms: float | None
    tpot_ms: float | None
    request_bytes: int | None
    response_bytes: int | None
    finish_reason: str | None
    error_category: str | None
    error_message: str | None
    replica_id: str | None = None
    cached_prompt_tokens: int | None = None
    object: str = "deployment.request"


class RequestList(msgspec.Struct):
    data: list[InferenceRequest]
    has_more: bool
    object: str = "list"


def _to_api(row: dict) -> InferenceRequest:
    return InferenceRequest(
        id=row["id"],
        deployment_id=row["deployment_id"],
        status_code=row["status_code"],
        streamed=bool(row["streamed"]),
        usage_reported=bool(row["usage_reported"]),
        client_disconnected=bool(row["client_disconnected"]),
        client_cancelled=bool(row["client_disconnected"]),
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_ms=row["e2e_latency_ms"],
        e2e_latency_ms=row["e2e_latency_ms"],
        ttfb_ms=row["ttfb_ms"],
        ttft_ms=row["ttft_ms"],
        generation_ms=row["generation_ms"],
        tpot_ms=row["tpot_ms"],
        request_bytes=row["request_bytes"],
        response_bytes=row["response_bytes"],
        finish_reason=row["finish_reason"],
        error_category=row["error_category"],
        error_message=row["error_message"],
    )


def _deployment(store: Store, deployment_id: str) -> dict:
    row = store.get_deployment(deployment_id)
    if row is None:
        raise not_found("deployment", deployment_id)
    return row


def _time(value: str | None, param: str) -> int | None:
    """An RFC 3339 time as epoch ms; a naive one is UTC."""
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(
            "invalid_value", f"{param} must be an RFC 3339 time such as 2026-12-03T18:00:00Z, not {value!r}.", param
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def _range(from_: str | None, to: str | None) -> tuple[int | None, int | None]:
    lo, hi = _time(from_, "from"), _time(to, "to")
    if lo is not None and hi is not None and lo > hi:
        raise bad_request("invalid_value", "from must not be after to.", "from")
    return lo, hi


def list_requests(
    store: Store,
    deployment_id: str,
    limit: int,
    after: str | None,
    from_: str | None,
    to: str | None,
    errors_only: bool,
) -> RequestList:
    """Newest first; `after` is the id of the last request of the previous page."""
    _deployment(store, deployment_id)
    lo, hi = _range(from_, to)
    cursor = None
    if after is not None:
        cursor = store.deployment_request_cursor(deployment_id, after)
        if cursor is None:
            raise bad_request("invalid_value", f"after: no request {after!r} in this deployment's log.", "after")
    rows = store.list_deployment_requests(deployment_id, limit + 1, cursor, lo, hi, errors_only)
    return RequestList(data=[_to_api(r) for r in rows[:limit]], has_more=len(rows) > limit)


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (the value a q share of requests were at or under)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(math.ceil(q * len(ordered)) - 1, 0)], 3)


def metrics(store: Store, settings: Settings, deployment_id: str) -> dict[str, Any]:
    """Lifetime totals (the deployment's row), the last 24 hours' counts, error rate and latency
    percentiles (over its newest LATENCY_SAMPLE answered requests), uptime and cost."""
    row = _deployment(store, deployment_id)
    now_ms = int(time.time() * 1000)
    day = store.deployment_request_totals(deployment_id, now_ms - DAY_MS)
    sample = store.deployment_request_latencies(deployment_id, now_ms - DAY_MS, LATENCY_SAMPLE)
    stamp = now()
    uptime = seconds_between(row["started_at"], row["stopped_at"] or stamp) if row["started_at"] else None
    gpu = row["gpu"] or row["gpu_requested"]
    per_hour = settings.prices().get(gpu["type"], 0.0) * gpu["count"]
    out: dict[str, Any] = {
        "deployment_id": deployment_id,
        "object": "deployment.metrics",
        "status": row["status"],
        "total_requests": row["total_requests"],
        "total_errors": row["total_errors"],
        "total_prompt_tokens": row["total_prompt_tokens"],
        "total_completion_tokens": row["total_completion_tokens"],
        "requests_24h": day["requests"],
        "errors_24h": day["errors"],
        "error_rate_24h": round(day["errors"] / day["requests"], 4) if day["requests"] else None,
        "completion_tokens_24h": day["completion_tokens"],
        "latency_sample_24h": len(sample),
    }
    for key in ("e2e_latency_ms", "ttft_ms", "tpot_ms"):
        values = [s[key] for s in sample if s[key] is not None]
        name = "latency_ms" if key == "e2e_latency_ms" else key
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = _percentile(values, q / 100)
    out.update(
        uptime_s=None if uptime is None else round(uptime, 1),
        last_request_at=row["last_request_at"],
        cost_per_hour_usd=per_hour,
        total_cost_usd=None if uptime is None else round(per_hour * uptime / 3600, 4),
    )
    return out


def timeseries(store: Store, deployment_id: str, from_: str | None, to: str | None, interval: str) -> dict[str, Any]:
    """Counts, tokens and latencies per bucket over [from, to] (default: the last 7 days), at
    most MAX_BUCKETS buckets; `auto` picks the finest interval that fits, an empty bucket is
    left out."""
    _deployment(store, deployment_id)
    lo, hi = _range(from_, to)
    hi = hi if hi is not None else int(time.time() * 1000)
    lo = lo if lo is not None else hi - 7 * DAY_MS
    span_s = max((hi - lo) / 1000, 1)
    if interval == "auto":
        interval = next((name for name, s in INTERVALS.items() if span_s / s <= MAX_BUCKETS), "")
        if not interval:
            raise bad_request(
                "invalid_value",
                f"from..to spans {span_s / 86400:.0f} days; at most {MAX_BUCKETS} days fit (daily buckets). "
                "Send a later from.",
                "from",
            )
    if interval not in INTERVALS:
        raise bad_request(
            "invalid_value", f"interval must be auto or one of {', '.join(INTERVALS)}, not {interval!r}.", "interval"
        )
    width = INTERVALS[interval]
    if span_s / width > MAX_BUCKETS:
        raise bad_request(
            "invalid_value",
            f"{interval} buckets over {span_s / 3600:.1f} hours would be {math.ceil(span_s / width)}, more than "
            f"{MAX_BUCKETS}; ask for a coarser interval, a shorter range, or interval=auto.",
            "interval",
        )
    buckets = [
        {"timestamp": _stamp(b.pop("bucket_ms")), **b}
        for b in store.deployment_request_buckets(deployment_id, lo, hi, width * 1000)
    ]
    return {
        "deployment_id": deployment_id,
        "object": "deployment.metrics.timeseries",
        "from": _stamp(lo),
        "to": _stamp(hi),
        "interval": interval,
        "interval_s": width,
        "buckets": buckets,
    }


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeploymentRequestController(Controller):
    path = "/v1/deployments/{deployment_id:str}"
    tags = ["deployments"]

    @litestar.get("/requests", sync_to_thread=True)
    def requests_(
        self,
        deployment_id: FromPath[str],
        store: NamedDependency[Store],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=64)] = None,
        from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
        to: Annotated[str | None, QueryParameter(max_length=64)] = None,
        errors_only: FromQuery[bool] = False,
    ) -> RequestList:
        return list_requests(store, deployment_id, limit, after, from_, to, errors_only)

    @litestar.get("/metrics", sync_to_thread=True)
    def metrics_(
        self, deployment_id: FromPath[str], store: NamedDependency[Store], settings: NamedDependency[Settings]
    ) -> dict[str, Any]:
        return metrics(store, settings, deployment_id)

    @litestar.get("/metrics/timeseries", sync_to_thread=True)
    def timeseries_(
        self,
        deployment_id: FromPath[str],
        store: NamedDependency[Store],
        from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
        to: Annotated[str | None, QueryParameter(max_length=64)] = None,
        interval: Annotated[str, QueryParameter(max_length=20)] = "auto",
    ) -> dict[str, Any]:
        return timeseries(store, deployment_id, from_, to, interval)
