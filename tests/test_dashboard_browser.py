"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
`veri-box serve` training the tiny model on the cpu pool: log in, upload a dataset and a reward
function, launch a GRPO job from the form, watch its chart, log and status update without a
reload, open a rollout, download the model, cancel a second job; no console errors anywhere.
Screenshots of each page are kept in test-artifacts/dashboard/."""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path

import pytest
from serving import FAKE_TRAINERS, KEY, REPO, Server

from veri_box import demo

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
# The demo's settings with which the tiny model learns, cut to a few steps.
HYPERPARAMETERS = {**{k: v for k, v in demo.HYPERPARAMETERS.items()}, "max_steps": 6, "save_steps": 3, "seed": 0}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def server(tmp_path: Path):
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    output = box.start()
    box.key = KEY.search(output).group(0)
    yield box
    box.stop()


class Shots:
    """Screenshots named in the order they were taken, kept after the test. With a prefix,
    only that test's earlier shots are replaced (both tests share the directory)."""

    def __init__(self, page, directory: Path, prefix: str = ""):
        self.page = page
        self.directory = directory
        self.prefix = prefix
        if prefix:
            directory.mkdir(parents=True, exist_ok=True)
            for old in directory.glob(f"{prefix}*.png"):
                old.unlink()
        else:
            for old in directory.glob("[0-9]*.png") if directory.is_dir() else []:
                old.unlink()
            directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=str(self.directory / f"{self.prefix}{self.count:02d}-{name}.png"), full_page=True)


def no_horizontal_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("document.documentElement.clientWidth")
    if width > viewport:  # name the elements that stick out, to fix them without guessing
        wide = page.evaluate(
            """w => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 1)
                .slice(0, 8).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className)""",
            viewport,
        )
        raise AssertionError(f"{page.url}: {width}px wide in a {viewport}px window; sticking out: {wide}")


def test_the_whole_product_in_the_browser(server, tiny_model, tmp_path):
    console_errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("console", lambda m: console_errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(f"{page.url}: {e}"))
        page.on("dialog", lambda d: d.accept())
        shot = Shots(page, ARTIFACTS)
        try:
            _walk_through(page, shot, server, tiny_model, tmp_path)
        except Exception:
            shot("failure")
            (ARTIFACTS / "serve.log").write_text(server.output()[-20000:])
            raise
        finally:
            browser.close()
    # The wrong key's login page is a 401 on purpose (the audit and access logs show refused
    # logins as such); Chromium logs any 4xx page load as a console error.
    refused_login = f"{server.url}/login: Failed to load resource: the server responded with a status of 401"
    refused_login += " (Unauthorized)"
    assert [e for e in console_errors if e != refused_login] == []
    assert refused_login in console_errors  # the wrong key was refused as a 401


