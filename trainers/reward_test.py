"""`python -m trainers.reward_test WORK_DIR`: one reward function called on a few rows, the way a
GRPO job calls it, so a buggy function fails in seconds instead of a GPU hour into a job.

The server (veri_box/reward_tests.py) writes WORK_DIR/input.json and runs this in the trainer's
sandbox under a wall-clock limit. It appends one JSON line per call to WORK_DIR/results.jsonl, so
whatever finished before a kill is still there; what the function prints is this process's
stdout, which the server keeps apart. Each call goes through trainers.rewards.guard, so an error
carries the very message a job would fail with; the records add which kind of error it was, the
row it was about and the user's own traceback frames (none of ours).

Standard library and trainers' own light modules only, imported when used: the test is short,
and its start-up is most of it.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
import time
import traceback
import types
from pathlib import Path

INPUT = "input.json"
RESULTS = "results.jsonl"
OURS = str(Path(__file__).resolve().parent)


def _frames(err: BaseException, work: Path) -> str | None:
    """The traceback's frames in the user's code (the loader, the guard and this script left
    out), the test's own copy of the file named relative to the test's folder."""
    frames = []
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename.startswith(OURS) or frame.filename.startswith("<frozen importlib"):
            continue
        frame.line  # noqa: B018 - read the source line now, while the file is found by its real name
        if frame.filename.startswith(f"{work}/"):
            frame.filename = frame.filename[len(str(work)) + 1 :]
        frames.append(frame)
    return "".join(traceback.format_list(frames)).rstrip() or None


def _load(path: Path, entrypoint: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reward_under_test", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return getattr(module, entrypoint)


def _problem(result: object, expected: int, start: int) -> tuple[str, str, int | None]:
    """(kind, message, row of the bad value) for a result the guard refused."""
    try:
        values = list(result)  # type: ignore[call-overload]
    except TypeError:
        return (
            "wrong_type",
            f"returned {type(result).__name__}; return a list with one float (or None) per completion.",
            None,
        )
    if len(values) != expected:
        return "wrong_length", f"returned {len(values)} rewards for {expected} completions.", None
    for i, value in enumerate(values):
        ok = value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))
        if not ok or (value is not None and not math.isfinite(float(value))):
            return (
                "invalid_value",
                f"returned {value!r} for row {start + i}; rewards must be finite numbers or None.",
                start + i,
            )
    return "invalid_value", "returned a value the trainer refuses.", None


def _batches(spec: dict) -> list[tuple[int, int]]:
    count, size = len(spec["completions"]), spec["batch_size"]
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _kwargs(spec: dict, start: int, end: int) -> tuple[list, dict]:
    """The prompts and keyword arguments TRL would pass for rows start..end: every column but the
    prompt and `completion` as a list, and the trainer's extras (no tokenizer here: empty
    completion_ids; a step-0 trainer_state; log_extra and log_metric that keep nothing)."""
    from trainers import prompts

    rows = spec["rows"][start:end]
    if spec["format"]:
        pairs = [prompts.prompt_of(row, spec["format"]) for row in rows]
    else:
        pairs = [("", {}) for _ in range(end - start)]
    columns: dict[str, list] = {}
    for _, rest in pairs:
        for key in rest:
            if key not in ("completion", "completion_ids") and key not in columns:
                columns[key] = [r.get(key) for _, r in pairs]
    state = types.SimpleNamespace(global_step=0, max_steps=0, epoch=0.0, num_train_epochs=1)
    extras = {
        "completion_ids": [[] for _ in range(end - start)],
        "trainer_state": state,
        "log_extra": lambda *args, **kwargs: None,
        "log_metric": lambda *args, **kwargs: None,
    }
    return [p for p, _ in pairs], {**columns, **extras}


def _first_raising_row(guarded, spec: dict, start: int, end: int) -> int | None:
    """The first row of a batch that raised which raises alone too (None if none does: then
    it was the batch together), so the user knows which completion to look at."""
    if end - start == 1:
        return start
    for i in range(start, end):
        prompts, kwargs = _kwargs(spec, i, i + 1)
        try:
            guarded(prompts=prompts, completions=spec["completions"][i : i + 1], **kwargs)
        except (Exception, SystemExit):  # noqa: BLE001 - any failure of this one row will do
            return i
    return None


def main(work: Path) -> int:
    from trainers import rewards
    from trainers.errors import TrainerError

    spec = json.loads((work / INPUT).read_text(encoding="utf-8"))
    with open(work / RESULTS, "a", encoding="utf-8") as out:

        def record(**fields: object) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        began = time.perf_counter()
        try:
            raw = _load(work / spec["file"], spec["entrypoint"])
        except BaseException as err:  # noqa: BLE001 - user code: whatever it raised is the answer
            record(
                type="error",
                kind="load_failed",
                message=f"{type(err).__name__}: {err}",
                traceback=_frames(err, work),
                start=0,
                end=0,
                seconds=time.perf_counter() - began,
            )
            return 0
        record(type="loaded", seconds=time.perf_counter() - began)

        seen: dict[str, object] = {}

        def observed(**kwargs: object) -> object:
            seen.clear()
            try:
                seen["result"] = raw(**kwargs)
            except BaseException as err:
                seen["error"] = err
                raise
            return seen["result"]

        guarded = rewards.guard(observed, spec["name"], spec["timeout_s"])
        for start, end in _batches(spec):
            prompts, kwargs = _kwargs(spec, start, end)
            completions = spec["completions"][start:end]
            began = time.perf_counter()
            try:
                values = guarded(prompts=prompts, completions=completions, **kwargs)
            except (Exception, SystemExit) as err:  # noqa: BLE001 - SystemExit: a reward's own sys.exit()
                seconds = time.perf_counter() - began
                cause = seen.get("error") if isinstance(err, TrainerError) else err
                row, where = None, None
                if not isinstance(cause, BaseException):
                    kind, message, row = _problem(seen.get("result"), end - start, start)
                elif isinstance(cause, (Exception, SystemExit)):
                    kind, message, where = "raised", f"{type(cause).__name__}: {cause}", _frames(cause, work)
                    row = _first_raising_row(guarded, spec, start, end)
                else:  # the guard's time limit, raised inside the function: its frames show where it was
                    kind, where = "timeout", _frames(cause, work)
                    message = f"did not return within {spec['timeout_s']:g} s."
                record(
                    type="error",
                    kind=kind,
                    message=message,
                    job_error=str(err) if isinstance(err, TrainerError) else None,
                    traceback=where,
                    start=start,
                    end=end,
                    row=row,
                    seconds=seconds,
                )
                return 0
            record(type="call", start=start, end=end, seconds=time.perf_counter() - began, rewards=values)
        record(type="done")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
