"""The server's side of progress.jsonl: the twin of trainers/progress.py, which writes it.

The trainer's records are data from untrusted code (reward functions run inside it), so every
field is checked here before it reaches the store: steps are ints, metric values finite
numbers, checkpoint paths strings (artifacts resolves them inside the job directory).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .statuses import JobStatus
from .store import now

log = logging.getLogger("veri_box.progress")

READ_PER_TICK = 4 * 1024 * 1024  # keeps a tick short; a drain reads on to the end


def _iso(unix: Any) -> str:
    if isinstance(unix, int | float) and math.isfinite(unix):
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return now()


@dataclass
class Batch:
    """The records of one read of progress.jsonl, sorted into what the store keeps."""

    points: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)
    events: list[tuple[str, dict, str]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    running: dict | None = None

    def add(self, record: dict) -> None:
        kind, stamp = record.get("type"), _iso(record.get("time"))
        step = record.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) else None
        if kind == "metrics" and step is not None and isinstance(record.get("values"), dict):
            values = {
                str(k): float(v)
                for k, v in record["values"].items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
            if values:
                self.points.append((step, values))
                self.fields["current_step"] = max(step, self.fields.get("current_step") or 0)
                if "loss" in values:
                    self.fields["current_loss"] = values["loss"]
        elif kind == "sample" and step is not None:
            self.samples.append({k: v for k, v in record.items() if k not in ("type", "time")})
        elif kind == "checkpoint" and step is not None and isinstance(record.get("path"), str):
            self.checkpoints.append((step, record["path"], stamp))
            self.events.append(("checkpoint_saved", {"step": step, "path": record["path"]}, stamp))
        elif kind == "error":
            error = {"code": str(record.get("code") or "trainer_crashed"), "message": str(record.get("message") or "")}
            self.fields["reported_error"] = error
        elif kind == "event" and isinstance(record.get("event"), str):
            name, metadata = record["event"], record.get("metadata") or {}
            self.fields["trainer_state"] = name
            if name == JobStatus.RUNNING:
                total = record.get("total_steps")
                self.running = {
                    "at": stamp,
                    "total_steps": total if isinstance(total, int) else None,
                    "metadata": metadata,
                }
            elif name != JobStatus.COMPLETED:  # the runner records completion itself, once packaged
                self.events.append((name, metadata if isinstance(metadata, dict) else {}, stamp))


def parse(data: bytes, job_id: str) -> tuple[Batch, int]:
    """The complete lines of `data` as one batch, and how many bytes they took. A last line
    without its newline is a record still being written: it is left for the next read."""
    end = data.rfind(b"\n")
    batch = Batch()
    if end < 0:
        return batch, 0
    for line in data[: end + 1].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s: skipped a progress line that is not JSON: %r", job_id, line[:200])
            continue
        if isinstance(record, dict):
            batch.add(record)
    return batch, end + 1
