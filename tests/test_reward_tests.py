"""Reward test runs through the API: a real app on real SQLite, the function run by the real
child (`python -m trainers.reward_test`) in the real bubblewrap sandbox, with good, raising,
NaN, slow, wrong-length, crashing and import-time-hanging functions."""

from __future__ import annotations

import html
import time
from pathlib import Path

import pytest
from test_dashboard import Browser

from veri_box import paths, reward_tests, sandbox

ROWS = [
    {"prompt": "What is 2+2?", "answer": "4"},
    {"prompt": "What is 3+1?", "answer": "4"},
    {"prompt": "Say hi", "answer": "hi"},
    {"prompt": "What is 1+1?", "answer": "2"},
    {"prompt": "Name a color.", "answer": "red"},
]
GOOD = """
def reward(completions, answer, **kwargs):
    print("scored", len(completions))
    return [float(c == "4") + 0.5 * (a == "hi") for c, a in zip(completions, answer)]
"""
RAISING = """
def _parse(text):
    return int(text)


def reward(completions, **kwargs):
    return [float(_parse(c)) for c in completions]
"""
NAN = """
def reward(completions, **kwargs):
    return [float("nan") if c == "hi" else 1.0 for c in completions]
"""
SLOW = """
import time


def reward(completions, **kwargs):
    time.sleep(30)
    return [1.0 for c in completions]
"""
WRONG_LENGTH = """
def reward(completions, **kwargs):
    return [1.0]
"""


@pytest.fixture
def dataset(api) -> str:
    return api.dataset(ROWS)


