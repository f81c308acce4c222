"""Property-based tests of the whole API against its own OpenAPI document (schemathesis 4).

Every documented operation gets generated requests, valid and invalid, sent with a real API
key to a real app on a real SQLite file. Whatever is sent, the server must answer with a
documented status code and a body matching the documented schema, and never a 5xx: API.md
says every bad input has a 4xx with a code.

Bounded so it stays a test, not a campaign: about 25 examples per operation, deterministic
(the same cases every run, so a failure reproduces), no shrinking.

No operation is excluded. The two that could hang or mislead are kept on a short leash
instead: the SSE log stream (`/v1/training_jobs/{job_id}/logs`) streams for as long as its job
is unfinished, so it only ever gets random ids (404) or a finished job's id (its log, then the
`[Job cancelled]` sentinel, then the end); `/files/{path}` gets generated signatures, which never
verify, so it answers 400/401/404 quickly. A real signed download is tested in test_serve.py.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
import schemathesis
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from veri_box.app import Box, create_app
from veri_box.settings import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"


def _seed(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """A dataset, a reward function and three jobs, so generated requests can hit real rows:
    one job stays queued for the whole run (reads then see an unfinished job, and the dataset
    and reward function stay in use), one is the job the cancel operation gets, and one is
    cancelled at once, for the SSE log stream, which ends only once its job has finished."""
    rows = b"".join(json.dumps(r).encode() + b"\n" for r in [{"prompt": "2+2?", "answer": "4"}, {"prompt": "hi"}])
    ds = client.post(
        "/v1/datasets",
        headers=headers,
        data={"name": "seed"},
        files={"file": ("seed.jsonl", rows, "application/jsonl")},
    )
    assert ds.status_code == 200, ds.text
    rf = client.post(
        "/v1/reward_functions",
        headers=headers,
        data={"name": "seed"},
        files={"file": ("reward.py", REWARD_SOURCE.encode())},
    )
    assert rf.status_code == 200, rf.text
    ids = {"dataset_id": ds.json()["id"], "rf_id": rf.json()["id"]}
    for name in ("job_id", "cancellable_job_id", "finished_job_id"):
        job = client.post(
            "/v1/training_jobs",
            headers=headers,
            json={
                "base_model": "veri-box/tiny-lm",  # built in: the fuzz box has no model cache
                "dataset_id": ids["dataset_id"],
                "reward_function_id": ids["rf_id"],
                "output_name": "seed",
                "gpu": {"type": "cpu", "count": 1},
            },
        )
        assert job.status_code == 200, job.text
        ids[name] = job.json()["id"]
    cancel = client.post(f"/v1/training_jobs/{ids['finished_job_id']}/cancel", headers=headers)
    assert cancel.status_code == 200, cancel.text
    return ids


# The schema is loaded when the module is imported (schemathesis makes one test per operation
# from it), so the app lives in a temp dir made here and removed when the process exits.
DATA_DIR = Path(tempfile.mkdtemp(prefix="veri-box-fuzz-"))
atexit.register(shutil.rmtree, DATA_DIR, ignore_errors=True)
# The API layer alone: jobs the fuzzer creates stay queued instead of starting trainers.
BOX = Box.open(Settings(data_dir=DATA_DIR / "data", gpus="none"))
APP = create_app(BOX, run_jobs=False)
_, KEY = BOX.store.create_api_key("fuzz")
HEADERS = {"Authorization": f"Bearer {KEY}"}
REAL_IDS: dict[str, str] = {}  # filled by the `seeded` fixture, read while cases are generated

schema = schemathesis.openapi.from_asgi(
    "/schema/openapi.json",
    APP,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20240501,
            "headers": HEADERS,
            "request-timeout": 10,
            "generation": {"max-examples": 25, "deterministic": True, "no-shrink": True, "database": "none"},
            # Following OpenAPI links statefully would multiply the run time; the checks here are per response.
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Random strings never name a real row; half the time use a seeded id instead, so the
    handlers get fuzzed past their "not found" branch."""
    path = context.operation.path if context.operation else ""
    if not path_parameters or not REAL_IDS:
        return st.just(path_parameters)
    real = {name: REAL_IDS[name] for name in path_parameters if name in REAL_IDS}
    if path.endswith("/cancel"):
        real = {"job_id": REAL_IDS["cancellable_job_id"]}
    elif path.endswith("/logs"):
        # The stream of an unfinished job never ends; the one of a finished job ends with its sentinel.
        real = {"job_id": REAL_IDS["finished_job_id"]}
    if not real:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, **real}])


@schema.hook
def flatmap_body(context, body):
    """Half the new-job bodies name the real dataset and the cpu device, so validation goes on
    to hyperparameters and reward sources instead of stopping at the first unknown id."""
    operation = context.operation
    if (
        not REAL_IDS
        or operation is None
        or operation.method != "post"
        or operation.path != "/v1/training_jobs"
        or not isinstance(body, dict)
    ):
        return st.just(body)
    real = {**body, "dataset_id": REAL_IDS["dataset_id"], "gpu": {"type": "cpu", "count": 1}}
    return st.sampled_from([body, real])


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    # Not `with TestClient(...)`: that would run the app's lifespan in a second event loop,
    # beside the one schemathesis runs it in.
    if not REAL_IDS:
        REAL_IDS.update(_seed(TestClient(APP), HEADERS))


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(checks=CHECKS)
