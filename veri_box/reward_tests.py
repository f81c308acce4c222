"""Reward test runs: a reward function called on a few rows of a dataset, in the trainer's sandbox,
before a job spends a GPU hour finding out it raises, returns NaN, hangs or miscounts.

The server never imports the function (reward_functions.py): it copies the file and the rows into
a folder of its own, runs `python -m trainers.reward_test` there as a short-lived child in the
same bubblewrap sandbox (and environment) as a trainer, under a wall-clock limit, and reads back
the JSON lines the child wrote. Completions come from the dataset (a `completion`, `answer` or
`response` column) or are typed by the user; prompts are the dataset's own (a job renders string
prompts through the model's chat template first, which needs the model).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import litestar
import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from trainers.contract import DatasetConfig, Devices, JobConfig

from . import cpu_child, dataset_files, datasets, executors, paths, sandbox
from . import reward_functions as rf_mod
from .errors import ApiError, bad_request
from .inventory import CPU
from .settings import Settings
from .store import Store

MODULE = "trainers.reward_test"
INPUT, RESULTS, OUTPUT = "input.json", "results.jsonl", "output.log"
MAX_ROWS = 256
DEFAULT_ROWS = 16
COMPLETION_COLUMNS = ("completion", "answer", "response")
LOAD_ALLOWANCE_S = 20.0  # start-up and the function's own imports (numpy, say) on a busy box
MAX_WALL_S = 120.0
OUTPUT_TAIL = 4000
SHOWN_CHARS = 300
HISTOGRAM_BINS = 10
# Each test is a Python process; a dashboard user clicking "Test" ten times must not start ten.
_RUNNING = threading.BoundedSemaphore(2)

Completion = str | list[dict[str, Any]]  # plain text, or a conversational completion (messages)


class RewardTestRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dataset_id: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    rows: Annotated[int, Meta(ge=1)] | None = None
    offset: Annotated[int, Meta(ge=0, le=2**31)] = 0
    completions: Annotated[list[Completion], Meta(min_length=1)] | None = None
    completion_column: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    batch_size: Annotated[int, Meta(ge=1, le=MAX_ROWS)] = 8
    timeout_s: Annotated[float, Meta(ge=0.1, le=60)] = 10.0


class InlineRewardTestRequest(RewardTestRequest, kw_only=True):
    source: Annotated[str, Meta(min_length=1, max_length=rf_mod.MAX_SOURCE_BYTES)]
    name: Annotated[str, Meta(min_length=1, max_length=200)] = "inline reward"


class RewardTestRow(msgspec.Struct):
    row: int  # the dataset's row number (or the typed completion's index)
    prompt: str  # shortened for display, as is the completion
    completion: str
    reward: float | None


class Bin(msgspec.Struct):
    low: float
    high: float
    count: int


class Distribution(msgspec.Struct):
    count: int  # rewards that are numbers (None means "no opinion" to TRL)
    none: int
    min: float | None
    mean: float | None
    max: float | None
    histogram: list[Bin]


class Timing(msgspec.Struct):
    load_s: float | None  # importing the file
    calls: int
    mean_call_s: float | None
    max_call_s: float | None


class RewardTestError(msgspec.Struct):
    # load_failed, raised, timeout, wrong_type, wrong_length, invalid_value, time_limit, crashed
    kind: str
    message: str
    rows: list[int]  # the rows of the call that failed (or that were never scored)
    traceback: str | None = None  # the user's own frames, most recent call last
    row: int | None = None  # the row of the bad value (invalid_value), or the first that raises alone (raised)
    job_error: str | None = None  # what a job would fail with (reward_function_error's message)


class RewardTest(msgspec.Struct):
    reward_function_id: str | None
    entrypoint: str
    dataset_id: str | None
    passed: bool
    results: list[RewardTestRow]
    distribution: Distribution
    timing: Timing
    error: RewardTestError | None
    output: str  # what the function printed (its last 4,000 characters)
    sandbox: str
    object: str = "reward_test"


# -- the rows and completions ------------------------------------------------------------------


def _completion_column(dataset: dict, asked: str | None) -> str | None:
    if asked is not None:
        if asked not in dataset["columns"]:
            raise bad_request(
                "unknown_column",
                f"Dataset {dataset['id']} has no column '{asked}'; its columns: {', '.join(dataset['columns'])}.",
                "completion_column",
            )
        return asked
    return next((c for c in COMPLETION_COLUMNS if c in dataset["columns"]), None)


def _as_completion(value: Any) -> Any:
    """A column value as a trainer's completion: text, or a conversation left as messages."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
        return value
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _rows_and_completions(
    store: Store, settings: Settings, body: RewardTestRequest
) -> tuple[dict | None, list[dict], list[Any], list[int]]:
    """(dataset row, its rows, the completions, the row numbers) the test runs on; 4xx on bad input."""
    count = body.rows if body.rows is not None else len(body.completions or []) or DEFAULT_ROWS
    if count > MAX_ROWS or len(body.completions or []) > MAX_ROWS:
        param = "rows" if body.rows is not None and body.rows > MAX_ROWS else "completions"
        raise bad_request("too_many_rows", f"A reward test runs on at most {MAX_ROWS} rows.", param)
    if body.completions is not None and body.rows is not None and body.rows != len(body.completions):
        raise bad_request(
            "completions_mismatch",
            f"rows is {body.rows} but {len(body.completions)} completions were sent; send one completion per row "
            "(or leave rows out).",
            "completions",
        )
    if body.dataset_id is None:
        if body.completions is None:
            raise bad_request(
                "no_completions",
                "Send dataset_id (a dataset with a completion, answer or response column), completions "
                "(one per row), or both.",
                "completions",
            )
        return None, [], list(body.completions), list(range(len(body.completions)))
    dataset = store.get_dataset(body.dataset_id)
    if dataset is None:
        raise ApiError(404, "dataset_not_found", f"No dataset with id '{body.dataset_id}'.", "dataset_id")
    if "grpo" not in dataset_files.compatible_methods(dataset["format"]):
        raise bad_request(
            "dataset_format_incompatible",
            f"Dataset {dataset['id']} is {dataset['format']}; reward functions score GRPO prompt datasets.",
            "dataset_id",
        )
    column = None if body.completions is not None else _completion_column(dataset, body.completion_column)
    if body.completions is None and column is None:
        raise bad_request(
            "no_completions",
            f"Dataset {dataset['id']} has no completion, answer or response column (its columns: "
            f"{', '.join(dataset['columns'])}); send completions (one per row) or name one with completion_column.",
            "completions",
        )
    rows = datasets.rows(store, settings, dataset["id"], body.offset, count).data
    if not rows:
        raise bad_request(
            "invalid_value",
            f"Dataset {dataset['id']} has {dataset['num_rows']} rows; offset {body.offset} is past its end.",
            "offset",
        )
    if body.completions is not None and len(rows) < len(body.completions):
        raise bad_request(
            "completions_mismatch",
            f"Dataset {dataset['id']} has {len(rows)} rows from offset {body.offset}, fewer than the "
            f"{len(body.completions)} completions sent.",
            "completions",
        )
    completions = list(body.completions) if body.completions is not None else [_as_completion(r[column]) for r in rows]
    return dataset, rows, completions, list(range(body.offset, body.offset + len(rows)))


