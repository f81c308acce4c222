"""A key's and the box's cloud spend this month, as GET /v1/me and GET /v1/settings/quotas show
it: one SQL sum over the month's instances, the same figure as the row-by-row sum it replaced:
instances still running, launched before the month began, wholly last month's, of another key,
of a deleted job, without a price or not yet launched, to the millisecond."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Api

from veri_box import quotas
from veri_box.store import now, seconds_between


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def month_start() -> datetime:
    return datetime.strptime(quotas.month_bounds()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def instance(api: Api, job_id: str | None, price: float | None, launched: datetime | None, ended: datetime | None):
    api.store.insert_instance(
        {
            "provider": "runpod",
            "name": "t",
            "job_id": job_id,
            "gpu_type": "H100",
            "gpu_count": 1,
            "price_per_hr": price,
            "status": "terminated" if ended else "ready",
            "launched_at": stamp(launched) if launched else None,
            "terminated_at": stamp(ended) if ended else None,
        }
    )


def row_by_row(api: Api, key_id: str | None, until: str) -> float:
    """The sum as quotas.spend made it before: every instance of the month in Python."""
    start = quotas.month_bounds()[0]
    total = 0.0
    for inst in api.store.db.execute(
        "SELECT i.launched_at, i.terminated_at, i.price_per_hr, j.created_by FROM instances i"
        " LEFT JOIN jobs j ON j.id = i.job_id WHERE i.launched_at IS NOT NULL"
        " AND (i.terminated_at IS NULL OR i.terminated_at >= ?)",
        [start],
    ).fetchall():
        launched, terminated, price, owner = inst
        if key_id is not None and owner != key_id:
            continue
        hours = (seconds_between(max(launched, start), terminated or until) or 0.0) / 3600
        total += max(hours, 0.0) * (price or 0.0)
    return round(total, 4)


def test_spend_counts_this_months_part_of_each_instance_of_the_keys_jobs(api: Api):
    mine = api.job()["id"]
    theirs = api.job()["id"]
    api.store.update_job(theirs, created_by="someone-else")
    me = api.get("/v1/me").json()
    api.store.update_job(mine, created_by=me["id"])
    gone = api.job()["id"]  # its instance stays when the job is deleted (what was spent stays spent)
    api.store.update_job(gone, created_by=me["id"])
    start = month_start()
    hour = timedelta(hours=1)

    instance(api, mine, 2.0, start + timedelta(days=1), start + timedelta(days=1) + 1.5 * hour)  # $3
    instance(api, mine, 4.0, start - 2 * hour, start + hour)  # launched last month: 1 h this month, $4
    instance(api, mine, 9.0, start - 5 * hour, start - 2 * hour)  # wholly last month's: $0
    instance(api, mine, None, start + hour, start + 2 * hour)  # no price: $0
    instance(api, mine, 3.0, None, None)  # not launched yet: $0
    # To the millisecond, across a minute: 0.002 s at $3600/h is $0.002.
    at = start + timedelta(days=2, seconds=59, milliseconds=999)
    instance(api, mine, 3600.0, at, at + timedelta(milliseconds=2))
    instance(api, theirs, 10.0, start + hour, start + 2 * hour)  # another key's: the box's $10
    instance(api, gone, 1.0, start + hour, start + 2 * hour)  # a deleted job's: the box's $1
    launched = datetime.now(UTC) - timedelta(minutes=30)
    instance(api, mine, 1.2, launched, None)  # still running: billed to now
    api.store.transition_job(gone, "completed", allowed_from=["queued"])
    assert api.delete(f"/v1/training_jobs/{gone}").status_code in (200, 204)

    before = now()
    key_spend = api.get("/v1/me").json()["usage"]["spend_usd"]
    box_spend = api.get("/v1/settings/quotas").json()["box_spend_usd"]
    after = now()
    running = [1.2 * (seconds_between(max(stamp(launched), stamp(start)), t) or 0.0) / 3600 for t in (before, after)]
    assert 3.0 + 4.0 + 0.002 + running[0] - 1e-4 <= key_spend <= 3.0 + 4.0 + 0.002 + running[1] + 1e-4
    assert key_spend + 11.0 - 1e-3 <= box_spend <= key_spend + 11.0 + 1e-3

    # The same figure as the row-by-row sum, to the cent's hundredth, for any "now".
    until = now()
    assert api.store.instances_spend_usd(me["id"], quotas.month_bounds()[0], until) == pytest.approx(
        row_by_row(api, me["id"], until), abs=1e-4
    )


def test_spend_of_thousands_of_instances_is_the_row_by_row_sum(api: Api):
    key_id = api.get("/v1/me").json()["id"]
    jobs = [api.job()["id"] for _ in range(3)]
    api.store.update_job(jobs[2], created_by="someone-else")
    start, elapsed = month_start(), datetime.now(UTC) - month_start()
    rng = random.Random(7)
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.05:
            launched, ended = start + elapsed * rng.random(), None
        elif kind < 0.15:
            launched = start - timedelta(hours=rng.uniform(0, 48))
            ended = launched + timedelta(hours=rng.uniform(0, 72))
        else:
            launched = start + elapsed * rng.random()
            ended = launched + timedelta(seconds=rng.uniform(0, 9000), milliseconds=rng.randrange(1000))
        instance(api, rng.choice(jobs), round(rng.uniform(0.2, 5.0), 2), launched, ended)
    until = now()
    month = quotas.month_bounds()[0]
    for key in (key_id, None):
        got = round(api.store.instances_spend_usd(key, month, until), 4)
        assert got == row_by_row(api, key, until), key
