"""The request log's arithmetic on a real SQLite file: the last day's counts are exact across
the hourly sums' edge, and pruning drops rows after 7 days and the hourly sums after 90."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from veri_box import deployment_requests
from veri_box.errors import ApiError
from veri_box.store import HOUR_MS, Store, now


def store_with_deployment(tmp_path: Path) -> Store:
    store = Store(tmp_path / "veri-box.db")
    stamp = now()
    store.insert_deployment(
        {
            "id": "dep_x",
            "name": "x",
            "model": "m",
            "source": "huggingface",
            "base_model": "m",
            "status": "serving",
            "engine": "transformers",
            "gpu_requested": '{"type": "cpu", "count": 1}',
            "gpu": '{"type": "cpu", "count": 1}',
            "events": "[]",
            "created_at": stamp,
            "started_at": stamp,
        }
    )
    return store


def log(store: Store, at_ms: int, status: int = 200, tokens: int = 5) -> None:
    row = {
        "id": f"req_{at_ms}_{status}_{tokens}",
        "deployment_id": "dep_x",
        "at_ms": at_ms,
        "created_at": now(),
        "completed_at": now(),
        "status_code": status,
        "streamed": False,
        "prompt_tokens": 3,
        "completion_tokens": tokens if status == 200 else None,
        "usage_reported": status == 200,
        "e2e_latency_ms": 10.0,
        "ttfb_ms": 10.0,
        "ttft_ms": None,
        "generation_ms": None,
        "tpot_ms": None,
        "request_bytes": 10,
        "response_bytes": 20,
        "finish_reason": "length" if status == 200 else None,
        "error_category": None if status == 200 else "invalid_n",
        "error_message": None if status == 200 else "n must be between 1 and 8.",
        "client_disconnected": False,
    }
    store.add_deployment_request(row, reached_model=status == 200)


def test_the_last_day_counts_exactly_across_the_hourly_sums_edge(tmp_path):
    store = store_with_deployment(tmp_path)
    lo = (int(time.time() * 1000) - 24 * HOUR_MS) // HOUR_MS * HOUR_MS + HOUR_MS // 2  # mid-hour
    edge = -(-lo // HOUR_MS) * HOUR_MS  # the first whole hour inside the day
    log(store, lo - 1, tokens=1000)  # a moment too old: in the same hour's sum as the next two
    log(store, lo, tokens=7)
    log(store, edge - 1, status=400)
    log(store, edge, tokens=11)
    log(store, edge + 5 * HOUR_MS, tokens=13)
    assert store.deployment_request_totals("dep_x", lo) == {"requests": 4, "errors": 1, "completion_tokens": 31}
    deployment = store.get_deployment("dep_x")
    assert (deployment["total_requests"], deployment["total_errors"]) == (4, 1)  # lifetime: the refusal not counted
    assert deployment["total_completion_tokens"] == 1031


def test_rows_go_after_7_days_and_hourly_sums_after_90(tmp_path):
    store = store_with_deployment(tmp_path)
    stamp = int(time.time() * 1000)
    day = 24 * HOUR_MS
    for age_days in (0, 8, 100):
        log(store, stamp - age_days * day)
    pruned = store.prune_deployment_requests(
        stamp - deployment_requests.ROWS_KEPT_S * 1000, stamp - deployment_requests.HOURS_KEPT_S * 1000
    )
    assert pruned == 2
    assert [r["at_ms"] for r in store.list_deployment_requests("dep_x", 10, None, None, None, False)] == [stamp]
    hours = store.deployment_request_buckets("dep_x", stamp - 120 * day, stamp, day)
    assert sum(b["requests"] for b in hours) == 2  # the 8-day-old request is still in its hour's sum


def test_bad_ranges_are_refused(tmp_path):
    store = store_with_deployment(tmp_path)
    with pytest.raises(ApiError) as refused:
        deployment_requests.timeseries(store, "dep_x", "2026-12-03T10:00:00Z", "2026-12-02T10:00:00Z", "auto")
    assert (refused.value.status, refused.value.param) == (400, "from")
    with pytest.raises(ApiError) as refused:
        deployment_requests.timeseries(store, "dep_x", None, None, "weekly")
    assert (refused.value.code, refused.value.param) == ("invalid_value", "interval")
    with pytest.raises(ApiError) as refused:
        deployment_requests.list_requests(store, "dep_nope", 10, None, None, None, False)
    assert refused.value.status == 404
