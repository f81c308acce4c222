"""The new-job form as a user sees it, in process (real app, real SQLite, a real HF cache folder
of config files): the model field's suggestions (GET /v1/models' own list), the live memory
panel (the estimate and verdict submit uses), and the reward Test buttons that run the chosen
or written reward function in the trainers' sandbox before the job is submitted."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import Api
from hf_cache import api_test_cache
from litestar.testing import TestClient
from test_dashboard import HTMX, Browser

from veri_box import hyperparameters
from veri_box.app import Box, create_app
from veri_box.dashboard import job_form
from veri_box.devices import build_inventory
from veri_box.settings import Settings

SMALL_CARD = "RTX4090-24GB"
ROWS = [
    {"prompt": "What is 2+2?", "answer": "4"},
    {"prompt": "Say hi", "answer": "hi"},
    {"prompt": "1+3?", "answer": "4"},
]
SCORE_FOURS = """
def reward(completions, **kwargs):
    return [float(c.strip() == "4") for c in completions]
"""


def open_box(tmp_path: Path, cache: Path | None, gpus: str) -> Iterator[Browser]:
    settings = Settings(data_dir=tmp_path / "data", gpus="none")
    box = Box.open(settings, build_inventory(gpus, settings.cpu_slots))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("test")
        yield Browser(Api(client, key, box))


@pytest.fixture
def fresh(tmp_path, monkeypatch) -> Iterator[Browser]:
    """A new box: nothing in its (empty) Hugging Face cache, no jobs yet."""
    (tmp_path / "empty-cache").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    yield from open_box(tmp_path, None, "none")


@pytest.fixture
def web(tmp_path, monkeypatch) -> Iterator[Browser]:
    """A box with one 24 GB card and Qwen3-4B, Qwen3-0.6B and CogVideoX-2b in its HF cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    yield from open_box(tmp_path, tmp_path / "hf-cache", f"{SMALL_CARD}:1")


def suggestions(page: str) -> dict[str, str]:
    """The model field's datalist: value -> label."""
    datalist = re.search(r'<datalist id="models">(.*?)</datalist>', page, re.S).group(1)
    return {
        html.unescape(v): html.unescape(label)
        for v, label in re.findall(r'<option value="([^"]*)" label="([^"]*)"', datalist)
    }


def estimate_query(**fields) -> str:
    """The memory panel's request as htmx sends it: every field of the form (the defaults of
    each hyperparameter, as the page fills them), with `fields` changed."""
    method = fields.get("method", "grpo")
    form = {"method": method, "base_model": "Qwen/Qwen3-4B", "gpu_type": SMALL_CARD, "gpu_count": "1"}
    for field in hyperparameters.describe(method):
        form[f"hp.{field['name']}"] = job_form._form_value(field["default"])
    form.update({k.replace("__", "."): v for k, v in fields.items()})
    return "/jobs/new/memory-estimate?" + urlencode(form)


def panel(web: Browser, **fields) -> str:
    r = web.get(estimate_query(**fields), headers=HTMX)
    assert r.status_code == 200 and r.text.lstrip().startswith('<div class="memory-estimate"'), r.text
    return html.unescape(r.text)


# -- the model field ------------------------------------------------------------------------------


def test_a_new_box_suggests_its_built_in_models_with_what_they_are(fresh):
    page = fresh.get("/jobs/new").text
    offered = suggestions(page)
    assert list(offered)[0] == "veri-box/tiny-lm"  # the GRPO built-in first
    assert "Qwen2ForCausalLM" in offered["veri-box/tiny-lm"] and "parameters" in offered["veri-box/tiny-lm"]
    assert "built in" in offered["veri-box/tiny-lm"] and "built on first use" in offered["veri-box/tiny-lm"]
    assert "veri-box/tiny-cogvideox" in offered and "(for sft_video_gen)" in offered["veri-box/tiny-cogvideox"]
    # the same list GET /v1/models gives an API client
    listed = [m["id"] for m in fresh.api.get("/v1/models").json()["data"]]
    assert sorted(offered) == sorted(listed)
    assert 'placeholder="veri-box/tiny-lm or /path/to/model"' in page
    video = fresh.get("/jobs/new?method=sft_video_gen", headers=HTMX).text
    assert list(suggestions(video))[0] == "veri-box/tiny-cogvideox"


def test_cached_models_are_suggested_with_architecture_size_and_parameters(web):
    offered = suggestions(web.get("/jobs/new").text)
    assert offered["Qwen/Qwen3-4B"].startswith("Qwen3ForCausalLM · 4.02 B parameters · ")
    assert offered["Qwen/Qwen3-4B"].endswith("HF cache")
    assert (
        offered["THUDM/CogVideoX-2b"].startswith("CogVideoXPipeline")
        and "(for sft_video_gen)" in offered["THUDM/CogVideoX-2b"]
    )
    page = web.get("/jobs/new").text
    assert 'data-model="Qwen/Qwen3-4B"' in page  # its "Use" button in the models table


