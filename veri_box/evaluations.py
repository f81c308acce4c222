"""Base against trained: a completed GRPO job's base model and trained model answer the same
prompts (typed, or rows drawn from the job's dataset), each answer scored by the job's own reward
functions, weighted as in training; the table and the two means are kept on the job.

The server never loads a model: `trainers/evaluate.py` does the work as a short-lived child in
the trainers' bubblewrap sandbox (the job directory read-only, a spool folder of its own
writable), on CPU, as a merge does, so it never waits for a GPU or takes one from a job. It can
take minutes on a big model, so `POST .../evaluate` answers 202 with a pending evaluation and a
background thread runs it (one at a time: each holds a model in memory); GET polls it. An
evaluation a server restart interrupted reads as failed (`evaluation_interrupted`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import litestar
import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from . import auth, cpu_child, dataset_files, job_config, paths
from .errors import bad_request, conflict, not_found
from .jobs import get as get_job
from .settings import Settings
from .statuses import JobStatus
from .store import Store, now

log = logging.getLogger("veri_box")

MODULE = "trainers.evaluate"
SPEC_FILE, RESULT_FILE, ERROR_FILE, OUTPUT = "input.json", "result.json", "error.json", "output.log"
MAX_PROMPTS = 64
DEFAULT_ROWS = 8
DEFAULT_MAX_TOKENS = 256  # capped by the job's max_response_length
WALL_S = 4 * 3600.0  # two generations with a big model on CPU take a while; a hung one must end
PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"

# Evaluation id -> its job id, for those this process runs or will run: the one-per-job check
# reads it under _guard, so two POSTs at once cannot both start (the row is inserted after it).
_active: dict[str, str] = {}
_guard = threading.Lock()
_one_at_a_time = threading.Lock()


def running(job_id: str) -> str | None:
    """The id of this job's evaluation that is pending or running in this server, if any."""
    return next((e for e, j in list(_active.items()) if j == job_id), None)


class EvaluateRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rows: Annotated[int, Meta(ge=1, le=MAX_PROMPTS)] | None = None
    prompts: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=20_000)]], Meta(min_length=1, max_length=MAX_PROMPTS)
        ]
        | None
    ) = None
    max_tokens: Annotated[int, Meta(ge=1, le=4096)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=10)] = 0.0
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] | None = None


class Answer(msgspec.Struct):
    answer: str
    reward: float | None  # the weighted sum of the functions' rewards (None: no function had an opinion)
    rewards: dict[str, float | None]  # each function's own value


class EvaluationRow(msgspec.Struct):
    prompt: str
    base: Answer
    trained: Answer


class EvaluationError(msgspec.Struct):
    code: str
    message: str
    traceback: str | None = None  # a reward function's own frames, most recent call last


class Evaluation(msgspec.Struct):
    id: str
    job_id: str
    status: str  # pending, running, completed, failed
    source: str  # "dataset" (rows drawn from the job's dataset) or "prompts" (given)
    rows: list[EvaluationRow]
    base_mean: float | None
    trained_mean: float | None
    max_tokens: int
    temperature: float
    seed: int
    dataset_rows: list[int] | None  # the dataset's row numbers drawn (source "dataset")
    error: EvaluationError | None
    seconds: dict[str, float] | None
    created_by: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    object: str = "evaluation"


class EvaluationList(msgspec.Struct):
    data: list[Evaluation]
    object: str = "list"


# -- the store (table evaluations, migration m014_evaluations) --------------------------------


def _insert(store: Store, row: dict) -> None:
    encoded = {k: json.dumps(v) if k in ("request", "result", "error") and v is not None else v for k, v in row.items()}
    with store.transaction() as conn:
        conn.execute(
            f"INSERT INTO evaluations ({', '.join(encoded)}) VALUES ({', '.join('?' * len(encoded))})",
            list(encoded.values()),
        )


def _update(store: Store, evaluation_id: str, **fields: Any) -> None:
    encoded = {k: json.dumps(v) if k in ("result", "error") and v is not None else v for k, v in fields.items()}
    try:
        with store.transaction() as conn:
            conn.execute(
                f"UPDATE evaluations SET {', '.join(f'{k} = ?' for k in encoded)} WHERE id = ?",
                [*encoded.values(), evaluation_id],
            )
    except Exception:  # noqa: BLE001 - the job (and its evaluations) was deleted meanwhile
        log.warning("evaluation %s: could not record %s", evaluation_id, fields.get("status"))


