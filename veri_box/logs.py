"""A job's training log as Server-Sent Events (one event per line, its id the byte offset just
past that line, so a client that reconnects with Last-Event-ID misses nothing), and as a text
download streamed from the file."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import anyio
from litestar.response import ServerSentEventMessage, Stream

from . import paths
from .statuses import TERMINAL
from .store import Store

POLL_S = 0.5
KEEPALIVE_S = 15.0
KEY_CHECK_S = 2.0
WINDOW = 1 << 20  # read at a time
LINE_LIMIT = 64 * 1024  # of one line, sent; the rest is cut (a marker says so)
MAX_SKIP = 64 * WINDOW  # a line without a newline this long is cut there
DOWNLOAD_CHUNK = 1 << 18


class LogFile(NamedTuple):
    """The log as it is now, to stream: `size` bytes of `chunks`."""

    size: int
    chunks: AsyncIterator[bytes]


def open_download(path: Path) -> LogFile:
    """The log's bytes up to its current end, read a chunk at a time as the client takes them,
    so a long log never sits in the server's memory whole (five readers of a 300 MB log took
    it past 2 GB). Lines the trainer appends meanwhile are left for the next download."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return LogFile(0, _no_chunks())
    size = os.fstat(fh.fileno()).st_size
    return LogFile(size, _chunks(fh, size))


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield


async def _chunks(fh: BinaryIO, size: int) -> AsyncIterator[bytes]:
    try:
        left = size
        while left > 0:
            chunk = await anyio.to_thread.run_sync(fh.read, min(DOWNLOAD_CHUNK, left))
            if not chunk:  # cut short under us: end the body early rather than hang
                return
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def download_response(path: Path, status_code: int = 200) -> Stream:
    """The log as text/plain, streamed; `status_code` 206 says it is not finished yet."""
    log = open_download(path)
    return Stream(
        log.chunks,
        status_code=status_code,
        media_type="text/plain; charset=utf-8",
        headers={"Content-Length": str(log.size)},
    )


def read_lines(path: Path, offset: int) -> tuple[list[tuple[str, int]], int]:
    """Complete lines from `offset` on, each with the offset just past it. A line still being
    written (no newline yet) waits for the next read. A line longer than the read window is
    sent cut to LINE_LIMIT with a marker once its newline is found, so it cannot stall the
    stream (a 3 MiB printed line used to end it)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(WINDOW)
            end = data.rfind(b"\n")
            if end < 0:
                return _long_line(fh, data, offset)
    except FileNotFoundError:
        return [], offset
    lines = []
    position = offset
    for raw in data[: end + 1].split(b"\n")[:-1]:
        position += len(raw) + 1
        lines.append((_text(raw), position))
    return lines, position


def _text(raw: bytes) -> str:
    raw = raw.rstrip(b"\r")
    if len(raw) <= LINE_LIMIT:
        return raw.decode("utf-8", errors="replace")
    return raw[:LINE_LIMIT].decode("utf-8", errors="replace") + f" [line truncated: longer than {LINE_LIMIT:,} bytes]"


def _long_line(fh: BinaryIO, head: bytes, offset: int) -> tuple[list[tuple[str, int]], int]:
    """A window without a newline: a line still being written if the window is not full, else
    one longer than the window, skipped to its newline (or, if that is absurdly far, to
    MAX_SKIP past its start, so a reader never rescans it for ever)."""
    if len(head) < WINDOW:
        return [], offset
    position = offset + len(head)
    while position - offset < MAX_SKIP:
        chunk = fh.read(WINDOW)
        newline = chunk.find(b"\n")
        if newline >= 0:
            position += newline + 1
            break
        if len(chunk) < WINDOW:  # its end is not written yet: wait for it
            return [], offset
        position += len(chunk)
    return [(_text(head), position)], position


def event_offset(last_event_id: str) -> int | None:
    """The offset a Last-Event-ID header names: an id this stream sends (ASCII digits of a file
    offset), else None. int() of 10,000 digits raises, so the length is checked first."""
    value = last_event_id.strip()
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def key_is_live(store: Store, key_id: str | None, expires: float | None = None) -> Callable[[], bool]:
    """Whether the request's API key (or dashboard session) may still read, asked again while
    a stream runs: revoking a key ends its open streams."""

    def live() -> bool:
        if expires is not None and time.time() >= expires:
            return False
        return key_id is not None and store.get_api_key(key_id) is not None

    return live


async def stream(
    store: Store, data_dir: Path, job_id: str, offset: int, allowed: Callable[[], bool] | None = None
) -> AsyncIterator[ServerSentEventMessage]:
    """The log from `offset` on as events, then the job's end sentinel. With `allowed`, the
    stream ends quietly once it says no (it is asked every KEY_CHECK_S seconds)."""
    path = paths.train_log(data_dir, job_id)
    idle, checked = 0.0, time.monotonic()
    while True:
        if allowed is not None and time.monotonic() - checked >= KEY_CHECK_S:
            if not await anyio.to_thread.run_sync(allowed):
                return
            checked = time.monotonic()
        # Read the status before the file: lines written before the job ended are then
        # always sent before the sentinel. Both touch the disk, so neither runs on the loop.
        job = await anyio.to_thread.run_sync(store.get_job, job_id)
        status = job["status"] if job else "cancelled"
        lines, offset = await anyio.to_thread.run_sync(read_lines, path, offset)
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