def _walk_through(page, shot, server: Server, tiny_model: Path, tmp_path: Path) -> None:
    expect = sync_api.expect

    # -- log in -------------------------------------------------------------------------------
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    no_horizontal_scroll(page)
    shot("login")
    page.fill("[name=api_key]", "vk_" + "0" * 40)
    page.click("button[type=submit]")
    expect(page.locator(".error-box")).to_contain_text("not valid")
    page.fill("[name=api_key]", server.key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs$"))
    expect(page.locator("#demo")).to_contain_text("no jobs yet")  # first run offers the demo
    no_horizontal_scroll(page)
    shot("jobs-first-run")

    # -- the demo from the first-run offer: it builds the tiny model and submits the job ---------
    page.click("#demo button")
    page.wait_for_url(re.compile(r"/jobs/job_[0-9a-f]+$"), timeout=120_000)
    expect(page.locator(".job-head h1")).to_have_text("tiny-demo")
    shot("demo-job")
    page.click("#cancel-job")  # the confirmation dialog is accepted; the next job needs the cpu
    expect(page.locator("#job-status")).to_have_text("cancelled")

    # -- upload a dataset and a reward function ------------------------------------------------
    page.click("nav >> text=Datasets")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    page.set_input_files("#ds-file", str(bad))
    page.click("#dataset-upload button[type=submit]")
    expect(page.locator("#datasets-panel .error-box")).to_contain_text("Line 2 is not valid JSON")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "a"}) + "\n" for p in demo.PROMPTS))
    page.evaluate(
        "document.addEventListener('htmx:xhr:progress', e => {"
        " window.__uploaded = Math.max(window.__uploaded || 0, e.detail.loaded / e.detail.total); })"
    )
    page.fill("#ds-name", "demo prompts")
    page.set_input_files("#ds-file", str(data))
    page.click("#dataset-upload button[type=submit]")
    expect(page.locator("#datasets-panel .message-box")).to_contain_text("16 rows")
    assert page.evaluate("window.__uploaded") == 1  # the progress bar saw the whole upload
    page.locator("#datasets-panel button", has_text="Preview").first.click()
    expect(page.locator("#dataset-preview")).to_contain_text("Say something:")
    no_horizontal_scroll(page)
    shot("datasets")

    page.click("nav >> text=Reward functions")
    reward = tmp_path / "letter_a.py"
    reward.write_text(demo.REWARD)
    page.fill("#rf-name", "letter_a")
    page.set_input_files("#rf-file", str(reward))
    page.click("#rf-upload button[type=submit]")
    expect(page.locator("#rf-panel .message-box")).to_contain_text("calls reward()")
    page.locator("#rf-panel button", has_text="View source").first.click()
    expect(page.locator("#rf-source")).to_contain_text('c.count("a")')
    no_horizontal_scroll(page)
    shot("reward-functions")

    # -- launch a job from the form: first refused with the API's own error, then accepted ------
    page.click("nav >> text=New job")
    page.fill("#base_model", str(tiny_model))
    page.fill("#output_name", "tiny-from-browser")
    page.select_option("#dataset_id", index=1)
    page.locator("[name=reward_function_ids]").first.check()
    page.select_option("#gpu_type", "cpu")
    for name, value in HYPERPARAMETERS.items():
        page.fill(f"[name='hp.{name}']", str(value))
    page.fill("[name='hp.global_batch_size']", "30")
    page.click("#launch")
    expect(page.locator("#err-hyperparameters-global_batch_size")).to_contain_text("multiple of rollouts_per_prompt")
    no_horizontal_scroll(page)
    shot("new-job-validation-error")
    page.fill("[name='hp.global_batch_size']", str(HYPERPARAMETERS["global_batch_size"]))
    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/job_[0-9a-f]+$"))
    job_url = page.url

    # -- watch it train without a reload -------------------------------------------------------
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#job-status")).to_have_text("running", timeout=90_000)
    expect(page.locator("#charts")).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=90_000)
    expect(page.locator("#log .line").first).to_be_visible()
    shot("job-running")
    expect(page.locator("#job-status")).to_have_text("completed", timeout=120_000)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    expect(page.locator("#charts")).to_have_attribute("data-final", "true")
    expect(page.locator("#log .line.sentinel")).to_have_text("[Job completed]")
    expect(page.locator("#job-progress")).to_have_text("step 6 of 6")
    charts = page.locator("#chart-grid .chart")
    assert charts.count() >= 3
    assert int(page.locator(".chart[data-key=reward]").get_attribute("data-points")) == 6
    expect(page.locator("#timeline")).to_contain_text("completed")
    expect(page.locator("#download-model")).to_be_visible()  # the downloads panel refreshed itself
    expect(page.locator("#rollout-step")).to_contain_text("latest (6)")
    # pick another metric; the choice and the data survive a reload
    page.click("#charts summary")
    page.check("#key-picker input[value=entropy]")
    expect(page.locator(".chart[data-key=entropy]")).to_have_count(1)
    page.reload()
    expect(page.locator(".chart[data-key=entropy]")).to_have_attribute("data-points", "6")
    # zoom: a drag across the reward chart narrows its x scale
    chart = page.locator(".chart[data-key=reward] .u-over")
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(page.locator("#charts")).to_have_attribute("data-zoomed", "true")
    x_range = page.evaluate(
        "() => document.querySelector('.chart[data-key=reward] .u-over').getBoundingClientRect().width"
    )
    assert x_range > 0
    no_horizontal_scroll(page)
    shot("job-completed")

    # -- a rollout -------------------------------------------------------------------------------
    expect(page.locator("#rollout-step")).to_be_visible()
    page.select_option("#rollout-step", "3")
    expect(page.locator("#rollouts-panel")).to_contain_text("Step 3:")
    page.select_option("#rollout-sort", "reward")
    expect(page.locator("#rollouts-panel .rollout").first).to_be_visible()
    assert page.locator("#rollouts-panel .rollout").count() == HYPERPARAMETERS["global_batch_size"]
    page.locator("#rollouts-panel article.group details summary").first.click()
    page.locator("#rollouts-title").scroll_into_view_if_needed()
    shot("rollouts")

    # -- download the model ------------------------------------------------------------------------
    with page.expect_download() as download:
        page.click("#download-model")
    archive = tmp_path / "model.tar.gz"
    download.value.save_as(archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("adapter_model.safetensors") for n in names), names

    # -- clone it into a second job and cancel that one ----------------------------------------
    page.click(".job-head >> text=Clone")
    expect(page.locator("#output_name")).to_have_value("tiny-from-browser-copy")
    expect(page.locator("[name='hp.learning_rate']")).to_have_value("0.05")
    page.fill("[name='hp.max_steps']", "500")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/job_[0-9a-f]+$"))
    assert page.url != job_url
    expect(page.locator("#job-status")).to_have_text(re.compile("running|provisioning|queued"))
    page.click("#cancel-job")  # the confirmation dialog is accepted
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#timeline")).to_contain_text("cancelled")
    shot("job-cancelled")

    # -- the jobs list, settings, and a narrow window ---------------------------------------------
    page.click("nav >> text=Jobs")
    expect(page.locator("#job-table tbody tr")).to_have_count(3)
    expect(page.locator("#job-table")).to_contain_text("completed")
    page.select_option("[name=status]", "cancelled")
    expect(page.locator("#job-table tbody tr")).to_have_count(2)
    no_horizontal_scroll(page)
    shot("jobs")

    page.click("nav >> text=Settings")
    page.fill("#key-name", "browser test")
    page.click("#api-keys button[type=submit]")
    expect(page.locator("#new-key")).to_have_text(re.compile(r"^vk_[0-9a-f]{40}$"))
    expect(page.locator("#device-table")).to_contain_text("cpu")
    no_horizontal_scroll(page)
    shot("settings")

    page.set_viewport_size({"width": 800, "height": 900})
    for path, name in [("/jobs", "jobs"), (job_url, "job"), ("/jobs/new", "new-job"), ("/datasets", "datasets")]:
        page.goto(path if path.startswith("http") else server.url + path)
        no_horizontal_scroll(page)
        shot(f"{name}-800px")

    # keyboard: the skip link is the first stop and leads to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"

    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/login$"))