# -- the memory panel ------------------------------------------------------------------------------


def test_a_full_fine_tune_of_a_4b_model_on_a_24gb_card_will_not_fit_and_names_the_fix(web):
    text = panel(web)  # lora_rank left empty: a full fine-tune
    assert 'data-verdict="will_not_fit"' in text
    assert f"one {SMALL_CARD} has 24 GB" in text and "optimizer state" in text
    fix = re.search(r'<strong class="memory-fix">([^<]+)</strong>', text).group(1)
    assert fix.startswith("QLoRA (lora_rank 16 with load_in_4bit true)"), fix
    # Submit says the same, word for word: the panel and the API share one estimate.
    dataset, rf = web.api.dataset(ROWS), web.api.reward_function()
    body = {
        "base_model": "Qwen/Qwen3-4B",
        "dataset_id": dataset,
        "reward_function_id": rf,
        "output_name": "big",
        "gpu": {"type": SMALL_CARD},
    }
    refused = web.api.post("/v1/training_jobs", json=body).json()["error"]
    assert refused["code"] == "will_not_fit"
    with_dataset = panel(web, dataset_id=dataset)
    assert refused["message"] in with_dataset
    # The named fix, applied in the form, fits.
    change = {"hp__lora_rank": "16", "hp__load_in_4bit": "true"}
    length = re.search(r"max_response_length (\d+)", fix)
    if length:
        change["hp__max_response_length"] = length.group(1)
    fitted = panel(web, **change)
    assert 'data-verdict="fits"' in fitted and "Fits:" in fitted and "of the 24 GB of a RTX4090-24GB" in fitted


def test_the_panel_follows_the_settings_and_warns_as_submit_does(web):
    lora = panel(web, base_model="Qwen/Qwen3-0.6B", hp__lora_rank="16")
    assert 'data-verdict="borderline"' in lora and "May run out of memory" in lora and "memory_warning" in lora
    totals = []
    for length in ("256", "1024", "4096"):
        text = panel(web, base_model="Qwen/Qwen3-0.6B", hp__lora_rank="16", hp__max_response_length=length)
        totals.append(float(re.search(r"<strong>([\d.]+)</strong>", text).group(1)))
    assert totals == sorted(totals) and totals[0] < totals[-1]
    assert "activations" in text and "lora adapter" in text and "optimizer state" in text  # the parts, by name


def test_the_panel_shows_the_apis_error_for_what_submit_would_refuse(web):
    typo = panel(web, base_model="Qwen/Qwen3-4b-instruct")
    assert 'data-state="error"' in typo and 'data-code="model_not_found"' in typo
    assert "hf download Qwen/Qwen3-4b-instruct" in typo
    wrong = panel(web, base_model="THUDM/CogVideoX-2b")
    assert 'data-code="model_incompatible"' in wrong
    bad = panel(web, hp__global_batch_size="60")
    assert 'data-code="invalid_hyperparameter"' in bad and "multiple of rollouts_per_prompt" in bad
    waiting = panel(web, base_model="")
    assert 'data-state="waiting"' in waiting and "Choose a base model" in waiting
    cpu = panel(web, gpu_type="cpu")
    assert 'data-verdict="unchecked"' in cpu and "host memory" in cpu


def test_the_form_asks_for_the_estimate_as_it_changes(web):
    page = web.get("/jobs/new").text
    div = re.search(r'<div id="memory-estimate"[^>]*>', page).group(0)
    assert 'hx-get="/jobs/new/memory-estimate"' in div and 'hx-include="#new-job-form"' in div
    assert "load" in div and "input delay:400ms from:#new-job-form" in div


# -- reward test runs from the form ----------------------------------------------------------------


