"""Rollouts across steps (issue 16): from the rollouts panel, one GRPO prompt's groups at every
logged step, oldest first, with their rewards and the mean per step; a video job's validation
clips as a grid (a row per prompt, a column per step) with playable signed links; and a real
tiny GRPO job whose page shows a prompt across the steps it trained."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest
from conftest import REWARD_SOURCE, Api, finished
from test_dashboard import Browser

from veri_box.dashboard import job_page

HTMX = {"HX-Request": "true"}


def video_job(api: Api) -> dict:
    from trainers.tiny_video import squares_zip

    ds = api.upload_dataset(squares_zip(n=1, frames=49), filename="clips.zip").json()["id"]
    return api.job(dataset_id=ds, method="sft_video_gen", base_model="THUDM/CogVideoX-2b")


def ingest(api: Api, job_id: str, samples: list[dict]) -> None:
    """Samples as the runner stores what it read from progress.jsonl: one transaction per stretch."""
    api.store.ingest_progress(job_id, 0, points=[], samples=samples, checkpoints=[], events=[], fields={}, running=None)


def rollouts(step: int, prompt: str, rewards: list[float], group: int = 0) -> list[dict]:
    return [
        {
            "type": "sample",
            "step": step,
            "prompt": prompt,
            "completion": f"{prompt[:5]}-s{step}-c{i}",
            "reward": r,
            "rewards": {"a_ratio": r},
            "advantage": 0.0,
            "group": group,
        }
        for i, r in enumerate(rewards)
    ]


def box_url(api: Api) -> str:
    """The page's links are relative to the box; the API's are absolute (settings.base_url)."""
    return api.box.settings.base_url.rstrip("/")


def columns(page: str) -> list[tuple[int, str]]:
    """(step, the column's text) for each step column, in page order."""
    parts = re.split(r'<section class="step-column" data-step="(\d+)"', page)[1:]
    return [(int(parts[i]), parts[i + 1]) for i in range(0, len(parts), 2)]


def test_a_prompt_across_steps_shows_its_groups_in_step_order_with_rewards_and_means(api):
    web = Browser(api)
    job = api.job()
    cat, dog = "Write about a cat.", "Write about a dog."
    # Steps arrive in two stretches, and another prompt shares every step.
    ingest(api, job["id"], rollouts(1, cat, [0.0, 0.5]) + rollouts(1, dog, [1.0, 1.0], group=1))
    ingest(api, job["id"], rollouts(2, dog, [0.2, 0.2]) + rollouts(2, cat, [0.5, 1.0], group=1))
    ingest(api, job["id"], rollouts(3, cat, [1.0, 1.0]) + rollouts(3, dog, [0.1, 0.3], group=1))

    panel = web.get(f"/jobs/{job['id']}/rollouts", headers=HTMX).text
    links = re.findall(r'hx-get="(/jobs/[^"]+/rollouts/prompt\?prompt=[^"]+)"', panel)
    assert len(links) == 2 and 'class="link small across-steps"' in panel  # one per group of step 3
    cat_link = html.unescape(links[0])  # step 3 lists the cat's group first

    page = web.get(cat_link, headers=HTMX).text
    assert page.startswith('<div id="rollouts-panel"') and "every 5s" not in page  # replaces the panel, still
    assert cat in page and dog not in page
    cols = columns(page)
    assert [s for s, _ in cols] == [1, 2, 3]  # oldest first, newest last
    means = [re.search(r'class="step-mean">([^<]+)<', text).group(1) for _, text in cols]
    assert means == ["0.25", "0.75", "1"]
    assert "1: 0.25" in page and "3: 1" in page  # the trend line above the columns
    for step, text in cols:
        assert re.findall(r"Write-s(\d)-c\d", text) == [str(step)] * 2  # only that step's completions
    rewards = [re.findall(r'class="num reward">([^<]+)<', text) for _, text in cols]
    assert rewards == [["0", "0.5"], ["0.5", "1"], ["1", "1"]]
    assert cols[2][1].count('data-zero-variance="true"') == 1  # every completion paid the same at step 3

    # The prompt's text names it too (the API's samples carry it), and gives the same view.
    by_text = web.get(f"/jobs/{job['id']}/rollouts/prompt", params={"prompt": cat}, headers=HTMX).text
    assert [s for s, _ in columns(by_text)] == [1, 2, 3]
    # Refresh reloads the same view (new steps and all) by the prompt's short key.
    refresh = html.unescape(re.search(r'hx-get="([^"]+)"[^>]*>Refresh<', by_text).group(1))
    assert refresh == f"/jobs/{job['id']}/rollouts/prompt?prompt={job_page.prompt_key(cat)}&step=3"
    ingest(api, job["id"], rollouts(4, cat, [0.0, 0.0]))
    assert [s for s, _ in columns(web.get(refresh, headers=HTMX).text)] == [1, 2, 3, 4]


def test_a_prompt_with_no_samples_says_so_and_an_empty_one_is_refused(api):
    web = Browser(api)
    job = api.job()
    ingest(api, job["id"], rollouts(1, "Say hi", [0.1, 0.2]))
    page = web.get(f"/jobs/{job['id']}/rollouts/prompt", params={"prompt": "Never asked"}, headers=HTMX)
    assert page.status_code == 200
    assert "No rollouts of this prompt in the logged steps" in page.text and 'class="step-column"' not in page.text
    empty = web.get(f"/jobs/{job['id']}/rollouts/prompt?prompt=", headers=HTMX)
    # htmx shows the API's error in the page's flash, leaving the panel as it was.
    assert empty.headers["HX-Retarget"] == "#flash" and 'data-code="invalid_value"' in empty.text
    assert "Name a prompt" in empty.text
    missing = web.get("/jobs/job_nope/rollouts/prompt?prompt=x", headers=HTMX)
    assert missing.headers["HX-Retarget"] == "#flash" and 'data-code="training_job_not_found"' in missing.text


def test_a_long_run_shows_evenly_spaced_steps_first_and_last_kept(api):
    web = Browser(api)
    job = api.job()
    ingest(api, job["id"], [s for step in range(1, 101) for s in rollouts(step, "P", [step / 100])])
    started = time.perf_counter()
    page = web.get(f"/jobs/{job['id']}/rollouts/prompt", params={"prompt": "P"}, headers=HTMX).text
    elapsed = time.perf_counter() - started
    steps = [s for s, _ in columns(page)]
    assert len(steps) == job_page.STEP_COLUMNS and steps[0] == 1 and steps[-1] == 100 and steps == sorted(steps)
    assert f"{job_page.STEP_COLUMNS} of 100 logged steps with this prompt" in page
    assert elapsed < 2, elapsed


def test_a_prompt_that_comes_back_once_an_epoch_is_shown_at_each_step_it_was_asked(api):
    """A big dataset asks each prompt every few hundred steps: the columns are that prompt's steps."""
    web = Browser(api)
    job = api.job()
    samples = [s for step in range(1, 301) for s in rollouts(step, f"other {step}", [0.0])]
    samples += [s for step in (2, 150, 299) for s in rollouts(step, "Once an epoch", [step / 300, 0.0], group=1)]
    ingest(api, job["id"], samples)
    panel = web.get(f"/jobs/{job['id']}/rollouts?step=150", headers=HTMX).text
    link = html.unescape(re.findall(r'hx-get="(/jobs/[^"]+/rollouts/prompt\?[^"]+)"', panel)[1])
    assert link.endswith("&step=150")  # the step it came from names the prompt cheaply
    for url in (link, link.removesuffix("&step=150")):  # and without it, any step's prompt does
        page = web.get(url, headers=HTMX).text
        assert [s for s, _ in columns(page)] == [2, 150, 299], url
        assert "Once an epoch" in page and "logged steps with this prompt" not in page  # all shown


def test_a_long_run_of_many_samples_still_answers_quickly(api):
    """2000 logged steps of 64 rollouts (the trainer's most per step): 128k samples of 50 prompts."""
    web = Browser(api)
    job = api.job()
    for first in range(1, 2001, 200):
        ingest(
            api,
            job["id"],
            [
                {
                    "step": step,
                    "prompt": f"prompt {(step * 8 + i // 8) % 50} " + "x" * 200,
                    "completion": "c" * 100,
                    "reward": i / 64,
                    "group": i // 8,
                }
                for step in range(first, first + 200)
                for i in range(64)
            ],
        )
    key = job_page.prompt_key("prompt 0 " + "x" * 200)
    for url in (
        f"/jobs/{job['id']}/rollouts/prompt?prompt={key}&step=2000",
        f"/jobs/{job['id']}/rollouts/prompt?prompt={key}",
    ):
        started = time.perf_counter()
        page = web.get(url, headers=HTMX).text
        elapsed = time.perf_counter() - started
        asked = sum(any((step * 8 + g) % 50 == 0 for g in range(8)) for step in range(1, 2001))
        assert len(columns(page)) == job_page.STEP_COLUMNS and f"of {asked} logged steps with this prompt" in page
        assert elapsed < 1.5, (url, elapsed)  # about 0.2 s here; the bound leaves room for a busy machine


def test_the_store_reads_only_the_steps_shown_through_the_index(api):
    """The query walks samples_job_step for the steps named (no scan of the job's samples)."""
    plan = api.store.db.execute(
        "EXPLAIN QUERY PLAN SELECT seq, step, data FROM samples WHERE job_id = ? AND step IN (?, ?) "
        "AND json_extract(data, '$.prompt') = ? ORDER BY step, seq LIMIT ?",
        ["job_x", 1, 2, "P", 10],
    ).fetchall()
    assert any("samples_job_step" in str(row) for row in plan), plan
    job = api.job()
    ingest(api, job["id"], rollouts(1, "P", [0.1]) + rollouts(2, "Q", [0.2]) + rollouts(3, "P", [0.3]))
    rows = api.store.samples_at_steps(job["id"], [1, 3], "P", 100)
    assert [(r["step"], r["data"]["reward"]) for r in rows] == [(1, 0.1), (3, 0.3)]
    assert api.store.samples_at_steps(job["id"], [], "P", 100) == []
    assert api.store.prompt_steps(job["id"], "P") == [1, 3] and api.store.prompt_steps(job["id"], "R") == []
    assert sorted(api.store.sample_prompts(job["id"])) == ["P", "Q"]


def test_video_clips_by_step_are_a_grid_of_playable_signed_links(api, settings):
    web = Browser(api)
    job = video_job(api)
    prompts = ["a cat on a sofa", "waves at dusk"]
    job_dir = settings.data_dir / "jobs" / job["id"]
    clips = []
    for step in (10, 20, 30):
        for k, prompt in enumerate(prompts):
            path = job_dir / "samples" / f"step-{step:06d}-{k}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"mp4 {step} {k}".encode())
            clips.append({"type": "sample", "step": step, "prompt": prompt, "video": f"samples/{path.name}"})
    ingest(api, job["id"], clips)

    panel = web.get(f"/jobs/{job['id']}/rollouts", headers=HTMX).text
    assert f'hx-get="/jobs/{job["id"]}/rollouts/clips"' in panel and "All steps as a grid" in panel
    page = web.get(f"/jobs/{job['id']}/rollouts/clips", headers=HTMX).text
    rows = page.split('<section class="clip-row">')[1:]
    assert [re.search(r"<h3[^>]*>([^<]+)</h3>", r).group(1) for r in rows] == prompts
    api_samples = api.get(f"/v1/training_jobs/{job['id']}/samples?limit=100").json()["data"]
    for k, row in enumerate(rows):
        cells = re.findall(
            r'<figure class="clip-cell" data-step="(\d+)">\s*<video controls preload="metadata" src="([^"]+)"', row
        )
        assert [int(s) for s, _ in cells] == [10, 20, 30]  # a column per step, oldest first
        for step, src in cells:
            url = html.unescape(src)
            assert web.client.get(url).content == f"mp4 {step} {k}".encode()  # plays the right clip
            # the samples API's own signed link for that clip
            same = next(s for s in api_samples if s["step"] == int(step) and s["prompt"] == prompts[k])
            assert same["video_url"] == box_url(api) + url
    # A clip missing at a step leaves its cell saying so (the grid stays aligned).
    ingest(api, job["id"], [{"type": "sample", "step": 40, "prompt": prompts[0], "video": clips[0]["video"]}])
    page = web.get(f"/jobs/{job['id']}/rollouts/clips", headers=HTMX).text
    second = page.split('<section class="clip-row">')[2]
    assert second.count('class="clip-cell"') == 4 and second.count("no clip") == 1


def test_clips_grid_without_clips_says_so(api):
    web = Browser(api)
    job = video_job(api)
    page = web.get(f"/jobs/{job['id']}/rollouts/clips", headers=HTMX).text
    assert "No validation clips yet." in page


# -- a real tiny GRPO job: its page shows a prompt across the steps it trained -------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_a_real_grpo_job_shows_a_prompt_across_its_steps(box, tiny_model):
    from test_grpo import A_RATIO, LEARNS, PROMPTS

    # Four prompts and four groups a step (32 completions, 8 per prompt): each step is one epoch,
    # so every prompt comes back at every step, as a small dataset's would.
    dataset = box.dataset([{"prompt": p, "answer": "a"} for p in PROMPTS[:4]])
    rf = box.reward_function(A_RATIO, name="a_ratio")
    hp = {**LEARNS, "seed": 0, "max_steps": 3}
    job_id = box.job(base_model=str(tiny_model), dataset_id=dataset, reward_function_id=rf, hyperparameters=hp)["id"]
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    web = Browser(box)
    samples = box.get(f"/v1/training_jobs/{job_id}/samples?limit=1000").json()["data"]
    steps_of: dict[str, set[int]] = {}
    for s in samples:
        steps_of.setdefault(s["prompt"], set()).add(s["step"])
    prompt, steps = max(steps_of.items(), key=lambda kv: len(kv[1]))
    assert len(steps) >= 2, steps_of

    # From the job page's rollouts panel, the prompt's "Across steps" link.
    assert 'hx-get="/jobs/' + job_id + '/rollouts"' in web.get(f"/jobs/{job_id}").text
    last = max(steps)
    panel = web.get(f"/jobs/{job_id}/rollouts?step={last}", headers=HTMX).text
    key = job_page.prompt_key(prompt)
    assert f"/rollouts/prompt?prompt={key}" in panel
    page = web.get(f"/jobs/{job_id}/rollouts/prompt?prompt={key}", headers=HTMX).text
    cols = columns(page)
    assert [s for s, _ in cols] == sorted(steps)
    for step, text in cols:
        mine = [s for s in samples if s["step"] == step and s["prompt"] == prompt]
        assert text.count('class="step-rollout"') == len(mine)
        mean = sum(s["reward"] for s in mine) / len(mine)
        shown = float(re.search(r'class="step-mean">([^<]+)<', text).group(1))
        assert shown == pytest.approx(mean, abs=5e-3, rel=1e-3)
    assert html.escape(prompt.splitlines()[0]) in page


def test_a_real_tiny_video_job_shows_its_validation_clips_by_step(box, tmp_path):
    from test_video import PROMPT, upload_clips
    from test_video import video_job as submit_video

    from trainers.tiny_video import build_tiny_video_pipeline

    pipeline = build_tiny_video_pipeline(tmp_path / "pipeline", seed=0)
    r = submit_video(box, pipeline, upload_clips(box, n=4, frames=12)["id"])
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    assert job["status"] == "completed", job["error"]
    web = Browser(box)
    page = web.get(f"/jobs/{job['id']}/rollouts/clips", headers=HTMX).text
    rows = page.split('<section class="clip-row">')[1:]
    assert len(rows) == 1 and html.escape(PROMPT) in rows[0]  # the trainer's one validation prompt
    cells = re.findall(r'data-step="(\d+)">\s*<video controls preload="metadata" src="([^"]+)"', rows[0])
    assert [int(step) for step, _ in cells] == [6, 12]  # validated every 6 steps
    for _, src in cells:
        clip = web.client.get(html.unescape(src))
        assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4" and len(clip.content) > 100


# -- in a real browser against `veri-box serve`: the views fit a 390 px phone ------------------------


def test_across_steps_and_the_clip_grid_in_a_browser_fit_a_phone(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    import httpx
    from serving import FAKE_TRAINERS, KEY, Server
    from test_dashboard_browser import ARGS, ARTIFACTS, CHROMIUM, no_horizontal_scroll

    from trainers.tiny_video import squares_zip
    from veri_box import paths
    from veri_box.store import Store

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    box = Server(
        tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "2", "--trainers", FAKE_TRAINERS
    )
    box.key = KEY.search(box.start()).group(0)
    console_errors: list[str] = []
    try:
        http = httpx.Client(base_url=box.url, headers={"Authorization": f"Bearer {box.key}"}, timeout=30)
        body = b'{"prompt": "p", "answer": "a"}\n'
        dataset = http.post("/v1/datasets", data={"name": "p"}, files={"file": ("p.jsonl", body)}).json()["id"]
        rf = http.post("/v1/reward_functions", data={"name": "a"}, files={"file": ("a.py", REWARD_SOURCE)}).json()
        clips_ds = http.post(
            "/v1/datasets", data={"name": "clips"}, files={"file": ("clips.zip", squares_zip(n=1, frames=49))}
        )
        assert clips_ds.status_code == 200, clips_ds.text
        grpo = http.post(
            "/v1/training_jobs",
            json={
                "base_model": "fake:steps=3,step_s=0.01",
                "dataset_id": dataset,
                "reward_function_id": rf["id"],
                "output_name": "grpo",
                "gpu": {"type": "cpu", "count": 1},
            },
        )
        assert grpo.status_code == 200, grpo.text
        video = http.post(
            "/v1/training_jobs",
            json={
                "base_model": "fake:steps=3,step_s=0.01",
                "method": "sft_video_gen",
                "dataset_id": clips_ds.json()["id"],
                "output_name": "video",
                "gpu": {"type": "cpu", "count": 1},
            },
        )
        assert video.status_code == 200, video.text
        grpo_id, video_id = grpo.json()["id"], video.json()["id"]
        for job_id in (grpo_id, video_id):
            for _ in range(300):
                if http.get(f"/v1/training_jobs/{job_id}").json()["status"] in ("completed", "failed"):
                    break
                time.sleep(0.1)
        # What a GRPO trainer and a video trainer report, long words and all (they must wrap).
        store = Store(paths.db(box.data_dir))
        prompt = "Spell a long word: " + "x" * 200
        store.add_samples(
            grpo_id,
            [
                {**s, "completion": s["completion"] + " " + "a" * 300}
                for step in (1, 2, 3)
                for s in rollouts(step, prompt, [step / 4, step / 3, step / 2])
            ],
        )
        job_dir = box.data_dir / "jobs" / video_id
        clips = []
        for step in (1, 2, 3):
            for k, name in enumerate(["a cat on a sofa " * 6, "waves at dusk"]):
                path = job_dir / "samples" / f"grid-{step}-{k}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"mp4")
                clips.append({"step": step, "prompt": name, "video": f"samples/{path.name}"})
        store.add_samples(video_id, clips)
        http.close()

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: console_errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"{page.url}: {e}"))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for old in ARTIFACTS.glob("rollouts-*.png"):
                old.unlink()
            try:
                _walk(page, sync_api.expect, box.url, box.key, grpo_id, video_id, no_horizontal_scroll, ARTIFACTS)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "rollouts-failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        box.stop()
    assert console_errors == []