# -- comparing runs, chart settings, dark mode, a phone, a health alert ------------------------

PHONE = {"width": 390, "height": 844}


def _fake_jobs(server: Server, tmp_path: Path) -> list[dict]:
    """Two finished runs of the stdlib test trainer that differ in learning rate, each with a
    step_time per step (so the wall-time axis has a clock)."""
    import httpx

    from veri_box import paths
    from veri_box.store import Store

    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
    body = "".join(json.dumps({"prompt": p, "answer": "a"}) + "\n" for p in demo.PROMPTS).encode()
    dataset = http.post("/v1/datasets", data={"name": "p"}, files={"file": ("p.jsonl", body)}).json()["id"]
    rf = http.post("/v1/reward_functions", data={"name": "a"}, files={"file": ("a.py", demo.REWARD.encode())}).json()
    jobs = []
    for name, lr in (("lr-small", 1e-5), ("lr-big", 1e-3)):
        r = http.post(
            "/v1/training_jobs",
            json={
                "base_model": "fake:steps=40,step_s=0.01",
                "dataset_id": dataset,
                "reward_function_id": rf["id"],
                "output_name": name,
                "gpu": {"type": "cpu", "count": 1},
                "hyperparameters": {"learning_rate": lr, "max_steps": 40},
            },
        )
        assert r.status_code == 200, r.text
        jobs.append(r.json())
    for job in jobs:
        for _ in range(300):
            if http.get(f"/v1/training_jobs/{job['id']}").json()["status"] == "completed":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{job['id']} did not complete:\n{server.output()[-3000:]}")
    store = Store(paths.db(server.data_dir))
    for i, job in enumerate(jobs):
        store.add_metrics(
            job["id"], [(s, {"step_time": 0.5 * (i + 1), "policy/objective": -0.1 * s}) for s in range(1, 41)]
        )
    http.close()
    return jobs