def _to_api(store: Store, row: dict) -> Evaluation:
    if row["status"] in (PENDING, RUNNING) and row["id"] not in _active:
        # Nothing in this process runs it: the server stopped while it ran.
        error = {
            "code": "evaluation_interrupted",
            "message": "The server stopped during the evaluation; start it again.",
        }
        _update(store, row["id"], status=FAILED, error=error, completed_at=now())
        row = {**row, "status": FAILED, "error": error, "completed_at": row["completed_at"] or now()}
    request, result = row["request"], row["result"] or {}
    return Evaluation(
        id=row["id"],
        job_id=row["job_id"],
        status=row["status"],
        source=request["source"],
        rows=msgspec.convert(result.get("rows", []), list[EvaluationRow]),
        base_mean=result.get("base_mean"),
        trained_mean=result.get("trained_mean"),
        max_tokens=request["max_tokens"],
        temperature=request["temperature"],
        seed=request["seed"],
        dataset_rows=request.get("dataset_rows"),
        error=msgspec.convert(row["error"], EvaluationError) if row["error"] else None,
        seconds=result.get("seconds"),
        created_by=row["created_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
    )


# -- checks and inputs ---------------------------------------------------------------------------


def check_evaluable(settings: Settings, job: dict) -> None:
    """4xx unless the job is a completed GRPO job with its model on this box."""
    if job["method"] != "grpo":
        raise bad_request(
            "evaluation_not_supported",
            f"Job {job['id']} is a {job['method']} (video) job; only GRPO jobs have reward functions to compare by.",
        )
    if job["environments"]:
        raise bad_request(
            "evaluation_not_supported",
            f"Job {job['id']} is scored by OpenReward environments, not reward functions of this box; "
            "its base and trained models cannot be compared here.",
        )
    if job["status"] != JobStatus.COMPLETED:
        raise conflict(
            "job_not_completed", f"Job {job['id']} is {job['status']}; only a completed job can be evaluated."
        )
    if (
        not (paths.output_dir(settings.data_dir, job["id"]) / "config.json").is_file()
        and not (paths.output_dir(settings.data_dir, job["id"]) / "adapter_config.json").is_file()
    ):
        raise conflict("model_not_available", f"Job {job['id']}'s trained model is not on this box.")


def _rows(
    store: Store, settings: Settings, job: dict, body: EvaluateRequest, seed: int
) -> tuple[str, list, list | None]:
    """(source, rows for the child, the dataset's row numbers) for the request."""
    if body.prompts is not None:
        return "prompts", [{"prompt": p} for p in body.prompts], None
    dataset = store.get_dataset(job["dataset_id"]) if job["dataset_id"] else None
    if dataset is None:
        raise conflict(
            "dataset_not_found",
            f"Job {job['id']}'s dataset {job['dataset_id']} is gone; send prompts to evaluate on instead.",
            "rows",
        )
    count = min(body.rows or DEFAULT_ROWS, dataset["num_rows"])
    numbers = sorted(random.Random(seed).sample(range(dataset["num_rows"]), count))
    folder = paths.dataset_dir(settings.data_dir, dataset["id"])
    rows = dataset_files.rows_at(folder, dataset["format"], dataset["path"], numbers)
    return "dataset", rows, numbers


# -- the run -------------------------------------------------------------------------------------


def _spec(store: Store, settings: Settings, job: dict, request: dict, rows: list) -> dict:
    data_dir = settings.data_dir
    rewards = []
    for entry in job["reward_functions"]:
        rf = store.get_reward_function(entry["id"])
        copy = job_config.reward_function_copy(data_dir, job["id"], entry["id"])
        rewards.append(
            {
                "id": entry["id"],
                "name": rf["name"] if rf else entry.get("name", entry["id"]),
                "entrypoint": rf["entrypoint"] if rf else entry.get("entrypoint", "reward"),
                "path": str(copy),
                "weight": float(entry["weight"]),
            }
        )
    hp = job["hyperparameters"] or {}
    return {
        "base_model": job["base_model"],
        "models_dir": str(paths.models_dir(data_dir)),
        "output_dir": str(paths.output_dir(data_dir, job["id"])),
        "reward_functions": rewards,
        "hyperparameters": {
            "system_prompt": hp.get("system_prompt"),
            "max_prompt_length": hp.get("max_prompt_length") or 1024,
        },
        "timeout_s": hp.get("reward_timeout_s") or 300,
        "format": request["format"],
        "rows": rows,
        "max_tokens": request["max_tokens"],
        "temperature": request["temperature"],
        "seed": request["seed"],
    }


def _run(store: Store, settings: Settings, job: dict, evaluation_id: str, spec: dict) -> None:
    spool = paths.spool_dir(settings.data_dir)
    try:
        with _one_at_a_time:
            _update(store, evaluation_id, status=RUNNING, started_at=now())
            spool.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="evaluation-", dir=spool))
            try:
                (work / SPEC_FILE).write_text(json.dumps(spec), encoding="utf-8")
                command, env = cpu_child.command(settings, job, MODULE, work)
                code = cpu_child.run(command, env, work, work / OUTPUT, WALL_S, grace_s=settings.cancel_grace_s)
                if code == 0 and (work / RESULT_FILE).is_file():
                    result = json.loads((work / RESULT_FILE).read_text(encoding="utf-8"))
                    _update(store, evaluation_id, status=COMPLETED, result=result, completed_at=now())
                    return
                if code is None:
                    error = {
                        "code": "evaluation_failed",
                        "message": f"It did not finish within {WALL_S / 3600:g} hours.",
                    }
                elif (work / ERROR_FILE).is_file():
                    error = json.loads((work / ERROR_FILE).read_text(encoding="utf-8"))
                else:
                    error = {
                        "code": "evaluation_failed",
                        "message": f"The evaluation ended with exit code {code}: {cpu_child.tail(work / OUTPUT)}",
                    }
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except Exception as err:  # noqa: BLE001 - a full disk, a job folder deleted meanwhile
        error = {"code": "evaluation_failed", "message": f"The evaluation could not run: {err}"}
    finally:
        with _guard:
            _active.pop(evaluation_id, None)
    log.warning("evaluation %s of job %s failed: %s: %s", evaluation_id, job["id"], error["code"], error["message"])
    _update(store, evaluation_id, status=FAILED, error=error, completed_at=now())


