"""Reading a job's per-step metrics, evenly downsampled for charts."""

from __future__ import annotations

from typing import Any

import msgspec

from .store import Store


class MetricPoint(msgspec.Struct):
    step: int
    values: dict[str, float | None]


class Metrics(msgspec.Struct):
    metrics: list[MetricPoint]
    available_keys: list[str]
    latest_step: int | None


def _targets(lo: int, hi: int, max_points: int) -> list[int]:
    """`max_points` steps spread evenly over [lo, hi]; the last is always `hi`."""
    if max_points == 1:
        return [hi]
    span = hi - lo
    return [lo + (span * i) // (max_points - 1) for i in range(max_points)]


def _key_points(
    store: Store, job_id: str, key: str, lo: int | None, hi: int | None, max_points: int
) -> list[tuple[int, Any]]:
    bounds = store.metric_step_bounds(job_id, key, lo, hi)
    if bounds is None:
        return []
    first, last = bounds
    if store.metric_count_upto(job_id, key, first, last, max_points + 1) <= max_points:
        return store.metric_points(job_id, key, first, last)
    # Each target finds the first stored step at or after it (an index seek), so the cost
    # depends on max_points, not on how many points the job has.
    return store.metric_points_at_or_after(job_id, key, _targets(first, last, max_points))


def query(
    store: Store, job_id: str, keys: list[str] | None, from_step: int | None, to_step: int | None, max_points: int
) -> Metrics:
    available = store.metric_keys(job_id)
    wanted = available if not keys else [k for k in keys if k in available]
    by_step: dict[int, dict[str, Any]] = {}
    for key in wanted:
        for step, value in _key_points(store, job_id, key, from_step, to_step, max_points):
            by_step.setdefault(step, {})[key] = value
    points = [MetricPoint(step=s, values=by_step[s]) for s in sorted(by_step)]
    return Metrics(metrics=points, available_keys=available, latest_step=store.latest_metric_step(job_id))
