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


def query(
    store: Store, job_id: str, keys: list[str] | None, from_step: int | None, to_step: int | None, max_points: int
) -> Metrics:
    available = store.metric_keys(job_id)
    wanted = available if not keys else [k for k in keys if k in available]
    by_step: dict[int, dict[str, Any]] = {}
    bounds = store.metric_step_bounds(job_id, None, from_step, to_step)
    if bounds and wanted:
        by_step = _sample(store, job_id, wanted, bounds, max_points)
    points = [MetricPoint(step=s, values=by_step[s]) for s in sorted(by_step) if by_step[s]]
    return Metrics(metrics=points, available_keys=available, latest_step=store.latest_metric_step(job_id))


def _sample(
    store: Store, job_id: str, wanted: list[str], bounds: tuple[int, int], max_points: int
) -> dict[int, dict[str, Any]]:
    lo, hi = bounds
    # Steps spread evenly over the range, read from the one-row-per-step table: the cost
    # follows max_points, not the length of the run. Keys logged at every step are done.
    if store.metric_count_upto(job_id, None, lo, hi, max_points + 1) <= max_points:
        sampled = store.metric_points(job_id, None, lo, hi)
    else:
        sampled = store.metric_points_at_or_after(job_id, None, _targets(lo, hi, max_points))
    keep = set(wanted)
    by_step = {step: {k: v for k, v in values.items() if k in keep} for step, values in sampled}
    for key in wanted:
        key_bounds = store.metric_step_bounds(job_id, key, lo, hi)
        if key_bounds is None:
            continue
        first, last = key_bounds
        hits = [step for step, values in by_step.items() if key in values]
        if store.metric_count_upto(job_id, key, first, last, max_points + 1) <= max_points:
            own = store.metric_points(job_id, key, first, last)  # few points: all of them
        elif len(hits) < max_points // 2:
            # Logged on few of the sampled steps: sample the key's own steps instead.
            own = store.metric_points_at_or_after(job_id, key, _targets(first, last, max_points))
        elif hits[-1] != last:
            # Keep the key's last point, within max_points.
            if len(hits) >= max_points:
                del by_step[hits[-1]][key]
            own = store.metric_points(job_id, key, last, last)
            hits = []
        else:
            continue
        for step in hits:
            del by_step[step][key]
        for step, value in own:
            by_step.setdefault(step, {})[key] = value
    return by_step