def test_compare_smoothing_dark_mode_phone_width_and_a_health_alert(tmp_path):
    box = Server(
        tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "2", "--trainers", FAKE_TRAINERS
    )
    box.key = KEY.search(box.start()).group(0)
    console_errors: list[str] = []
    try:
        small, big = _fake_jobs(box, tmp_path)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: console_errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"{page.url}: {e}"))
            shot = Shots(page, ARTIFACTS, prefix="compare-")
            try:
                _compare_walk(page, shot, box, small, big)
            except Exception:
                shot("failure")
                (ARTIFACTS / "compare-serve.log").write_text(box.output()[-20000:])
                raise
            finally:
                browser.close()
    finally:
        box.stop()
    assert console_errors == []


def _compare_walk(page, shot, server: Server, small: dict, big: dict) -> None:
    expect = sync_api.expect
    page.goto(server.url + "/login")
    page.fill("[name=api_key]", server.key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs$"))

    # -- search, then pick two jobs in the list and compare them ---------------------------------
    # a pick made in one search is kept through the next
    page.fill("#job-search", "lr-small")
    page.press("#job-search", "Enter")
    expect(page.locator("#job-table tbody tr")).to_have_count(1)
    page.check(f"#row-{small['id']} input.pick-job")
    page.fill("#job-search", "lr-big")
    page.press("#job-search", "Enter")
    expect(page.locator("#job-table tbody tr")).to_have_count(1)
    page.check(f"#row-{big['id']} input.pick-job")
    page.fill("#job-search", "")
    page.press("#job-search", "Enter")
    expect(page.locator("#job-table tbody tr")).to_have_count(2)
    page.wait_for_timeout(2500)  # the table refreshes itself; the picks survive it
    expect(page.locator(f"#row-{small['id']} input.pick-job")).to_be_checked()
    expect(page.locator("#compare-form button[type=submit]")).to_have_text("Compare 2 jobs")
    shot("jobs-picked")
    page.click("#compare-form button[type=submit]")
    expect(page).to_have_url(re.compile(rf"/compare\?jobs={small['id']},{big['id']}$"))

    charts = page.locator("#compare-charts")
    expect(charts).to_have_attribute("data-final", "true")
    expect(page.locator("#compare-legend")).to_contain_text("lr-small")
    expect(page.locator("#compare-legend")).to_contain_text("lr-big")
    assert page.locator("#hp-diff tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)") == ["learning_rate"]
    reward = page.locator("#compare-charts .chart[data-key=reward]")
    expect(reward).to_have_attribute("data-jobs", "2")  # both jobs on one chart
    expect(reward).to_have_attribute("data-points", "80")
    expect(reward.locator(".u-legend")).to_contain_text("lr-small")
    expect(reward.locator(".u-legend")).to_contain_text("lr-big")
    raw_last = reward.get_attribute("data-last")
    assert raw_last == "1,1", raw_last  # the fake trainer's reward climbs to 1

    # -- the smoothing slider changes what is plotted; raw stays behind, faint ----------------------
    page.locator("#compare-charts .smoothing").fill("0.9")
    expect(charts).to_have_attribute("data-smoothing", "0.9")
    expect(reward).not_to_have_attribute("data-last", raw_last)
    smoothed = [float(v) for v in reward.get_attribute("data-last").split(",")]
    assert all(0.5 < v < 1 for v in smoothed), smoothed  # an EMA of a ramp trails it
    assert reward.locator(".u-legend .u-series.raw").count() == 2

    # -- the metric picker: grouped, searchable; log y and the wall-time axis -------------------------
    page.click("#compare-charts .key-picker summary")
    page.fill("#compare-charts .key-search", "los")
    expect(page.locator("#compare-charts .key-picker-body label:visible")).to_have_count(1)
    page.check("#compare-charts .key-picker-body input[value=loss]")
    expect(page.locator("#compare-charts .chart[data-key=loss]")).to_have_attribute("data-jobs", "2")
    page.check("#compare-charts .log-y")
    expect(charts).to_have_attribute("data-log", "true")
    expect(reward).to_have_attribute("data-log", "true")
    # grouped by prefix; a key that is never above zero stays on a linear axis
    page.fill("#compare-charts .key-search", "objective")
    expect(page.locator("#compare-charts .key-group[data-group='policy/*']")).to_be_visible()
    page.check("#compare-charts .key-picker-body input[value='policy/objective']")
    objective = page.locator("#compare-charts .chart[data-key='policy/objective']")
    expect(objective).to_have_attribute("data-points", "80")
    expect(objective).to_have_attribute("data-log", "false")
    page.select_option("#compare-charts .x-axis", "time")
    expect(charts).to_have_attribute("data-x", "time")
    expect(reward).to_have_attribute("data-jobs", "2")
    # 40 steps of 0.5 s and of 1 s: the slower job's line ends at 40 s
    expect(reward).to_have_attribute("data-x-max", "40")
    shot("compare-smoothed-log-time")
    # the settings are remembered
    page.reload()
    expect(charts).to_have_attribute("data-final", "true")
    expect(charts).to_have_attribute("data-smoothing", "0.9")
    expect(charts).to_have_attribute("data-x", "time")
    expect(page.locator("#compare-charts .chart[data-key=loss]")).to_have_count(1)
    page.click("#compare-charts .reset-charts")
    expect(charts).to_have_attribute("data-x", "step")
    expect(page.locator("#compare-charts .chart[data-key=loss]")).to_have_count(0)
    expect(reward).to_have_attribute("data-x-max", "40")  # step 40

    # -- dark mode: the toggle, remembered; and the system's choice without one ------------------------
    background = "getComputedStyle(document.documentElement).backgroundColor"
    light = page.evaluate(background)
    page.click("#theme-toggle")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark = page.evaluate(background)
    assert dark != light and sum(map(int, re.findall(r"\d+", dark)[:3])) < 120, dark
    expect(page.locator("#compare-charts .chart[data-key=reward]")).to_have_attribute("data-jobs", "2")
    shot("compare-dark")
    page.goto(f"{server.url}/jobs/{small['id']}")
    assert page.evaluate(background) == dark
    shot("job-dark")
    page.click("#theme-toggle")
    assert page.evaluate(background) == light
    page.evaluate("localStorage.removeItem('veri-box.theme')")
    page.emulate_media(color_scheme="dark")
    page.reload()
    assert page.evaluate(background) == dark  # follows the system
    page.emulate_media(color_scheme="light")
    page.reload()
    assert page.evaluate(background) == light

    # -- "compare with…" from a job's page --------------------------------------------------------
    page.click(".compare-with")
    expect(page).to_have_url(re.compile(rf"/jobs\?compare_with={small['id']}$"))
    expect(page.locator(f"#row-{small['id']} input.pick-job")).to_be_checked()
    page.check(f"#row-{big['id']} input.pick-job")
    page.click("#compare-form button[type=submit]")
    expect(page.locator("#compare-legend li")).to_have_count(2)

    # -- a phone: the jobs list, a job and the comparison fit its width ------------------------------
    page.set_viewport_size(PHONE)
    page.goto(server.url + "/jobs")
    expect(page.locator("#job-table tbody tr")).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot("jobs-390px")
    page.goto(f"{server.url}/compare?jobs={small['id']},{big['id']}")
    expect(page.locator("#compare-charts")).to_have_attribute("data-final", "true")
    no_horizontal_scroll(page)
    shot("compare-390px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # -- a health alert (helper G's banner) shows on the job's page ------------------------------------
    if not (REPO / "templates" / "_health_alerts.html").exists():
        pytest.skip("the health alert banner (templates/_health_alerts.html) has not landed")
    from veri_box import paths
    from veri_box.store import Store

    alert = {
        "alert": "zero_variance",
        "message": "90% of groups had zero reward variance for 20 steps.",
        "advice": "Raise rollouts_per_prompt or make the reward less all-or-nothing.",
        "step": 30,
    }
    Store(paths.db(server.data_dir)).add_event(small["id"], "health_alert", alert)
    page.goto(f"{server.url}/jobs/{small['id']}")
    banner = page.locator(".health-alert[data-alert=zero_variance]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(alert["message"])
    expect(banner).to_contain_text(alert["advice"])
    expect(page.locator("#health-alerts")).to_contain_text("30")
    shot("job-health-alert")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(500)  # the charts follow a resize after a short pause
    no_horizontal_scroll(page)
    shot("job-health-alert-390px")
