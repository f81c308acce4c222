"""The dashboard's run comparison and jobs list in process: /compare's legend, charts shell and
diff table (only the settings that differ), its refusals, the jobs list's search, labels and
"now" columns, and PATCH /v1/training_jobs/{id} for tags and a note with its 400s."""

from __future__ import annotations

import html
import json
import re

import pytest
from test_dashboard import Browser

from veri_box.dashboard import compare


@pytest.fixture
def web(api) -> Browser:
    return Browser(api)


def _jobs(api, *learning_rates: float, **kw) -> list[dict]:
    dataset = api.dataset()
    rf = api.reward_function()
    out = []
    for i, lr in enumerate(learning_rates):
        hp = {"learning_rate": lr, "max_steps": 10, **kw.get("hp", {})}
        out.append(api.job(dataset_id=dataset, reward_function_id=rf, output_name=f"run-{i}", hyperparameters=hp))
    return out


def _data_jobs(page: str) -> list[dict]:
    attr = re.search(r"id=\"compare-charts\"[^>]*data-jobs='([^']*)'", page, re.S).group(1)
    return json.loads(html.unescape(attr))


def test_compare_shows_each_job_in_its_colour_and_only_the_settings_that_differ(api, web):
    a, b, c = _jobs(api, 1e-5, 1e-5, 3e-5)
    for job, reward in ((a, 0.1), (b, 0.5), (c, 0.9)):
        api.store.add_metrics(job["id"], [(s, {"reward": reward * s, "kl": 0.01 * s}) for s in range(1, 11)])
    r = web.get(f"/compare?jobs={a['id']},{b['id']},{c['id']}")
    assert r.status_code == 200, r.text
    page = r.text
    entries = _data_jobs(page)
    assert [e["id"] for e in entries] == [a["id"], b["id"], c["id"]]
    assert [e["name"] for e in entries] == ["run-0", "run-1", "run-2"]
    assert len({e["color"] for e in entries}) == 3  # one colour per job
    legend = re.search(r'<ul class="legend-jobs".*?</ul>', page, re.S).group(0)
    for e in entries:
        assert e["name"] in legend and e["color"] in legend
    assert "2 metrics" in legend  # reward and kl, read from the store
    # the diff: learning_rate differs; the shared hyperparameters and fields are not listed
    diff = re.search(r'<table class="diff">.*?</table>', page, re.S).group(0)
    rows = re.findall(r'<tr data-key="([^"]+)"', diff)
    assert rows == ["learning_rate"]
    cells = re.findall(r'<td class="mono">([^<]*)</td>', diff)
    assert cells == ["1e-05", "1e-05", "3e-05"]
    # the charts' settings are on the page and the data comes from each job's own metrics
    for control in ('class="smoothing"', 'class="log-y"', 'class="x-axis"', 'class="key-search"'):
        assert control in page
    for job in (a, b, c):
        m = web.get(f"/jobs/{job['id']}/metrics.json?keys=reward").json()
        assert [p["step"] for p in m["metrics"]] == list(range(1, 11))


def test_compare_of_identical_jobs_says_so_and_takes_the_list_forms_repeated_ids(api, web):
    a, b = _jobs(api, 1e-5, 1e-5)
    r = web.get(f"/compare?jobs={a['id']}&jobs={b['id']}&jobs={a['id']}")
    assert r.status_code == 200
    assert [e["id"] for e in _data_jobs(r.text)] == [a["id"], b["id"]]  # each once, in order
    assert 'id="no-diff"' in r.text and '<table class="diff">' not in r.text


def test_compare_lists_job_fields_that_differ(api, web):
    a = _jobs(api, 1e-5)[0]
    b = api.job(
        output_name="other", base_model="Qwen/Qwen3-0.6B", hyperparameters={"learning_rate": 1e-5, "max_steps": 10}
    )
    page = web.get(f"/compare?jobs={a['id']},{b['id']}").text
    rows = re.findall(r'<tr data-key="([^"]+)"', page)
    assert "base_model" in rows and "dataset_id" in rows and "learning_rate" not in rows


def test_compare_refuses_no_jobs_unknown_jobs_and_too_many(api, web):
    r = web.get("/compare")
    assert r.status_code == 400 and "missing_field" in r.text and "/compare?jobs=" in r.text
    r = web.get("/compare?jobs=, ,")
    assert r.status_code == 400 and "missing_field" in r.text
    a = _jobs(api, 1e-5)[0]
    r = web.get(f"/compare?jobs={a['id']},job_nope")
    assert r.status_code == 404 and "training_job_not_found" in r.text and "job_nope" in r.text
    many = ",".join(f"job_{i}" for i in range(compare.MAX_JOBS + 1))
    r = web.get(f"/compare?jobs={many}")
    assert r.status_code == 400 and "at most 10 jobs" in r.text
    # the page needs a login like every other
    api.client.cookies.clear()
    assert web.get(f"/compare?jobs={a['id']}", follow_redirects=False).status_code == 303


