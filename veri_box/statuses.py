"""The job statuses, one vocabulary for the API, the store, the runner and the dashboard.

queued -> provisioning -> running -> completed | failed | cancelled. Only the runner moves a
job once it is queued (a cancel goes through it too).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROVISIONING = "provisioning"  # placed on devices; the trainer is starting
    RUNNING = "running"  # the trainer reported that training began
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Tuples, in lifecycle order: they are shown in this order and bound as SQL parameters.
ALL = tuple(JobStatus)
ACTIVE = (JobStatus.QUEUED, JobStatus.PROVISIONING, JobStatus.RUNNING)  # not finished
PLACED = (JobStatus.PROVISIONING, JobStatus.RUNNING)  # holding devices
TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
