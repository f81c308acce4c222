"""The only code that changes a job's status once it is queued."""

from __future__ import annotations

from .store import Store, now

ACTIVE_STATUSES = ("queued", "provisioning", "running")


def cancel(store: Store, job_id: str) -> dict | None:
    """Cancel a job that has not finished; None if it already had.

    Jobs only wait in the queue until the scheduler places them, so a cancel here has no
    process to stop yet.
    """
    return store.transition_job(job_id, "cancelled", allowed_from=ACTIVE_STATUSES, completed_at=now())