# -- the run -------------------------------------------------------------------------------------


def _command(settings: Settings, work: Path) -> tuple[list[str], dict[str, str]]:
    """The trainer's command line and environment for the child, sandboxed as a trainer is: the
    sandbox sees the test's folder (writable, its only one) and nothing else of the data dir."""
    command, env = executors.trainer_command(MODULE, work, CPU, [], cpu_threads=1)
    if sandbox.resolve(settings.sandbox) != sandbox.Mode.BWRAP:
        return command, env
    config = JobConfig(
        job_id=work.name,
        method="grpo",
        trainer=MODULE,
        base_model="",
        output_name="",
        dataset=DatasetConfig(id="", format="", columns=[], num_rows=0, path=str(work / INPUT)),
        reward_functions=[],
        environments=None,
        openreward=None,
        hyperparameters={},
        seed=None,
        devices=Devices(type=CPU, count=1, indices=[]),
        job_dir=str(work),
        output_dir=str(work),
        models_dir="",
        checkpoints_dir=str(work),
    )
    return executors.sandboxed_command(config, command, env, sandbox.host(settings.data_dir, env))


def _run_child(settings: Settings, work: Path, wall_s: float) -> tuple[int | None, bool]:
    """(exit code, whether the wall-clock limit killed it): cpu_child.run, so the child's whole
    process group goes at the limit, and with the server should it stop first."""
    command, env = _command(settings, work)
    with _RUNNING:
        code = cpu_child.run(command, env, work, work / OUTPUT, wall_s, grace_s=settings.cancel_grace_s)
    return code, code is None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _prompt(row: dict) -> Any:
    for key in ("prompt", "messages", "conversations", "instruction"):
        if key in row:
            return row[key]
    return ""


