"""The dashboard in process: login and CSRF, every page and fragment, and that its forms accept
and refuse exactly what the API does, showing the API's error code and message as HTML."""

from __future__ import annotations

import html
import json
import re

import pytest
from conftest import Api

from veri_box import demo, hyperparameters
from veri_box.dashboard import job_form, job_page, rendering

HTMX = {"HX-Request": "true"}


def csrf_of(html: str) -> str:
    return re.search(r'name="_csrf" value="([^"]+)"', html).group(1)


def login(api: Api, key: str | None = None, next: str = "/jobs"):
    page = api.client.get("/login")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    return api.client.post(
        "/login",
        data={"_csrf": csrf_of(page.text), "api_key": key or api.key, "next": next},
        follow_redirects=False,
    )


class Browser:
    """The in-process client with a session cookie, sending the CSRF header as htmx does."""

    def __init__(self, api: Api):
        self.api = api
        self.client = api.client
        r = login(api)
        assert r.status_code == 303, r.text
        self.csrf = csrf_of(self.client.get("/jobs").text)

    def get(self, url: str, **kw):
        return self.client.get(url, **kw)

    def post(self, url: str, htmx: bool = True, **kw):
        headers = {**(HTMX if htmx else {}), "X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.client.post(url, headers=headers, **kw)


@pytest.fixture
def web(api: Api) -> Browser:
    return Browser(api)


# -- login, sessions, CSRF ---------------------------------------------------------------------


def test_pages_need_a_login_and_the_root_redirects(api):
    assert api.client.get("/", follow_redirects=False).headers["location"] == "/login"
    for path in ["/jobs", "/jobs/new", "/datasets", "/reward-functions", "/settings", "/jobs/job_x"]:
        r = api.client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    # htmx fragments are told where to go instead of receiving the login page
    r = api.client.get("/jobs/table", headers=HTMX, follow_redirects=False)
    assert r.headers["HX-Redirect"].startswith("/login")


def test_login_sets_a_signed_httponly_samesite_cookie_and_logout_ends_it(api):
    r = login(api, next="/datasets")
    assert r.status_code == 303 and r.headers["location"] == "/datasets"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("vb_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=" in cookie
    assert api.key not in cookie
    assert api.client.get("/", follow_redirects=False).headers["location"] == "/jobs"
    page = api.client.get("/jobs")
    assert page.status_code == 200 and "Training jobs" in page.text
    assert api.key not in page.text  # the key never reaches the page
    # logout is a state-changing form: it needs the token
    assert api.client.post("/logout", data={}, follow_redirects=False).status_code == 403
    r = api.client.post("/logout", data={"_csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert api.client.get("/jobs", follow_redirects=False).status_code == 303


def test_login_refuses_bad_keys_and_forged_forms(api):
    r = login(api, key="vk_" + "0" * 40)
    assert r.status_code == 401 and "not valid or has been revoked" in r.text
    r = api.client.post("/login", data={"_csrf": "forged", "api_key": api.key}, follow_redirects=False)
    assert r.status_code == 403 and "expired" in r.text
    assert "vb_session" not in api.client.cookies
    # an open redirect is not possible
    for target in ["//evil.example/", "/\\evil.example/", "/logout"]:
        api.client.cookies.clear()
        assert login(api, next=target).headers["location"] == "/jobs", target


def test_a_tampered_cookie_or_a_revoked_key_ends_the_session(api):
    login(api)
    token = api.client.cookies["vb_session"]
    api.client.cookies.set("vb_session", token[:-3] + "AAA")
    assert api.client.get("/jobs", follow_redirects=False).status_code == 303
    api.client.cookies.set("vb_session", token)
    assert api.client.get("/jobs").status_code == 200
    api.store.revoke_api_key(api.store.authenticate(api.key)["id"])
    assert api.client.get("/jobs", follow_redirects=False).status_code == 303


def test_sessions_survive_a_restart(api, settings):
    from litestar.testing import TestClient

    from veri_box.app import create_app

    login(api)
    cookie = api.client.cookies["vb_session"]
    with TestClient(create_app(settings, run_jobs=False)) as again:
        again.cookies.set("vb_session", cookie)
        assert again.get("/jobs").status_code == 200


def test_state_changing_requests_need_the_csrf_token(web):
    for url in ["/settings/api-keys", "/jobs/new", "/datasets", "/settings/openreward/delete"]:
        r = web.client.post(url, data={"name": "x"}, headers=HTMX)
        assert "csrf_failed" in r.text, url
    r = web.client.post("/settings/api-keys", data={"name": "x"}, headers={**HTMX, "X-CSRF-Token": "wrong"})
    assert "csrf_failed" in r.text
    # the form field works as well as the header
    r = web.client.post("/settings/api-keys", data={"name": "by form", "_csrf": web.csrf})
    assert r.status_code == 200 and "by form" in r.text


def test_the_api_keeps_bearer_auth_and_ignores_the_cookie(web):
    assert web.client.get("/v1/datasets").status_code == 401
    assert web.api.get("/v1/datasets").status_code == 200


# -- jobs --------------------------------------------------------------------------------------


def test_an_empty_box_offers_the_demo(web):
    page = web.get("/jobs").text
    assert 'hx-post="/demo"' in page and "tiny" in page
    web.api.job()
    assert 'hx-post="/demo"' not in web.get("/jobs").text


def test_jobs_list_filters_and_pages(web):
    dataset, rf = web.api.dataset(), web.api.reward_function()
    ids = [web.api.job(dataset_id=dataset, reward_function_id=rf, output_name=f"run-{i}")["id"] for i in range(30)]
    web.api.store.update_job(
        ids[-1], status="running", current_step=5, total_steps=10, started_at="2026-01-01T00:00:00Z"
    )
    page = web.get("/jobs").text
    assert page.count('<tr id="row-') == rendering.PAGE_SIZE
    assert ids[-1] in page and "step 5 of 10" in page and "ETA" in page
    assert 'hx-trigger="every 2s"' in page  # live rows refresh themselves
    older = re.search(r'href="(/jobs\?after=[^"]+)" rel="next"', page).group(1)
    second = web.get(older.replace("&amp;", "&")).text
    assert second.count('<tr id="row-') == 5 and ids[0] in second
    running = web.get("/jobs?status=running").text
    assert running.count('<tr id="row-') == 1 and "running (1)" in running
    assert web.get("/jobs?method=sft_video_gen").text.count('<tr id="row-') == 0
    table = web.get("/jobs/table?status=running", headers=HTMX).text
    assert table.startswith('<div id="job-table"') and ids[-1] in table


def test_new_job_form_knows_each_methods_hyperparameters(web):
    page = web.get("/jobs/new").text
    for name, default in [("learning_rate", "1e-06"), ("rollouts_per_prompt", "8"), ("global_batch_size", "64")]:
        assert f'name="hp.{name}" value="{default}"' in page, name
    assert "Completions per optimizer step; a multiple of rollouts_per_prompt." in page  # help text
    assert 'name="gpu_type"' in page and "A100-80GB · 2 of 2 free" in page and "cpu · 1 of 1 free" in page
    video = web.get("/jobs/new?method=sft_video_gen", headers=HTMX).text
    assert video.startswith('<form id="new-job-form"')
    assert 'name="hp.num_frames" value="49"' in video and "reward_function_ids" not in video


def form_for(web: Browser, dataset: str, rf: str, **hp) -> dict:
    body = {
        "method": "grpo",
        "base_model": "Qwen/Qwen3-4B",
        "output_name": "from-form",
        "dataset_id": dataset,
        "reward_function_ids": rf,
        f"weight.{rf}": "1.0",
        "gpu_type": "cpu",
        "gpu_count": "1",
    }
    for field in hyperparameters.describe("grpo"):
        body[f"hp.{field['name']}"] = job_form._form_value(field["default"])
    body.update({f"hp.{k}": v for k, v in hp.items()})
    return body


def test_the_form_launches_a_job_with_the_resolved_hyperparameters(web):
    dataset, rf = web.api.dataset(), web.api.reward_function()
    r = web.post("/jobs/new", data=form_for(web, dataset, rf, max_steps="3", learning_rate="0.05"))
    job_id = r.headers["HX-Redirect"].removeprefix("/jobs/")
    job = web.api.get(f"/v1/training_jobs/{job_id}").json()
    assert job["hyperparameters"]["max_steps"] == 3 and job["hyperparameters"]["learning_rate"] == 0.05
    assert job["reward_function_id"] == rf and job["gpu_requested"] == {"type": "cpu", "count": 1}
    assert job["dashboard_url"].endswith(f"/jobs/{job_id}")
    # the form sends exactly what an API client would: the defaults come back unchanged
    api_job = web.api.job(
        dataset_id=dataset, reward_function_id=rf, hyperparameters={"max_steps": 3, "learning_rate": 0.05}
    )
    assert api_job["hyperparameters"] == job["hyperparameters"]


@pytest.mark.parametrize(
    "change, code, param",
    [
        ({"hp.global_batch_size": "60"}, "invalid_hyperparameter", "hyperparameters.global_batch_size"),
        ({"hp.learning_rate": "fast"}, "invalid_hyperparameter", "hyperparameters.learning_rate"),
        ({"hp.seed": "-1"}, "invalid_hyperparameter", "hyperparameters.seed"),
        ({"gpu_type": "H100-80GB"}, "gpu_unavailable", "gpu.type"),
        ({"gpu_type": "A100-80GB", "gpu_count": "3"}, "gpu_unavailable", "gpu.count"),
        ({"reward_function_ids": ""}, "reward_source_required", "reward_function_id"),
        ({"dataset_id": "ds_nope"}, "dataset_not_found", "dataset_id"),
        ({"environments": "coding"}, "conflicting_reward_sources", "environments"),
    ],
)
def test_form_errors_are_the_apis_own(web, change, code, param):
    dataset, rf = web.api.dataset(), web.api.reward_function()
    form = {**form_for(web, dataset, rf), **change}
    r = web.post("/jobs/new", data=form)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    assert f'data-code="{code}"' in r.text and f"<code>{param}</code>" in r.text
    assert 'aria-invalid="true"' in r.text
    # the API says the same about the same body
    sent = {**form, "reward_function_ids": [v for v in [form["reward_function_ids"]] if v]}
    # The form hands its chosen function to jobs.submit as an (id, weight) pair; an API client names it.
    choices = job_form.reward_choices(sent)
    body = {**job_form.job_body(sent), **({"reward_function_id": choices[0][0]} if choices else {})}
    api_error = web.api.post("/v1/training_jobs", json=body).json()["error"]
    assert (api_error["code"], api_error["param"]) == (code, param)
    assert api_error["message"] in html.unescape(r.text)
    assert 'value="from-form"' in r.text  # what the user typed stays


def test_several_reward_functions_go_as_weighted_sources(web):
    dataset = web.api.dataset()
    one, two = web.api.reward_function(name="one"), web.api.reward_function(name="two")
    form = form_for(web, dataset, one)
    form["reward_function_ids"] = [one, two]
    form[f"weight.{two}"] = "0.5"
    r = web.post("/jobs/new", data=form)
    job = web.api.store.get_job(r.headers["HX-Redirect"].removeprefix("/jobs/"))
    assert [rf["weight"] for rf in job["reward_functions"]] == [1.0, 0.5]


def test_clone_fills_the_form_with_the_jobs_settings(web):
    job = web.api.job(hyperparameters={"max_steps": 7, "lora_rank": 8, "system_prompt": "Be brief."})
    page = web.get(f"/jobs/new?clone={job['id']}").text
    assert 'name="hp.max_steps" value="7"' in page and 'name="hp.lora_alpha" value="16"' in page
    assert "Be brief." in page and f'value="{job["dataset_id"]}" selected' in page
    assert f'value="{job["reward_function_id"]}" checked' in page and 'value="test-copy"' in page


def test_job_page_shows_status_timeline_error_and_downloads(web, settings):
    job = web.api.job()
    store = web.api.store
    store.transition_job(
        job["id"],
        "failed",
        allowed_from=["queued"],
        error_code="out_of_memory",
        error_message="CUDA out of memory. Tried to allocate 2.00 GiB.",
    )
    page = web.get(f"/jobs/{job['id']}").text
    assert 'id="job-status" class="badge status-failed"' in page
    assert 'data-code="out_of_memory"' in page and "CUDA out of memory" in page
    assert "created" in page and "failed" in page  # timeline
    assert 'sse-connect="/jobs/' in page and 'id="charts"' in page
    assert "cancel-job" not in page  # a finished job cannot be cancelled
    assert "Clone" in page


def test_completed_job_offers_the_model_and_checkpoints(web, settings):
    job = web.api.job()
    job_dir = settings.data_dir / "jobs" / job["id"]
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "output" / "adapter_model.safetensors").write_bytes(b"x" * 10)
    (job_dir / "model.tar.gz").write_bytes(b"tar")
    (job_dir / "checkpoint-2").mkdir()
    (job_dir / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"y")
    web.api.store.add_checkpoint(job["id"], 2, "checkpoint-2")
    web.api.store.transition_job(job["id"], "completed", allowed_from=["queued"])
    page = web.get(f"/jobs/{job['id']}/artifacts").text
    link = re.search(r'id="download-model" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert link.startswith(f"/files/jobs/{job['id']}/model.tar.gz?expires=")
    assert web.client.get(link).content == b"tar"
    assert "step 2" in page and "adapter_model.safetensors" in page


def test_cancel_from_the_page_and_the_apis_error_once_terminal(web):
    job = web.api.job()
    r = web.post(f"/jobs/{job['id']}/cancel")
    assert 'class="badge status-cancelled"' in r.text and r.headers["HX-Trigger"] == "job-ended"
    assert web.api.get(f"/v1/training_jobs/{job['id']}").json()["status"] == "cancelled"
    again = web.post(f"/jobs/{job['id']}/cancel")
    assert again.headers["HX-Retarget"] == "#flash" and 'data-code="job_not_cancellable"' in again.text


def test_summary_polls_while_live_and_stops_when_terminal(web):
    job = web.api.job()
    live = web.get(f"/jobs/{job['id']}/summary", headers=HTMX)
    assert 'hx-trigger="every 2s"' in live.text and "HX-Trigger" not in live.headers
    web.api.store.transition_job(job["id"], "cancelled", allowed_from=["queued"])
    done = web.get(f"/jobs/{job['id']}/summary", headers=HTMX)
    assert "every 2s" not in done.text and done.headers["HX-Trigger"] == "job-ended"


def test_metrics_json_is_the_apis_query_with_the_status(web):
    job = web.api.job()
    web.api.store.add_metrics(job["id"], [(s, {"loss": 1.0 / s, "reward": s / 10}) for s in range(1, 21)])
    data = web.get(f"/jobs/{job['id']}/metrics.json?max_points=5").json()
    api = web.api.get(f"/v1/training_jobs/{job['id']}/metrics?max_points=5").json()
    assert data["metrics"] == api["metrics"] and data["available_keys"] == ["loss", "reward"]
    assert data["status"] == "queued" and data["latest_step"] == 20
    tail = web.get(f"/jobs/{job['id']}/metrics.json?from_step=19").json()
    assert [p["step"] for p in tail["metrics"]] == [19, 20]


def test_rollouts_group_by_prompt_sort_and_flag_zero_variance(web):
    job = web.api.job()
    samples = [
        {
            "step": 4,
            "prompt": "PROMPT-ONE",
            "completion": f"COMPLETION-{i}",
            "reward": r,
            "advantage": r - 0.5,
            "group": 0,
            "rewards": {"len": r},
        }
        for i, r in enumerate([0.1, 0.9])
    ] + [{"step": 4, "prompt": "PROMPT-TWO", "completion": "same", "reward": 1.0, "advantage": 0.0, "group": 1}] * 2
    web.api.store.add_samples(job["id"], samples + [{**samples[0], "step": 2}])
    page = web.get(f"/jobs/{job['id']}/rollouts?sort=reward").text
    assert "latest (4)" in page and page.count('class="rollout"') == 4
    assert page.count('data-zero-variance="true"') == 1 and "1 zero-variance group" in page
    assert page.index("PROMPT-TWO") < page.index("PROMPT-ONE")  # groups by mean reward
    assert page.index("COMPLETION-1") < page.index("COMPLETION-0")  # completions by reward
    step2 = web.get(f"/jobs/{job['id']}/rollouts?step=2").text
    assert step2.count('class="rollout"') == 1 and "every 5s" not in step2


def test_video_clips_get_signed_links(web, settings):
    job = web.api.job()
    web.api.store.add_samples(job["id"], [{"step": 1, "prompt": "a cat", "video": "samples/step1.mp4"}])
    path = settings.data_dir / "jobs" / job["id"] / "samples" / "step1.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"mp4")
    page = web.get(f"/jobs/{job['id']}/rollouts").text
    src = re.search(r'<video controls preload="metadata" src="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert web.client.get(src).content == b"mp4" and "a cat" in page


def test_the_log_streams_as_escaped_html_and_closes_when_the_job_ends(web, settings):
    job = web.api.job()
    log = settings.data_dir / "jobs" / job["id"] / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 1/2 <loss>\nTraceback: Error\n")
    web.api.store.transition_job(job["id"], "cancelled", allowed_from=["queued"])
    body = web.get(f"/jobs/{job['id']}/log").text
    assert 'data: <div class="line ">step 1/2 &lt;loss&gt;</div>' in body
    assert '<div class="line sentinel">[Job cancelled]</div>' in body
    assert body.rstrip().endswith("event: done\ndata: end") or "event: done" in body
    assert web.get(f"/jobs/{job['id']}/log.txt").text.startswith("step 1/2 <loss>")


def test_demo_button_is_refused_plainly_without_the_cpu_pool(web, settings):
    web.api.box.inventory.types.pop("cpu")
    assert "cpu-slots 0" in web.get("/jobs").text


# -- datasets, reward functions ----------------------------------------------------------------


def test_dataset_upload_preview_and_delete(web):
    rows = b"".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}).encode() + b"\n" for i in range(25))
    r = web.post("/datasets", data={"name": "numbers"}, files={"file": ("n.jsonl", rows, "application/jsonl")})
    assert "Uploaded numbers: 25 rows, format prompt_only" in r.text
    ds = web.api.get("/v1/datasets").json()["data"][0]
    preview = web.get(f"/datasets/{ds['id']}/rows").text
    assert "rows 1–20 of 25" in preview and "p19" in preview and "offset=20" in preview
    assert "p24" in web.get(f"/datasets/{ds['id']}/rows?offset=20").text
    job = web.api.job(dataset_id=ds["id"])
    page = web.get("/datasets").text
    assert "In use" in page
    busy = web.post(f"/datasets/{ds['id']}/delete")
    assert 'data-code="dataset_in_use"' in busy.text and job["id"] in busy.text
    web.api.post(f"/v1/training_jobs/{job['id']}/cancel")
    gone = web.post(f"/datasets/{ds['id']}/delete")
    assert "Deleted dataset" in gone.text and web.api.get(f"/v1/datasets/{ds['id']}").status_code == 404


@pytest.mark.parametrize(
    "name, body, code, words",
    [
        ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": \n', "invalid_json", "line 2"),
        ("empty.jsonl", b"", "empty_file", "empty"),
    ],
)
def test_dataset_upload_errors_are_the_apis(web, name, body, code, words):
    r = web.post("/datasets", data={"name": "x"}, files={"file": (name, body, "application/jsonl")})
    api_error = web.api.post("/v1/datasets", data={"name": "x"}, files={"file": (name, body)}).json()["error"]
    assert api_error["code"] == code
    assert f'data-code="{code}"' in r.text and words in r.text.lower()
    assert web.api.get("/v1/datasets").json()["data"] == []


def test_dataset_upload_without_a_file(web):
    r = web.post("/datasets", data={"name": "x"}, files={"other": ("a.txt", b"1")})
    assert 'data-code="missing_field"' in r.text


def test_reward_function_upload_source_and_delete(web):
    source = "def reward(completions, **kwargs):\n    return [1.0 for _ in completions]\n"
    r = web.post("/reward-functions", data={"name": "ones"}, files={"file": ("ones.py", source.encode())})
    assert "Uploaded ones: calls reward()" in r.text
    rf = web.api.get("/v1/reward_functions").json()["data"][0]
    view = web.get(f"/reward-functions/{rf['id']}/source").text
    assert "return [1.0 for _ in completions]" in view
    bad = web.post("/reward-functions", data={"name": "bad"}, files={"file": ("bad.py", b"def reward(:\n")})
    assert 'data-code="invalid_reward_function"' in bad.text and "line 1" in bad.text
    wrong = web.post("/reward-functions", data={"name": "bad"}, files={"file": ("bad.txt", b"x")})
    assert 'data-code="invalid_file_type"' in wrong.text
    assert "Deleted reward function" in web.post(f"/reward-functions/{rf['id']}/delete").text


# -- settings ----------------------------------------------------------------------------------


def test_api_keys_are_shown_once_and_revoked(web):
    r = web.post("/settings/api-keys", data={"name": "ci"})
    key = re.search(r'id="new-key" class="mono">(vk_[0-9a-f]{40})<', r.text).group(1)
    assert web.api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    page = web.get("/settings").text
    assert key not in page and key[:7] in page and "this session" in page
    key_id = web.api.store.authenticate(key)["id"]
    r = web.post(f"/settings/api-keys/{key_id}/revoke")
    assert "Revoked key" in r.text
    assert web.api.client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert 'data-code="missing_field"' in web.post("/settings/api-keys", data={}).text or "invalid_value" in (
        web.post("/settings/api-keys", data={"name": ""}).text
    )
    own = web.api.store.authenticate(web.api.key)["id"]
    web.api.store.create_api_key("another admin", "admin")  # the box's last admin key cannot be revoked
    assert web.post(f"/settings/api-keys/{own}/revoke").headers["HX-Redirect"] == "/login"
    assert web.get("/jobs", follow_redirects=False).status_code == 303


def test_openreward_integration_saved_without_showing_the_key(web):
    bad = web.post("/settings/openreward", data={"api_key": "sk-secret-1234", "base_url": "ftp://x"})
    assert 'data-code="invalid_value"' in bad.text and "<code>base_url</code>" in bad.text
    r = web.post("/settings/openreward", data={"api_key": "sk-secret-1234"})
    assert "Configured" in r.text and "...1234" in r.text and "sk-secret" not in r.text
    assert web.api.get("/v1/settings/integrations/openreward").json()["configured"] is True
    assert "Not configured" in web.post("/settings/openreward/delete").text


def test_devices_show_what_runs_where_and_the_price(api, settings):
    from litestar.testing import TestClient

    from veri_box.app import Box, create_app
    from veri_box.devices import build_inventory

    box = Box.open(settings, build_inventory("A100-80GB:2", 1, {"A100-80GB": 1.89}))
    with TestClient(create_app(box, run_jobs=False)) as client:
        other = Api(client, api.key, box)
        web = Browser(other)
        job = other.job(gpu={"type": "A100-80GB", "count": 1})
        other.store.update_job(job["id"], status="running", gpu={"type": "A100-80GB", "count": 1}, devices=[1])
        panel = web.get("/settings/devices").text
        assert "$1.89" in panel and job["id"] in panel and "device 1" in panel
        assert re.search(r"A100-80GB</td>\s*<td class=\"num\">2</td>\s*<td class=\"num\">1</td>", panel)


def test_errors_render_as_html_pages_with_the_apis_status(web):
    r = web.get("/jobs/job_nope")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert 'data-code="training_job_not_found"' in r.text and "No training job with id" in r.text
    r = web.get("/datasets/ds_nope/rows", headers=HTMX)
    assert r.headers["HX-Retarget"] == "#flash" and 'data-code="dataset_not_found"' in r.text


def test_static_assets_are_vendored_and_served(web):
    for name in rendering.ASSETS.values():
        r = web.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 1000, name
    page = web.get("/jobs").text
    assert "cdn" not in page.lower() and "https://" not in page


def test_the_demo_button_submits_the_demo_job(web):
    """What `veri-box demo` submits, from the button an empty box shows: the built-in tiny model,
    which the trainer builds (the web layer spawns nothing)."""
    r = web.post("/demo")
    job_id = r.headers["HX-Redirect"].removeprefix("/jobs/")
    job = web.api.get(f"/v1/training_jobs/{job_id}").json()
    assert job["output_name"] == "tiny-demo" and job["gpu_requested"] == {"type": "cpu", "count": 1}
    assert all(job["hyperparameters"][k] == v for k, v in demo.HYPERPARAMETERS.items())
    assert job["base_model"] == "veri-box/tiny-lm" == demo.TINY_LM
    source = web.api.get(f"/v1/reward_functions/{job['reward_function_id']}/source").text
    assert source == demo.REWARD
    assert web.api.get(f"/v1/datasets/{job['dataset_id']}").json()["num_rows"] == len(demo.PROMPTS)


def test_a_video_dataset_previews_its_clips(web):
    from trainers.tiny_video import squares_zip

    r = web.post("/datasets", data={"name": "clips"}, files={"file": ("clips.zip", squares_zip(n=2, frames=9))})
    assert "format video_captions" in r.text, r.text[:2000]
    ds = web.api.get("/v1/datasets").json()["data"][0]
    preview = web.get(f"/datasets/{ds['id']}/rows").text
    sources = re.findall(r'<video controls preload="metadata" src="([^"]+)"', preview)
    assert len(sources) == 2
    clip = web.get(sources[0])
    assert clip.status_code == 200 and len(clip.content) > 100
    assert web.get(f"/datasets/{ds['id']}/files/metadata.jsonl").status_code == 404
    assert web.get(f"/datasets/{ds['id']}/files/%2e%2e/%2e%2e/%2e%2e/veri-box.db").status_code == 404
    # the form offers the video method's dataset and no reward section
    form = web.get("/jobs/new?method=sft_video_gen").text
    assert f'value="{ds["id"]}"' in form and "(not a sft_video_gen format)" not in form.split(ds["id"])[1][:80]


def test_a_log_stream_without_a_session_ends_cleanly(api):
    job = api.job()
    r = api.client.get(f"/jobs/{job['id']}/log", headers={"Accept": "text/event-stream"}, follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "Log in again" in r.text and "event: done" in r.text


def test_a_long_log_starts_near_its_end_on_a_whole_line(web, settings, monkeypatch):
    monkeypatch.setattr(job_page, "LOG_TAIL_BYTES", 100)
    job = web.api.job()
    log = settings.data_dir / "jobs" / job["id"] / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line number {i:03d}\n" for i in range(50)))
    web.api.store.transition_job(job["id"], "cancelled", allowed_from=["queued"])
    lines = re.findall(r'<div class="line ">([^<]*)</div>', web.get(f"/jobs/{job['id']}/log").text)
    assert lines[-1] == "line number 049" and 4 <= len(lines) <= 6
    assert all(re.fullmatch(r"line number \d{3}", line) for line in lines)
    # a reconnecting stream resumes where it left off
    resumed = web.get(f"/jobs/{job['id']}/log", headers={"Last-Event-ID": str(log.stat().st_size - 16)}).text
    assert re.findall(r'<div class="line ">([^<]*)</div>', resumed) == ["line number 049"]
