"""A job's training log as Server-Sent Events: one event per line, its id the byte offset
just past that line, so a client that reconnects with Last-Event-ID misses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from litestar.response import ServerSentEventMessage

from . import paths
from .statuses import TERMINAL
from .store import Store

POLL_S = 0.5
KEEPALIVE_S = 15.0
CHUNK = 1 << 16


def read_lines(path: Path, offset: int) -> tuple[list[tuple[str, int]], int]:
    """Complete lines from `offset` on, each with the offset just past it. A line still being
    written (no newline yet) waits for the next read."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(CHUNK * 16)
    except FileNotFoundError:
        return [], offset
    lines = []
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    position = offset
    for raw in data[: end + 1].split(b"\n")[:-1]:
        position += len(raw) + 1
        lines.append((raw.rstrip(b"\r").decode("utf-8", errors="replace"), position))
    return lines, position


async def stream(store: Store, data_dir: Path, job_id: str, offset: int) -> AsyncIterator[ServerSentEventMessage]:
    path = paths.train_log(data_dir, job_id)
    idle = 0.0
    while True:
        # Read the status before the file: lines written before the job ended are then
        # always sent before the sentinel.
        job = store.get_job(job_id)
        status = job["status"] if job else "cancelled"
        lines, offset = await asyncio.to_thread(read_lines, path, offset)
        for line, position in lines:
            yield ServerSentEventMessage(data=line, id=str(position))
        if lines:
            idle = 0.0
            continue
        if status in TERMINAL:
            yield ServerSentEventMessage(data=f"[Job {status}]", id=str(offset))
            return
        await asyncio.sleep(POLL_S)
        idle += POLL_S
        if idle >= KEEPALIVE_S:
            # A comment keeps proxies from closing a quiet stream and tells us when the client left.
            yield ServerSentEventMessage(data=None, comment="keep-alive")
            idle = 0.0
