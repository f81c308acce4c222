"""The new-job form in a real browser (Debian's chromium, driven by Playwright) against a real
`veri-box serve` with one declared 24 GB card and a Hugging Face cache of config files: the
model suggestions, the memory panel following the settings as they are typed (will not fit,
then the named fix fits), and the reward Test buttons running a library function and a written
one in the sandbox; no console errors. Screenshots in test-artifacts/job-form/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from hf_cache import api_test_cache
from serving import KEY, REPO, Server

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "job-form"
CARD = "RTX4090-24GB"
ROWS = [
    {"prompt": "What is 2+2?", "answer": "4"},
    {"prompt": "Say hi", "answer": "hi"},
    {"prompt": "1+3?", "answer": "4"},
]
FOURS = 'def reward(completions, **kwargs):\n    return [float(c.strip() == "4") for c in completions]\n'

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", f"{CARD}:1", "--cpu-slots", "1")
    output = box.start()
    box.key = KEY.search(output).group(0)
    yield box
    box.stop()


def test_the_new_job_form_checks_memory_and_tests_rewards_before_submit(server):
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    dataset = http.post("/v1/datasets", data={"name": "sums"}, files={"file": ("d.jsonl", body, "application/jsonl")})
    assert dataset.status_code == 200, dataset.text
    rf = http.post("/v1/reward_functions", data={"name": "fours"}, files={"file": ("fours.py", FOURS.encode())})
    assert rf.status_code == 200, rf.text

    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(30_000)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            _walk_through(page, dataset.json()["id"], rf.json()["id"], server)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            (ARTIFACTS / "serve.log").write_text(server.output()[-20000:])
            raise
        finally:
            browser.close()
    assert errors == []


def _walk_through(page, dataset: str, rf: str, server: Server) -> None:
    expect = sync_api.expect
    page.goto(server.url + "/login?next=/jobs/new")
    page.fill("[name=api_key]", server.key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/new$"))

    # The model field suggests what the box has, built-ins first, with what each one is.
    options = page.locator("#models option")
    assert options.first.get_attribute("value") == "veri-box/tiny-lm"
    label = page.locator("#models option[value='Qwen/Qwen3-4B']").get_attribute("label")
    assert label.startswith("Qwen3ForCausalLM · 4.02 B parameters")
    panel = page.locator("#memory-estimate")
    expect(panel).to_contain_text("Choose a base model")  # loaded with the page

    # A full fine-tune of a 4B model on the 24 GB card: refused before submit, with the fix.
    page.select_option("#dataset_id", dataset)
    page.select_option("#gpu_type", CARD)
    page.click("details.models-here summary")  # the models table: "Use" fills the field
    page.click("button[data-model='Qwen/Qwen3-4B']")
    expect(page.locator("#base_model")).to_have_value("Qwen/Qwen3-4B")
    expect(panel.locator("[data-verdict]")).to_have_attribute("data-verdict", "will_not_fit")
    expect(panel).to_contain_text(f"one {CARD} has 24 GB")
    fix = panel.locator(".memory-fix").inner_text()
    assert fix.startswith("QLoRA (lora_rank 16 with load_in_4bit true)"), fix
    page.screenshot(path=str(ARTIFACTS / "01-will-not-fit.png"), full_page=True)
    page.fill("[name='hp.lora_rank']", "16")
    page.select_option("[name='hp.load_in_4bit']", "true")
    length = re.search(r"max_response_length (\d+)", fix)
    if length:
        page.fill("[name='hp.max_response_length']", length.group(1))
    expect(panel.locator("[data-verdict]")).to_have_attribute("data-verdict", "fits")
    expect(panel).to_contain_text("Fits:")
    page.screenshot(path=str(ARTIFACTS / "02-fits.png"), full_page=True)

    # Test the library function on the chosen dataset, from its row in the form.
    page.locator(f"button[hx-get*='reward_function_id={rf}']").click()
    test = page.locator("#job-reward-test")
    expect(test.locator("#reward-test-dataset")).to_have_value(dataset)
    test.locator("button[type=submit]").click()
    expect(test.locator("#reward-test-result")).to_contain_text("Passed", timeout=60_000)
    expect(test.locator("#reward-test-result")).to_contain_text("0 / 0.6667 / 1")
    page.screenshot(path=str(ARTIFACTS / "03-library-test.png"), full_page=True)

    # A function written in the form: its error, with the user's own line, before any GPU time.
    page.fill("#reward_source", "def reward(completions, **kwargs):\n    return [len(c) / 0 for c in completions]\n")
    page.locator("button", has_text="Test this source").click()
    expect(test.locator("#reward-test-form")).to_have_attribute("hx-include", "#reward_source")
    test.locator("button[type=submit]").click()
    expect(test.locator("#reward-test-result")).to_contain_text("ZeroDivisionError", timeout=60_000)
    expect(test.locator("#reward-test-result")).to_contain_text("len(c) / 0")
    page.screenshot(path=str(ARTIFACTS / "04-inline-test.png"), full_page=True)