# -- service functions (the API's controller and the dashboard call these) ---------------------


def start(store: Store, settings: Settings, job_id: str, body: EvaluateRequest, created_by: str | None) -> Evaluation:
    """Check the request, record a pending evaluation and start it in the background."""
    if body.rows is not None and body.prompts is not None:
        raise bad_request("rows_and_prompts", "Send rows (drawn from the job's dataset) or prompts, not both.", "rows")
    job = get_job(store, job_id)
    check_evaluable(settings, job)
    if body.rows is None and body.prompts is None:
        body = msgspec.structs.replace(body, rows=DEFAULT_ROWS)
    hp = job["hyperparameters"] or {}
    seed = body.seed if body.seed is not None else int(hp.get("seed") or 0)
    source, rows, numbers = _rows(store, settings, job, body, seed)
    limit = int(hp.get("max_response_length") or DEFAULT_MAX_TOKENS)
    request = {
        "source": source,
        "format": "prompt_only" if source == "prompts" else store.get_dataset(job["dataset_id"])["format"],
        "max_tokens": body.max_tokens or min(DEFAULT_MAX_TOKENS, limit),
        "temperature": body.temperature,
        "seed": seed,
        "dataset_rows": numbers,
    }
    with _guard:
        busy = running(job_id)
        if busy is not None:
            raise conflict(
                "evaluation_running", f"Job {job_id} has an evaluation pending or running ({busy}); wait for it to end."
            )
        evaluation_id = f"eval_{uuid.uuid4().hex[:24]}"
        _active[evaluation_id] = job_id
    try:
        spec = _spec(store, settings, job, request, rows)
        _insert(
            store,
            {
                "id": evaluation_id,
                "job_id": job_id,
                "status": PENDING,
                "request": request,
                "created_by": created_by,
                "created_at": now(),
            },
        )
    except BaseException:
        with _guard:
            _active.pop(evaluation_id, None)
        raise
    threading.Thread(
        target=_run, args=(store, settings, job, evaluation_id, spec), name=f"evaluate-{job_id}", daemon=True
    ).start()
    return get(store, job_id, evaluation_id)


def list_rows(store: Store, job_id: str) -> list[dict]:
    return store._rows(
        "SELECT * FROM evaluations WHERE job_id = ? ORDER BY created_at DESC, rowid DESC", [job_id], "evaluations"
    )


def list_for_job(store: Store, job_id: str) -> list[Evaluation]:
    """The job's evaluations, newest first."""
    get_job(store, job_id)
    return [_to_api(store, row) for row in list_rows(store, job_id)]


def get(store: Store, job_id: str, evaluation_id: str) -> Evaluation:
    row = store._one("SELECT * FROM evaluations WHERE id = ? AND job_id = ?", [evaluation_id, job_id], "evaluations")
    if row is None:
        get_job(store, job_id)
        raise not_found("evaluation", evaluation_id)
    return _to_api(store, row)


# -- routes --------------------------------------------------------------------------------------


class EvaluationController(Controller):
    path = "/v1/training_jobs"
    tags = ["training jobs"]

    @litestar.post("/{job_id:str}/evaluate", status_code=202, sync_to_thread=True, opt={"rule": "owner", "owns": "job"})
    def evaluate(
        self,
        request: Request,
        job_id: FromPath[str],
        store: NamedDependency[Store],
        settings: NamedDependency[Settings],
        data: JSONBody[EvaluateRequest],
    ) -> Evaluation:
        """Compare a completed GRPO job's base and trained models on the same prompts (rows drawn from
        its dataset, or given), each answer scored by the job's reward functions. Runs in the
        background: poll GET .../evaluations/{id}."""
        return start(store, settings, job_id, data, auth.caller_id(request))

    @litestar.get("/{job_id:str}/evaluations", sync_to_thread=True)
    def evaluations(self, job_id: FromPath[str], store: NamedDependency[Store]) -> EvaluationList:
        """The job's evaluations, newest first."""
        return EvaluationList(data=list_for_job(store, job_id))

    @litestar.get("/{job_id:str}/evaluations/{evaluation_id:str}", sync_to_thread=True)
    def evaluation(
        self, job_id: FromPath[str], evaluation_id: FromPath[str], store: NamedDependency[Store]
    ) -> Evaluation:
        """One evaluation (poll it until status is completed or failed)."""
        return get(store, job_id, evaluation_id)