def test_the_form_tests_a_chosen_or_written_reward_function_on_the_chosen_dataset(web):
    dataset = web.api.dataset(ROWS)
    rf = web.api.reward_function(SCORE_FOURS, name="fours")
    page = web.get("/jobs/new").text
    button = re.search(
        rf'<button[^>]*hx-get="/reward-functions/test-form\?reward_function_id={rf}"[^>]*>Test</button>', page
    )
    assert (
        button and 'hx-include="#dataset_id"' in button.group(0) and 'hx-target="#job-reward-test"' in button.group(0)
    )
    assert 'id="job-reward-test"' in page and page.index('id="job-reward-test"') > page.index("</form>")
    # What the button loads (htmx adds the form's dataset_id), and what its Run test shows.
    form = web.get(f"/reward-functions/test-form?reward_function_id={rf}&dataset_id={dataset}", headers=HTMX).text
    assert f'<option value="{dataset}" selected>' in form and "fours" in form
    ran = web.post("/reward-functions/test", data={"reward_function_id": rf, "dataset_id": dataset, "rows": "3"})
    assert 'data-passed="true"' in ran.text and "0 / 0.6667 / 1" in ran.text, ran.text
    # The inline source: its own Test button, a form that sends the job form's #reward_source.
    source_button = re.search(r"<button[^>]*source_selector=%23reward_source[^>]*>Test this source</button>", page)
    assert source_button and 'hx-include="#dataset_id"' in source_button.group(0)
    assert '<textarea id="reward_source" name="reward_source"' in page
    broken = "def reward(completions, **kwargs):\n    return [len(c) / 0 for c in completions]\n"
    ran = web.post("/reward-functions/test", data={"reward_source": broken, "dataset_id": dataset, "rows": "2"})
    text = html.unescape(ran.text)
    assert 'data-passed="false"' in text and "ZeroDivisionError" in text and "len(c) / 0" in text, text


def test_a_job_from_the_form_keeps_its_written_reward_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    for web in open_box(tmp_path, None, "none"):
        dataset = web.api.dataset(ROWS)
        form = {"method": "grpo", "base_model": "Qwen/Qwen3-4B", "output_name": "inline", "dataset_id": dataset}
        form.update({"gpu_type": "cpu", "gpu_count": "1", "reward_source": SCORE_FOURS})
        for field in hyperparameters.describe("grpo"):
            form[f"hp.{field['name']}"] = job_form._form_value(field["default"])
        r = web.post("/jobs/new", data=form)
        assert "HX-Redirect" in r.headers, r.text
        job = web.api.get(r.headers["HX-Redirect"].replace("/jobs/", "/v1/training_jobs/")).json()
        source = web.api.get(f"/v1/reward_functions/{job['reward_function_id']}/source")
        assert source.status_code == 200 and 'c.strip() == "4"' in source.text

        # Health thresholds: typed as JSON, kept on the job, and carried by Clone.
        bad = web.post("/jobs/new", data={**form, "output_name": "bad-health", "health": '{"kl_maximum": 3}'})
        assert 'data-code="unknown_field"' in bad.text and "hyperparameters.health.kl_maximum" in bad.text
        garbled = web.post("/jobs/new", data={**form, "output_name": "garbled", "health": "{not JSON"}).text
        assert "data-code=" in garbled and "<code>hyperparameters.health</code>" in garbled
        r = web.post("/jobs/new", data={**form, "output_name": "stops", "health": '{"on_alert": "stop", "kl_max": 3}'})
        assert "HX-Redirect" in r.headers, r.text
        job = web.api.get(r.headers["HX-Redirect"].replace("/jobs/", "/v1/training_jobs/")).json()
        assert (job["hyperparameters"]["health"]["on_alert"], job["hyperparameters"]["health"]["kl_max"]) == ("stop", 3)
        clone = web.get(f"/jobs/new?clone={job['id']}").text
        carried = re.search(r'<textarea id="health" name="health"[^>]*>([^<]*)</textarea>', clone).group(1)
        assert json.loads(html.unescape(carried)) == job["hyperparameters"]["health"]


def test_the_panel_names_a_device_count_the_api_would_refuse(web):
    text = panel(web, gpu_count="0")
    assert 'data-code="invalid_value"' in text and "<code>gpu.count</code>" in text and ">= 1" in text
    superscript = panel(web, gpu_count="²")  # a digit to str.isdigit, not a number to int()
    assert "data-code=" in superscript and "<code>gpu.count</code>" in superscript
    two = panel(web, base_model="Qwen/Qwen3-0.6B", hp__lora_rank="16", gpu_count="2")
    assert 'data-state="estimate"' in two  # counted even beyond the box's one card: the API names that at submit


def test_the_panel_estimates_a_video_job_from_its_frames(web):
    cogvideox = {"method": "sft_video_gen", "base_model": "THUDM/CogVideoX-2b"}
    text = panel(web, **cogvideox)
    assert 'data-state="estimate"' in text and "CogVideoXPipeline" in text and "transformer weights" in text
    total = float(re.search(r"<strong>([\d.]+)</strong>", text).group(1))
    assert "(encoding)" in text  # at 49 frames T5 + VAE + transformer while encoding is the peak
    longer = panel(web, **cogvideox, hp__num_frames="161")
    assert "(training)" in longer and float(re.search(r"<strong>([\d.]+)</strong>", longer).group(1)) > total
    tiny = panel(web, method="sft_video_gen", base_model="veri-box/tiny-cogvideox")
    assert 'data-state="unchecked"' in tiny and "not estimated" in tiny
