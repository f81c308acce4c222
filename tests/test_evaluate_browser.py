"""Base against trained in a real browser (Debian's chromium, driven by Playwright) against a real
`veri-box serve`: a tiny LoRA GRPO job trains on the cpu pool, then on its page the owner types
two prompts, clicks Evaluate, and the section polls until the table (prompt, base answer and
reward, trained answer and reward) and the two means appear, the same figures the API answers.
Screenshots are kept in test-artifacts/dashboard/evaluate-*.png."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from serving import KEY, REPO, Server

from veri_box import demo

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
HP = {**{k: v for k, v in demo.HYPERPARAMETERS.items() if k != "max_steps"}, "max_steps": 3, "seed": 0}
PROMPTS = ["Say something:", "Write a word with many a's:"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


def test_the_owner_compares_base_and_trained_on_the_job_page(tmp_path):
    import httpx

    from trainers.tiny import build_tiny_lm

    model = build_tiny_lm(tmp_path / "tiny", seed=0)
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    server.key = KEY.search(server.start()).group(0)
    console_errors: list[str] = []
    try:
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
        body = "".join(json.dumps({"prompt": p}) + "\n" for p in demo.PROMPTS).encode()
        dataset = http.post("/v1/datasets", data={"name": "p"}, files={"file": ("p.jsonl", body)}).json()["id"]
        rf = http.post("/v1/reward_functions", data={"name": "a_ratio"}, files={"file": ("a.py", demo.REWARD.encode())})
        job = http.post(
            "/v1/training_jobs",
            json={
                "base_model": str(model),
                "dataset_id": dataset,
                "reward_function_id": rf.json()["id"],
                "output_name": "to-compare",
                "gpu": {"type": "cpu", "count": 1},
                "hyperparameters": HP,
            },
        ).json()
        deadline = time.monotonic() + 300
        while http.get(f"/v1/training_jobs/{job['id']}").json()["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(1)
        assert http.get(f"/v1/training_jobs/{job['id']}").json()["status"] == "completed", server.output()[-3000:]

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            try:
                expect = sync_api.expect
                page.goto(server.url + "/login")
                page.fill("[name=api_key]", server.key)
                page.click("button[type=submit]")
                expect(page).to_have_url(re.compile(r"/jobs$"))
                page.goto(f"{server.url}/jobs/{job['id']}")
                section = page.locator("#evaluation-section")
                expect(section.locator("h2")).to_have_text("Evaluate: base vs trained")
                expect(section.locator("#evaluate-form")).to_be_visible()
                section.locator("input[name=source][value=prompts]").check()
                section.locator("textarea[name=prompts]").fill("\n".join(PROMPTS))
                section.locator("input[name=max_tokens]").fill("8")
                section.locator("#evaluate-job").click()
                # pending/running, then the table, by htmx polling without a reload
                expect(section.locator("#evaluation-table")).to_be_visible(timeout=180_000)
                rows = section.locator("#evaluation-table tbody tr")
                expect(rows).to_have_count(2)
                expect(rows.nth(1).locator("td").first).to_have_text(PROMPTS[1])
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "evaluate-01-table.png"), full_page=True)
                evaluation = http.get(f"/v1/training_jobs/{job['id']}/evaluations").json()["data"][0]
                assert evaluation["status"] == "completed"
                expect(section.locator("#base-mean")).to_have_text(f"{evaluation['base_mean']:.3f}")
                expect(section.locator("#trained-mean")).to_have_text(f"{evaluation['trained_mean']:.3f}")
                cells = rows.nth(0).locator("td")
                expect(cells.nth(1)).to_have_text(evaluation["rows"][0]["base"]["answer"])
                expect(cells.nth(4)).to_have_text(f"{evaluation['rows'][0]['trained']['reward']:.3f}")
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "evaluate-failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        server.stop()
    assert console_errors == []