def _walk(page, expect, url, key, grpo_id, video_id, no_horizontal_scroll, artifacts) -> None:
    page.goto(url + "/login")
    page.fill("[name=api_key]", key)
    page.click("button[type=submit]")
    # On a phone first (the page's charts size themselves to the window they load in).
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{url}/jobs/{grpo_id}")
    # The latest step (3) lists the long prompt's group with its link; it opens in the panel.
    page.locator("#rollout-step").select_option("3")
    page.locator("#rollouts-panel article.group", has_text="Spell a long word").locator(".across-steps").click()
    columns = page.locator("#rollouts-panel .step-column")
    expect(columns).to_have_count(3)
    assert columns.evaluate_all("cs => cs.map(c => c.dataset.step)") == ["1", "2", "3"]
    expect(columns.nth(2).locator(".step-mean")).to_have_text("1.083")  # (3/4 + 3/3 + 3/2) / 3
    no_horizontal_scroll(page)
    # On a phone the steps stack: each column starts below the one before.
    tops = columns.evaluate_all("cs => cs.map(c => c.getBoundingClientRect().top)")
    assert tops == sorted(tops) and len(set(tops)) == 3, tops
    page.screenshot(path=str(artifacts / "rollouts-across-steps-390px.png"), full_page=True)
    # On a wide screen they stand side by side, oldest on the left.
    page.set_viewport_size({"width": 1280, "height": 900})
    lefts = columns.evaluate_all("cs => cs.map(c => c.getBoundingClientRect().left)")
    tops = columns.evaluate_all("cs => cs.map(c => c.getBoundingClientRect().top)")
    assert lefts == sorted(lefts) and len(set(lefts)) == 3 and len(set(tops)) == 1, (lefts, tops)
    no_horizontal_scroll(page)
    page.screenshot(path=str(artifacts / "rollouts-across-steps.png"), full_page=True)
    page.locator("#rollouts-panel button", has_text="Back to one step").click()
    expect(page.locator("#rollouts-panel article.group")).to_have_count(2)  # step 3: the trainer's and ours

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{url}/jobs/{video_id}")
    page.locator("#rollouts-panel .clips-by-step").click()
    rows = page.locator("#rollouts-panel .clip-row")
    expect(rows).to_have_count(2)
    videos = page.locator("#rollouts-panel .clip-cell video")
    expect(videos).to_have_count(6)
    assert page.request.get(url + videos.first.get_attribute("src")).body() == b"mp4"  # the signed link plays
    no_horizontal_scroll(page)
    page.screenshot(path=str(artifacts / "rollouts-clips-by-step-390px.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    no_horizontal_scroll(page)
    page.screenshot(path=str(artifacts / "rollouts-clips-by-step.png"), full_page=True)