# -- PATCH tags and note ---------------------------------------------------------------------


def test_patch_sets_tags_and_note_and_the_job_answers_them(api):
    job = _jobs(api, 1e-5)[0]
    assert job["tags"] == [] and job["note"] is None
    r = api.patch(
        f"/v1/training_jobs/{job['id']}", json={"tags": ["baseline", " lr-sweep", "baseline"], "note": "first try"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["baseline", "lr-sweep"] and r.json()["note"] == "first try"
    # a field left out keeps its value; null clears the note; the list answers them too
    r = api.patch(f"/v1/training_jobs/{job['id']}", json={"tags": ["kept"]})
    assert r.json()["tags"] == ["kept"] and r.json()["note"] == "first try"
    r = api.patch(f"/v1/training_jobs/{job['id']}", json={"note": None})
    assert r.json()["note"] is None and r.json()["tags"] == ["kept"]
    listed = api.get("/v1/training_jobs").json()["data"][0]
    assert listed["id"] == job["id"] and listed["tags"] == ["kept"]
    assert api.get(f"/v1/training_jobs/{job['id']}").json()["tags"] == ["kept"]


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({"tags": "baseline"}, "invalid_value", "tags"),
        ({"tags": [1]}, "invalid_value", "tags[0]"),
        ({"tags": ["x" * 51]}, "invalid_value", "tags[0]"),
        ({"tags": ["ok", ""]}, "invalid_value", "tags[1]"),
        ({"tags": ["ok", "a,b"]}, "invalid_value", "tags[1]"),
        ({"tags": ["   "]}, "invalid_value", "tags[0]"),
        ({"tags": [f"t{i}" for i in range(21)]}, "invalid_value", "tags"),
        ({"note": 3}, "invalid_value", "note"),
        ({"note": "x" * 2001}, "invalid_value", "note"),
        ({"status": "completed"}, "unknown_field", "status"),
    ],
)
def test_patch_refuses_bad_labels_and_changes_nothing(api, body, code, param):
    job = _jobs(api, 1e-5)[0]
    api.patch(f"/v1/training_jobs/{job['id']}", json={"tags": ["before"], "note": "before"})
    r = api.patch(f"/v1/training_jobs/{job['id']}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == param
    after = api.get(f"/v1/training_jobs/{job['id']}").json()
    assert after["tags"] == ["before"] and after["note"] == "before" and after["status"] == "queued"


def test_patch_of_an_unknown_job_is_404(api):
    r = api.patch("/v1/training_jobs/job_nope", json={"note": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "training_job_not_found"


# -- the jobs list ----------------------------------------------------------------------------


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr id="row-([^"]+)"', page)


def test_jobs_list_searches_name_model_id_tag_and_note(api, web):
    a, b = _jobs(api, 1e-5, 2e-5)
    c = api.job(output_name="video_100%", base_model="Qwen/Qwen3-0.6B")
    api.patch(f"/v1/training_jobs/{a['id']}", json={"tags": ["baseline"], "note": "the reference run"})
    assert set(_rows(web.get("/jobs").text)) == {a["id"], b["id"], c["id"]}
    assert _rows(web.get("/jobs?q=run-1").text) == [b["id"]]
    assert _rows(web.get("/jobs?q=RUN-0").text) == [a["id"]]  # any case
    assert _rows(web.get("/jobs?q=qwen3-0.6").text) == [c["id"]]  # model
    assert _rows(web.get(f"/jobs?q={b['id'][-8:]}").text) == [b["id"]]  # id
    assert _rows(web.get("/jobs?q=baseline").text) == [a["id"]]  # tag
    assert _rows(web.get("/jobs?q=reference").text) == [a["id"]]  # note
    assert _rows(web.get("/jobs?q=100%25").text) == [c["id"]]  # LIKE's % is a plain character
    assert _rows(web.get("/jobs?q=o_1").text) == [c["id"]]  # and so is _
    assert _rows(web.get("/jobs?q=n_0").text) == []  # not any one character: "run-0" does not match
    empty = web.get("/jobs?q=nothing-like-this").text
    assert _rows(empty) == [] and "match these filters" in empty
    # the self-refreshing table keeps the search
    page = web.get("/jobs?q=run-1").text
    assert 'hx-get="/jobs/table?q=run-1"' in page and 'value="run-1"' in page
    assert _rows(web.get("/jobs/table?q=run-1").text) == [b["id"]]


def test_jobs_list_shows_labels_reward_now_cost_duration_and_compare_picks(api, web):
    a, b = _jobs(api, 1e-5, 2e-5)
    api.patch(f"/v1/training_jobs/{a['id']}", json={"tags": ["baseline"], "note": "the <b>reference</b> run"})
    api.store.add_metrics(
        a["id"], [(1, {"reward": 0.25, "loss": 1.0, "throughput/tokens_per_s": 90.0}), (2, {"reward": 0.75})]
    )
    api.store.update_job(b["id"], current_loss=0.125, cost_usd=1.5, duration_seconds=125.0)
    page = web.get("/jobs").text
    row_a = re.search(rf'<tr id="row-{a["id"]}".*?</tr>', page, re.S).group(0)
    row_b = re.search(rf'<tr id="row-{b["id"]}".*?</tr>', page, re.S).group(0)
    assert '<span class="tag">baseline</span>' in row_a
    assert "the &lt;b&gt;reference&lt;/b&gt; run" in row_a  # the note is text, not markup
    assert 'title="latest reward">0.75<' in row_a  # the last step's reward
    assert 'title="latest throughput">90 tok/s<' in row_a and "tok/s" not in row_b
    assert 'title="latest loss">0.125<' in row_b and "$1.50" in row_b and "2m 05s" in row_b
    for row, job in ((row_a, a), (row_b, b)):
        assert f'class="pick-job" name="jobs" form="compare-form" value="{job["id"]}"' in row
    assert 'id="compare-form"' in page and 'action="/compare"' in page
    # "Compare with…" on a job page opens the list naming that job
    job_page = web.get(f"/jobs/{a['id']}").text
    assert f'href="/jobs?compare_with={a["id"]}"' in job_page
    assert "Tick the jobs to compare with" in web.get(f"/jobs?compare_with={a['id']}").text


def test_pages_carry_the_theme_toggle_and_the_chart_controls(api, web):
    job = _jobs(api, 1e-5)[0]
    for path in ("/jobs", f"/jobs/{job['id']}", "/login"):
        page = web.get(path).text
        assert 'id="theme-toggle"' in page and 'localStorage.getItem("veri-box.theme")' in page, path
    page = web.get(f"/jobs/{job['id']}").text
    assert 'data-method="grpo"' in page
    for control in ('id="smoothing"', 'id="log-y"', 'id="x-axis"', 'id="key-search"'):
        assert control in page


def test_the_job_page_saves_tags_and_a_note_and_shows_the_apis_refusal(api, web):
    job = _jobs(api, 1e-5)[0]
    page = web.get(f"/jobs/{job['id']}").text
    assert 'id="job-labels"' in page and f'hx-post="/jobs/{job["id"]}/labels"' in page
    r = web.post(f"/jobs/{job['id']}/labels", data={"tags": "baseline, lr-sweep,, baseline", "note": " keep "})
    assert r.status_code == 200 and "Saved." in r.text
    assert 'value="baseline, lr-sweep"' in r.text
    stored = api.get(f"/v1/training_jobs/{job['id']}").json()
    assert stored["tags"] == ["baseline", "lr-sweep"] and stored["note"] == "keep"
    # the API's own refusal, with what was typed kept in the form and nothing stored
    r = web.post(f"/jobs/{job['id']}/labels", data={"tags": "x" * 51, "note": "changed"})
    assert 'data-code="invalid_value"' in r.text and "tags[0]" in r.text and "changed" in r.text
    stored = api.get(f"/v1/training_jobs/{job['id']}").json()
    assert stored["tags"] == ["baseline", "lr-sweep"] and stored["note"] == "keep"
    # an empty form clears both
    web.post(f"/jobs/{job['id']}/labels", data={"tags": "", "note": ""})
    stored = api.get(f"/v1/training_jobs/{job['id']}").json()
    assert stored["tags"] == [] and stored["note"] is None
    # without the form's token it is refused
    r = api.client.post(f"/jobs/{job['id']}/labels", data={"tags": "x"}, headers={"HX-Request": "true"})
    assert "csrf_failed" in r.text
    assert api.get(f"/v1/training_jobs/{job['id']}").json()["tags"] == []


def test_only_the_jobs_owner_or_an_admin_may_label_it(api):
    job = _jobs(api, 1e-5)[0]  # made with the admin key
    _, member = api.store.create_api_key("member", role="member")
    r = api.client.patch(
        f"/v1/training_jobs/{job['id']}", json={"note": "mine now"}, headers={"Authorization": f"Bearer {member}"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert api.get(f"/v1/training_jobs/{job['id']}").json()["note"] is None
    assert api.patch(f"/v1/training_jobs/{job['id']}", json={"note": "admin's"}).json()["note"] == "admin's"
