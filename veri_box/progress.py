"""The server's side of progress.jsonl: the twin of trainers/progress.py, which writes it.

The trainer's records are data from untrusted code (reward functions run inside it), so every
field is checked and bounded here before it reaches the store: steps are ints in range, metric
values finite numbers under bounded keys, samples and event metadata of bounded size,
checkpoint paths relative and inside the job directory (artifacts resolves them again).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from .statuses import JobStatus
from .store import now

log = logging.getLogger("veri_box.progress")

READ_PER_TICK = 4 * 1024 * 1024  # keeps a tick short; a drain reads on to the end

# Bounds on what one record may put in the store (docs/api.md, "The trainer's records").
MAX_STEP = 2**53  # exact in a JSON number and a float; far beyond any real run
MAX_METRIC_KEYS = 1000
MAX_KEY_CHARS = 200
MAX_SAMPLE_BYTES = 64 * 1024
MAX_EVENT_BYTES = 16 * 1024
MAX_MESSAGE_CHARS = 16 * 1024
MAX_CODE_CHARS = 100
MAX_URL_CHARS = 2000
TRUNCATED = " [truncated]"


def _iso(unix: Any) -> str:
    if isinstance(unix, int | float) and math.isfinite(unix):
        try:
            return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        except (OverflowError, OSError, ValueError):  # a time outside what datetime can hold
            return now()
    return now()


def _step(value: Any) -> int | None:
    """A step as the store keeps it: an int from 0 up to MAX_STEP, else None (the record is ignored)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_STEP:
        return value
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - len(TRUNCATED), 0)] + TRUNCATED


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _shorten(value: Any, limit: int) -> Any:
    """`value` with every string longer than `limit` characters cut, marked as cut."""
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, dict):
        return {key: _shorten(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten(item, limit) for item in value]
    return value


def bounded(value: dict, max_bytes: int) -> dict | None:
    """`value` within `max_bytes` of JSON: as it is if it fits, else with its long strings cut
    shorter and shorter (a long completion keeps its beginning); None if even that is too big
    (too many fields, not long strings)."""
    if _encoded_size(value) <= max_bytes:
        return value
    limit = max_bytes // 4
    while limit >= 64:
        shortened = _shorten(value, limit)
        if _encoded_size(shortened) <= max_bytes:
            return shortened
        limit //= 4
    return None


def _metric_values(job_id: str, step: int, values: dict) -> dict[str, float]:
    numbers = {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    kept = {k: v for k, v in numbers.items() if len(k) <= MAX_KEY_CHARS}
    if len(kept) < len(numbers):
        log.warning("%s: step %s: dropped metric keys longer than %s characters", job_id, step, MAX_KEY_CHARS)
    if len(kept) > MAX_METRIC_KEYS:
        log.warning("%s: step %s: kept the first %s of %s metric keys", job_id, step, MAX_METRIC_KEYS, len(kept))
        kept = dict(list(kept.items())[:MAX_METRIC_KEYS])
    return kept


def safe_relative_path(path: str) -> str | None:
    """A checkpoint path as the trainer's contract has it: relative to the job directory and
    inside it (no "..", not absolute, no NUL); None otherwise. artifacts resolves it again when
    it lists the files, since a link inside the job dir can point out."""
    if not path or "\x00" in path or "\\" in path or len(path) > 4096:
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return pure.as_posix()


def tracker_url(value: Any) -> str | None:
    """A tracker's run page as the trainer reported it, if it is a plain http(s) URL: the
    dashboard makes it a link, so a javascript: or data: URL from a reward function never is."""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 for c in value):
        return None
    try:
        parsed = urlparse(value)
    except ValueError:  # "http://[x": raised out of parse(), it would stop the job's progress being read
        return None
    return value if parsed.scheme in ("http", "https") and parsed.netloc else None


@dataclass
class Batch:
    """The records of one read of progress.jsonl, sorted into what the store keeps."""

    job_id: str = ""
    points: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)
    events: list[tuple[str, dict, str]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    running: dict | None = None

    def add(self, record: dict) -> None:
        kind, stamp = record.get("type"), _iso(record.get("time"))
        step = _step(record.get("step"))
        if kind == "metrics" and step is not None and isinstance(record.get("values"), dict):
            self._metrics(step, record["values"])
        elif kind == "sample" and step is not None:
            self._sample(step, {k: v for k, v in record.items() if k not in ("type", "time")})
        elif kind == "checkpoint" and step is not None and isinstance(record.get("path"), str):
            self._checkpoint(step, record["path"], stamp)
        elif kind == "error":
            code = _cut(str(record.get("code") or "trainer_crashed"), MAX_CODE_CHARS)
            self.fields["reported_error"] = {
                "code": code,
                "message": _cut(str(record.get("message") or ""), MAX_MESSAGE_CHARS),
            }
        elif kind == "event" and isinstance(record.get("event"), str):
            self._event(_cut(record["event"], MAX_KEY_CHARS), record, stamp)

    def _metrics(self, step: int, values: dict) -> None:
        kept = _metric_values(self.job_id, step, values)
        if kept:
            self.points.append((step, kept))
            # Steps may repeat or go back (a trainer resumed from a checkpoint logs them again;
            # the latest value of a step wins), but the job's current step only moves forward.
            self.fields["current_step"] = max(step, self.fields.get("current_step") or 0)
            if "loss" in kept:
                self.fields["current_loss"] = kept["loss"]

    def _sample(self, step: int, sample: dict) -> None:
        kept = bounded(sample, MAX_SAMPLE_BYTES)
        if kept is None:
            log.warning("%s: ignored a sample at step %s over %s bytes", self.job_id, step, MAX_SAMPLE_BYTES)
            return
        self.samples.append(kept)

    def _checkpoint(self, step: int, path: str, stamp: str) -> None:
        relative = safe_relative_path(path)
        if relative is None:
            log.warning("%s: ignored a checkpoint outside the job directory: %r", self.job_id, path[:200])
            return
        self.checkpoints.append((step, relative, stamp))
        self.events.append(("checkpoint_saved", {"step": step, "path": relative}, stamp))

    def _event(self, name: str, record: dict, stamp: str) -> None:
        metadata = record.get("metadata")
        metadata = bounded(metadata, MAX_EVENT_BYTES) if isinstance(metadata, dict) else {}
        if metadata is None:
            log.warning("%s: dropped the metadata of event %r, over %s bytes", self.job_id, name, MAX_EVENT_BYTES)
            metadata = {}
        self.fields["trainer_state"] = name
        if name == JobStatus.RUNNING:
            total = _step(record.get("total_steps"))
            self.running = {"at": stamp, "total_steps": total, "metadata": metadata}
            url = tracker_url(metadata.get("wandb_run_url"))
            if url:
                self.fields["wandb_run_url"] = url
        elif name != JobStatus.COMPLETED:  # the runner records completion itself, once packaged
            self.events.append((name, metadata, stamp))


def parse(data: bytes, job_id: str, window: int = READ_PER_TICK) -> tuple[Batch, int]:
    """The complete lines of `data` as one batch, and how many bytes they took. A last line
    without its newline is a record still being written: it is left for the next read. But a
    `window` (what the runner reads at a time) with no newline at all is a record longer than
    any read: it is skipped, else ingestion would stop there for good; its tail, up to the next
    newline, is then not JSON and is skipped too."""
    end = data.rfind(b"\n")
    batch = Batch(job_id)
    if end < 0:
        if len(data) >= window:
            log.warning("%s: skipped a progress record longer than %s bytes", job_id, window)
            return batch, len(data)
        return batch, 0
    for line in data[: end + 1].splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested past what json can parse
            log.warning("%s: skipped a progress line that is not JSON: %r", job_id, line[:200])
            continue
        if isinstance(record, dict):
            try:
                batch.add(record)
            except RecursionError:  # nested deeper than a sample's bounds can walk
                log.warning("%s: skipped a progress record nested too deep", job_id)
            except (ValueError, TypeError) as exc:
                # The file is written by untrusted code (reward functions run in the trainer): a
                # record no check foresaw is skipped, else ingestion would stop at it for good.
                log.warning("%s: skipped a progress record it could not read (%s): %r", job_id, exc, line[:200])
    return batch, end + 1