def _distribution(values: list[float | None]) -> Distribution:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return Distribution(count=0, none=len(values), min=None, mean=None, max=None, histogram=[])
    low, high = min(numbers), max(numbers)
    bins = HISTOGRAM_BINS if high > low else 1
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in numbers:
        counts[min(int((v - low) / width), bins - 1)] += 1
    edges = [_round(low + i * width) for i in range(bins)] + [high]
    histogram = [Bin(low=edges[i], high=edges[i + 1], count=c) for i, c in enumerate(counts)]
    return Distribution(
        count=len(numbers),
        none=len(values) - len(numbers),
        min=low,
        mean=statistics.fmean(numbers),
        max=high,
        histogram=histogram,
    )


def _round(value: float) -> float:
    """A bin edge without the float noise of low + i * width (0.30000000000000004)."""
    return float(f"{value:.12g}")


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - OUTPUT_TAIL))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _run(
    store: Store,
    settings: Settings,
    body: RewardTestRequest,
    source: str,
    entrypoint: str,
    name: str,
    rf_id: str | None = None,
) -> RewardTest:
    """Run the test of a checked reward function `source` (whose entrypoint is known)."""
    dataset, rows, completions, numbers = _rows_and_completions(store, settings, body)
    calls = -(-len(completions) // body.batch_size)
    wall_s = min(MAX_WALL_S, LOAD_ALLOWANCE_S + calls * (body.timeout_s + 1))
    spool = paths.spool_dir(settings.data_dir)
    spool.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reward-test-", dir=spool))
    try:
        file = f"{rf_id or 'reward'}.py"
        (work / file).write_text(source, encoding="utf-8")
        spec = {
            "file": file,
            "entrypoint": entrypoint,
            "name": name,
            "format": dataset["format"] if dataset else None,
            "rows": rows,
            "completions": completions,
            "batch_size": body.batch_size,
            "timeout_s": body.timeout_s,
        }
        (work / INPUT).write_text(json.dumps(spec), encoding="utf-8")
        code, killed = _run_child(settings, work, wall_s)
        records = [json.loads(line) for line in _lines(work / RESULTS)]
        output = _tail(work / OUTPUT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(
        records, code, killed, wall_s, output, rows, completions, numbers, dataset, entrypoint, rf_id, settings
    )


def _lines(path: Path) -> list[str]:
    """The complete lines of the child's results: a line cut short by a kill is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return [line for line in text.split("\n")[:-1] if line]


def _report(
    records: list[dict],
    code: int | None,
    killed: bool,
    wall_s: float,
    output: str,
    rows: list[dict],
    completions: list[Any],
    numbers: list[int],
    dataset: dict | None,
    entrypoint: str,
    rf_id: str | None,
    settings: Settings,
) -> RewardTest:
    rewards: dict[int, float | None] = {}
    seconds: list[float] = []
    load_s, error = None, None
    for rec in records:
        if rec["type"] == "loaded":
            load_s = rec["seconds"]
        elif rec["type"] == "call":
            seconds.append(rec["seconds"])
            rewards.update(zip(range(rec["start"], rec["end"]), rec["rewards"]))
        elif rec["type"] == "error":
            if rec["kind"] == "load_failed":
                load_s = rec["seconds"]
            error = RewardTestError(
                kind=rec["kind"],
                message=rec["message"],
                traceback=rec.get("traceback"),
                rows=[numbers[i] for i in range(rec["start"], rec["end"])],
                row=None if rec.get("row") is None else numbers[rec["row"]],
                job_error=rec.get("job_error"),
            )
    done = any(rec["type"] == "done" for rec in records)
    if error is None and not done:
        first = len(rewards)
        rest = [numbers[i] for i in range(first, len(completions))]
        if killed:
            message = f"the test did not finish within its {wall_s:g} s limit (loading the file, or the calls)."
        else:
            message = f"the test process ended with exit code {code} before the function returned (see output)."
        error = RewardTestError(kind="time_limit" if killed else "crashed", message=message, rows=rest)
    results = [
        RewardTestRow(
            row=numbers[i],
            prompt=_short(_prompt(rows[i])) if rows else "",
            completion=_short(completions[i]),
            reward=rewards[i],
        )
        for i in sorted(rewards)
    ]
    return RewardTest(
        reward_function_id=rf_id,
        entrypoint=entrypoint,
        dataset_id=dataset["id"] if dataset else None,
        passed=error is None,
        results=results,
        distribution=_distribution(list(rewards.values())),
        timing=Timing(
            load_s=load_s,
            calls=len(seconds),
            mean_call_s=statistics.fmean(seconds) if seconds else None,
            max_call_s=max(seconds) if seconds else None,
        ),
        error=error,
        output=output,
        sandbox=str(sandbox.resolve(settings.sandbox)),
    )


# -- service functions (the API's controller and the dashboard both call these) ---------------


def run_stored(store: Store, settings: Settings, rf_id: str, body: RewardTestRequest) -> RewardTest:
    row = rf_mod.get(store, rf_id)
    source = rf_mod.source(store, settings, rf_id).decode("utf-8-sig")
    return _run(store, settings, body, source, row["entrypoint"], row["name"], rf_id)


def run_inline(store: Store, settings: Settings, body: InlineRewardTestRequest) -> RewardTest:
    entrypoint = rf_mod.find_entrypoint(body.source, "source")
    return _run(store, settings, body, body.source, entrypoint, body.name)


# -- routes --------------------------------------------------------------------------------------
# Plain handlers, not a Controller on /v1/reward_functions: `/test` is a path of its own, which
# the router matches before `/{rf_id}`.


@litestar.post(
    "/v1/reward_functions/test", status_code=200, sync_to_thread=True, tags=["reward functions"], opt={"rule": "member"}
)
def inline_test(
    store: NamedDependency[Store], settings: NamedDependency[Settings], data: JSONBody[InlineRewardTestRequest]
) -> RewardTest:
    """Run an inline reward function (a job's `reward_source`) on rows of a dataset, in the sandbox."""
    return run_inline(store, settings, data)


@litestar.post(
    "/v1/reward_functions/{rf_id:str}/test",
    status_code=200,
    sync_to_thread=True,
    tags=["reward functions"],
    opt={"rule": "member"},
)
def stored_test(
    store: NamedDependency[Store],
    settings: NamedDependency[Settings],
    rf_id: FromPath[str],
    data: JSONBody[RewardTestRequest],
) -> RewardTest:
    """Run an uploaded reward function on rows of a dataset, in the sandbox."""
    return run_stored(store, settings, rf_id, data)


ROUTES = [inline_test, stored_test]