def result_of(api, source: str, **body) -> dict:
    """Upload `source` and test it; the answer's JSON (status 200 asserted)."""
    rf = api.reward_function(source)
    r = api.post(f"/v1/reward_functions/{rf}/test", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_good_function_scores_each_row_with_its_distribution_and_timing(api, dataset):
    result = result_of(api, GOOD, dataset_id=dataset, batch_size=2)
    assert result["object"] == "reward_test" and result["passed"] is True and result["error"] is None
    assert [(r["row"], r["completion"], r["reward"]) for r in result["results"]] == [
        (0, "4", 1.0),
        (1, "4", 1.0),
        (2, "hi", 0.5),
        (3, "2", 0.0),
        (4, "red", 0.0),
    ]
    assert result["results"][0]["prompt"] == "What is 2+2?"
    d = result["distribution"]
    assert (d["count"], d["none"], d["min"], d["max"]) == (5, 0, 0.0, 1.0) and d["mean"] == pytest.approx(0.5)
    assert sum(b["count"] for b in d["histogram"]) == 5
    assert (d["histogram"][0]["low"], d["histogram"][-1]["high"]) == (0.0, 1.0)
    assert [b["count"] for b in d["histogram"] if b["count"]] == [2, 1, 2]
    timing = result["timing"]
    assert timing["calls"] == 3 and 0 <= timing["mean_call_s"] <= timing["max_call_s"] < 5  # rows in threes: 2, 2, 1
    assert result["output"].splitlines() == ["scored 2", "scored 2", "scored 1"]
    assert result["sandbox"] == str(sandbox.resolve(api.settings.sandbox))
    leftovers = list(paths.spool_dir(api.settings.data_dir).glob("reward-test-*"))
    assert leftovers == [], "the test's folder is removed after the run"


def test_rows_offset_and_a_chosen_column(api, dataset):
    source = "def reward(completions, prompts, **kwargs):\n    return [float(len(c)) for c in completions]\n"
    result = result_of(api, source, dataset_id=dataset, rows=2, offset=2, completion_column="prompt")
    assert [(r["row"], r["completion"], r["reward"]) for r in result["results"]] == [
        (2, "Say hi", 6.0),
        (3, "What is 1+1?", 12.0),
    ]


def test_a_raising_function_reports_its_own_frames_only(api, dataset):
    result = result_of(api, RAISING, dataset_id=dataset, batch_size=2)
    error = result["error"]
    assert result["passed"] is False and error["kind"] == "raised"
    # Rows 0 and 1 ("4", "4") parse; the second call ("hi") raises.
    assert [r["reward"] for r in result["results"]] == [4.0, 4.0]
    assert error["message"] == "ValueError: invalid literal for int() with base 10: 'hi'"
    assert error["rows"] == [2, 3] and error["row"] == 2, "row 2 raises on its own: the one to look at"
    trace = error["traceback"]
    assert "line 7, in reward" in trace and "line 3, in _parse" in trace and "return int(text)" in trace
    assert "trainers" not in trace and "importlib" not in trace and "reward_test" not in trace, trace
    assert "raised ValueError" in error["job_error"] and "What is 1+1?" not in error["job_error"]


def test_a_nan_names_the_row_it_came_from(api, dataset):
    result = result_of(api, NAN, dataset_id=dataset, batch_size=2)
    error = result["error"]
    assert error["kind"] == "invalid_value" and error["row"] == 2 and error["rows"] == [2, 3]
    assert "returned nan for row 2" in error["message"] and "finite" in error["message"]
    assert "nan" in error["job_error"] and error["traceback"] is None
    assert [r["row"] for r in result["results"]] == [0, 1], "the calls before it keep their rewards"


def test_a_slow_function_stops_at_the_time_limit_and_shows_where_it_was(api, dataset):
    started = time.monotonic()
    result = result_of(api, SLOW, dataset_id=dataset, timeout_s=1)
    assert time.monotonic() - started < 15
    error = result["error"]
    assert error["kind"] == "timeout" and error["message"] == "did not return within 1 s."
    assert "time.sleep(30)" in error["traceback"], error
    assert result["results"] == [] and result["timing"]["calls"] == 0


def test_a_wrong_number_of_rewards_is_caught(api, dataset):
    result = result_of(api, WRONG_LENGTH, dataset_id=dataset, batch_size=4)
    error = result["error"]
    assert error["kind"] == "wrong_length" and error["message"] == "returned 1 rewards for 4 completions."
    assert error["rows"] == [0, 1, 2, 3] and "returned 1 rewards for 4 completions" in error["job_error"]


def test_an_import_error_and_a_crash(api, dataset):
    broken = "import not_a_module_anywhere\n\ndef reward(completions, **kwargs):\n    return []\n"
    result = result_of(api, broken, dataset_id=dataset)
    error = result["error"]
    assert error["kind"] == "load_failed" and "ModuleNotFoundError" in error["message"]
    assert "line 1, in <module>" in error["traceback"] and "importlib" not in error["traceback"]

    crash = "import os\n\ndef reward(completions, **kwargs):\n    os._exit(3)\n"
    error = result_of(api, crash, dataset_id=dataset)["error"]
    assert error["kind"] == "crashed" and "exit code 3" in error["message"] and error["rows"] == [0, 1, 2, 3, 4]


def test_a_file_that_hangs_on_import_is_killed_at_the_wall_clock_limit(api, dataset, monkeypatch):
    monkeypatch.setattr(reward_tests, "LOAD_ALLOWANCE_S", 2.0)
    source = (
        "import subprocess, time\nsubprocess.Popen(['sleep', '987.25'])\ntime.sleep(600)\n\n"
        "def reward(completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )
    started = time.monotonic()
    result = result_of(api, source, dataset_id=dataset, rows=1, timeout_s=1)
    assert time.monotonic() - started < 15
    assert result["error"]["kind"] == "time_limit" and "4 s limit" in result["error"]["message"]
    time.sleep(0.5)
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"987.25" in _read(p)]
    assert left == [], "the function's own children are killed with it"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(sandbox.works() is not None, reason="bubblewrap does not work here")
def test_it_runs_in_the_trainers_sandbox(api, dataset, monkeypatch):
    monkeypatch.setenv("VERI_TEST_SECRET", "hunter2")
    db = paths.db(api.settings.data_dir)
    source = (
        "import os\n\ndef reward(completions, **kwargs):\n"
        f"    return [float(os.path.exists({str(db)!r})) + 2 * float('VERI_TEST_SECRET' in os.environ)"
        " for c in completions]\n"
    )
    assert db.exists()
    result = result_of(api, source, dataset_id=dataset, rows=1)
    assert result["sandbox"] == "bwrap" and [r["reward"] for r in result["results"]] == [0.0]


def test_an_inline_source_with_typed_completions_and_the_rows_columns(api, dataset):
    source = (
        "def score(prompts, completions, answer, trainer_state, **kw):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"
    )
    r = api.post(
        "/v1/reward_functions/test", json={"source": source, "dataset_id": dataset, "completions": ["4", "5", "hi"]}
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["reward_function_id"] is None and result["entrypoint"] == "score"
    assert [(r["prompt"], r["completion"], r["reward"]) for r in result["results"]] == [
        ("What is 2+2?", "4", 1.0),
        ("What is 3+1?", "5", 0.0),
        ("Say hi", "hi", 1.0),
    ]
    plain = "def reward(completions, **kw):\n    return [None for c in completions]\n"
    result = api.post("/v1/reward_functions/test", json={"source": plain, "completions": ["a", "b"]}).json()
    assert result["passed"] and result["distribution"]["none"] == 2 and result["distribution"]["min"] is None


def error_of(response, status: int, code: str, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return error["message"]


def test_bad_inputs_are_4xx_with_codes_and_leave_nothing_behind(api, dataset):
    rf = api.reward_function(GOOD)
    no_column = api.dataset([{"prompt": "a"}, {"prompt": "b"}])
    post = api.post
    url = f"/v1/reward_functions/{rf}/test"
    bad_source = {"source": "def reward(x):\n  return []\n", "completions": ["a"]}
    cases = [
        ("/v1/reward_functions/rf_nope/test", {"dataset_id": dataset}, 404, "reward_function_not_found", None),
        (url, {"dataset_id": "ds_nope"}, 404, "dataset_not_found", "dataset_id"),
        (url, {}, 400, "no_completions", "completions"),
        (url, {"dataset_id": no_column}, 400, "no_completions", "completions"),
        (url, {"dataset_id": dataset, "rows": 257}, 400, "too_many_rows", "rows"),
        (url, {"completions": ["x"] * 257}, 400, "too_many_rows", "completions"),
        (url, {"completions": ["x"], "rows": 2}, 400, "completions_mismatch", "completions"),
        (url, {"dataset_id": dataset, "completions": ["x"] * 6}, 400, "completions_mismatch", "completions"),
        (url, {"dataset_id": dataset, "completion_column": "nope"}, 400, "unknown_column", "completion_column"),
        (url, {"dataset_id": dataset, "offset": 5}, 400, "invalid_value", "offset"),
        (url, {"dataset_id": dataset, "timeout_s": 0}, 400, "invalid_value", "timeout_s"),
        (url, {"dataset_id": dataset, "limit": 3}, 400, "unknown_field", "limit"),
        ("/v1/reward_functions/test", {"dataset_id": dataset}, 400, "missing_field", "source"),
        ("/v1/reward_functions/test", bad_source, 400, "invalid_reward_function", "source"),
    ]
    for path, body, status, code, param in cases:
        error_of(post(path, json=body), status, code, param)
    assert "columns: prompt" in error_of(
        post(url, json={"dataset_id": no_column}), 400, "no_completions", "completions"
    )
    assert list(paths.spool_dir(api.settings.data_dir).glob("reward-test-*")) == []
    assert len(api.get("/v1/reward_functions").json()["data"]) == 1, "an inline test stores no reward function"


def test_the_reward_functions_page_tests_a_function_with_htmx(api, dataset):
    web = Browser(api)
    rf = api.reward_function(NAN, name="nan-maker")
    page = web.get("/reward-functions").text
    assert f'hx-get="/reward-functions/test-form?reward_function_id={rf}"' in page and ">Test</button>" in page
    form = web.get(f"/reward-functions/test-form?reward_function_id={rf}", headers={"HX-Request": "true"}).text
    assert "nan-maker" in form and f'value="{rf}"' in form and f'value="{dataset}"' in form
    assert 'hx-post="/reward-functions/test"' in form and 'id="reward-test-result"' in form

    ok = web.post("/reward-functions/test", data={"reward_function_id": rf, "completions": "a\nb\n\nc"})
    assert ok.status_code == 200 and 'data-passed="true"' in ok.text and "1 / 1 / 1" in ok.text, ok.text
    bad = web.post("/reward-functions/test", data={"reward_function_id": rf, "dataset_id": dataset, "rows": "3"})
    text = html.unescape(bad.text)
    assert 'data-passed="false"' in text and 'data-code="invalid_value"' in text and "row 2" in text, text
    # The same form for a page's own source field (the new-job form's `reward_source`).
    form = web.get("/reward-functions/test-form?source_selector=%23reward_source", headers={"HX-Request": "true"})
    assert 'hx-include="#reward_source"' in form.text and 'name="reward_function_id"' not in form.text
    inline = web.post("/reward-functions/test", data={"reward_source": GOOD, "dataset_id": dataset, "rows": "2"})
    assert 'data-passed="true"' in inline.text and "scored 2" in inline.text
    refused = web.post("/reward-functions/test", data={"reward_function_id": rf, "rows": "many"})
    assert 'data-code="invalid_value"' in refused.text and "rows" in refused.text
    nothing = web.post("/reward-functions/test", data={"reward_function_id": rf})
    assert 'data-code="no_completions"' in nothing.text
