"""Model cards and the rest of a job's way out, through real trainers: every output folder's
README.md (a full fine-tune, a LoRA adapter, its merged model, a video LoRA), the one load snippet
the card, the job page and `veri-box demo` share, and the dashboard's Merge and Delete with the
sizes it shows."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from pathlib import Path

import pytest
from conftest import Api, finished
from test_dashboard import Browser
from test_merge import HUB_ID, cache_real_model, lora_job

from trainers import model_card
from trainers.contract import DatasetConfig, Devices, JobConfig, RewardFunctionConfig
from veri_box import artifacts, demo

SECTIONS = ["## Base model", "## Training", "### Hyperparameters", "## Final metrics", "## How to load"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def output_dir(box: Api, job_id: str):
    return box.settings.data_dir / "jobs" / job_id / "output"


def test_full_fine_tune_card_names_the_hub_id_and_demo_and_page_show_its_snippet(box, tiny_model, capsys):
    snapshot = cache_real_model(Path(os.environ["HF_HUB_CACHE"]), HUB_ID, tiny_model)
    job_id = lora_job(box, HUB_ID, lora_rank=None, lora_alpha=None, max_steps=2, learning_rate=0.01)
    job = finished(box, job_id)
    assert job["status"] == "completed", box.get(f"/v1/training_jobs/{job_id}/logs/full").text[-3000:]
    out = output_dir(box, job_id)
    card = (out / "README.md").read_text()
    for section in SECTIONS:
        assert section in card, section
    assert f'base_model: "{HUB_ID}"' in card and "library_name: transformers" in card
    assert (
        "a fully fine-tuned model" in card and "`letter_a`" in card and f"- Dataset: ds (`{job['dataset_id']}`)" in card
    )
    assert "| `learning_rate` | 0.01 |" in card and "At step 2:" in card and "| `reward` |" in card
    snippet = model_card.load_snippet("model", HUB_ID)
    assert snippet in card and "AutoModelForCausalLM.from_pretrained" in snippet
    assert str(snapshot) not in card and str(snapshot) not in (out / "config.json").read_text()

    # One snippet: the server's (the job page, the demo) is the card's.
    assert artifacts.load_snippet(job) == snippet
    page = Browser(box).get(f"/jobs/{job_id}").text
    assert html.escape(snippet, quote=False).strip() in html.unescape(page) or snippet.strip() in html.unescape(page)
    assert 'id="merge-job"' not in page  # a full fine-tune has nothing to merge
    box.client.headers.update(box.headers)
    assert demo._follow(box.client, job_id, 30, "reward") == 0
    assert snippet in capsys.readouterr().out


def test_dashboard_merges_a_lora_job_and_deletes_it_with_its_files(box, tiny_model):
    job_id = lora_job(box, str(tiny_model))
    web = Browser(box)
    queued = web.get(f"/jobs/{job_id}").text
    assert 'id="merge-job"' not in queued and 'id="delete-job"' not in queued  # not finished yet
    r = web.post(f"/jobs/{job_id}/delete")
    assert 'data-code="job_active"' in r.text and box.store.get_job(job_id) is not None
    job = finished(box, job_id)
    assert job["status"] == "completed"
    card = (output_dir(box, job_id) / "README.md").read_text()
    # A base loaded from a folder is named by the folder's name in the card.
    assert "library_name: peft" in card and model_card.load_snippet("adapter", tiny_model.name) in card
    assert json.loads((output_dir(box, job_id) / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model
    )

    page = web.get(f"/jobs/{job_id}").text
    assert 'id="merge-job"' in page and "PeftModel.from_pretrained" in html.unescape(page)
    r = web.post(f"/jobs/{job_id}/merge")
    assert 'data-merge="merging"' in r.text and 'hx-trigger="every 2s"' in r.text
    deadline = time.monotonic() + 300
    while 'data-merge="merging"' in (panel := web.get(f"/jobs/{job_id}/merge").text):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert 'data-merge="completed"' in panel and "model.safetensors" in panel, panel
    again = web.post(f"/jobs/{job_id}/merge")  # merged already: the panel, no error
    assert 'data-merge="completed"' in again.text
    assert "merge_completed" in web.get(f"/jobs/{job_id}").text

    job_dir = box.settings.data_dir / "jobs" / job_id
    size = artifacts.job_size(box.settings, job_id)
    merged = sum(p.stat().st_size for p in (job_dir / "merged").rglob("*") if p.is_file())
    assert size > merged > 0
    page = web.get(f"/jobs/{job_id}").text
    from veri_box.dashboard.rendering import size as shown

    assert f'<strong id="job-size">{shown(size)}</strong>' in page
    assert 'hx-confirm="Delete job' in page and f"({shown(size)} freed)" in page
    listing = web.get("/jobs/table").text
    assert f'<td class="num job-size" data-label="disk">{shown(size)}</td>' in listing
    assert "free on this box&#39;s disk" in listing or "free on this box's disk" in listing

    r = web.post(f"/jobs/{job_id}/delete")
    assert r.headers.get("HX-Redirect") == "/jobs", r.text
    assert not job_dir.exists() and not list(job_dir.parent.glob(f"*{job_id}*"))
    assert box.get(f"/v1/training_jobs/{job_id}").status_code == 404
    assert job_id not in web.get("/jobs/table").text


def test_video_lora_card_loads_with_diffusers(box):
    files = {"file": ("squares.zip", demo.squares_zip(), "application/zip")}
    clips = box.post("/v1/datasets", data={"name": "squares"}, files=files).json()["id"]
    hp = {**demo.VIDEO_HYPERPARAMETERS, "num_epochs": 1, "validation_steps": None, "save_steps": None}
    job_id = box.job(method="sft_video_gen", base_model=demo.TINY_VIDEO, dataset_id=clips, hyperparameters=hp)["id"]
    job = finished(box, job_id)
    assert job["status"] == "completed", box.get(f"/v1/training_jobs/{job_id}/logs/full").text[-3000:]
    card = (output_dir(box, job_id) / "README.md").read_text()
    for section in SECTIONS:
        assert section in card, section
    assert "library_name: diffusers" in card and "text-to-video" in card
    assert "pipe.load_lora_weights" in card and f'CogVideoXPipeline.from_pretrained("{demo.TINY_VIDEO}"' in card
    assert "not on the Hugging Face Hub" in card  # the built-in tiny pipeline says where it lives
    assert {f["path"] for f in box.get(f"/v1/training_jobs/{job_id}/model").json()["files"]} >= {
        "pytorch_lora_weights.safetensors",
        "README.md",
    }


def test_card_text_for_each_kind():
    config = JobConfig(
        job_id="job_1",
        method="grpo",
        trainer="trainers.grpo",
        base_model='Org/Model "quoted"',
        output_name="my-model",
        dataset=DatasetConfig(id="ds_1", format="prompt_only", columns=["prompt"], num_rows=3, path="/x"),
        reward_functions=[
            RewardFunctionConfig(id="rf_1", name="exact", entrypoint="reward", path="/x", weight=1.0),
            RewardFunctionConfig(id="rf_2", name="length", entrypoint="reward", path="/x", weight=0.5),
        ],
        environments=None,
        openreward=None,
        hyperparameters={"lora_rank": 8, "load_in_4bit": True, "system_prompt": None},
        seed=None,
        devices=Devices(type="cpu", count=1, indices=[]),
        job_dir="/nowhere",
        output_dir="/nowhere/output",
        models_dir="/nowhere/models",
        checkpoints_dir="/nowhere/checkpoints",
    )
    text = model_card.card(config, "merged", 7, {"reward": 0.5, "timing/generation_s": 1.0})
    assert text.startswith('---\nbase_model: "Org/Model \\"quoted\\""\n')
    assert "# my-model" in text and "`exact`, `length` × 0.5" in text and "| `system_prompt` | – |" in text
    assert "At step 7:" in text and "| `reward` | 0.5 |" in text and "timing/" not in text  # headline metrics
    assert "4-bit (QLoRA) base and merged into its full-precision weights" in text
    snippet = model_card.load_snippet("merged", config.base_model)
    compile(snippet, "snippet", "exec")  # any base model name makes valid Python
    assert snippet in text
    for kind in model_card.KINDS:
        compile(model_card.load_snippet(kind, config.base_model), kind, "exec")
    with pytest.raises(ValueError):
        model_card.load_snippet("nope", "x")
    assert "No metrics were logged." in model_card.card(config, "adapter", None, {})
    # A multi-line system prompt stays one cell: the rows after it are still the table's.
    prompted = dataclasses.replace(config, hyperparameters={"system_prompt": "Be brief.\nAnswer in English.", "z": 1})
    table = model_card.card(prompted, "adapter", None, {}).split("### Hyperparameters")[1].split("## Final")[0]
    assert "| `system_prompt` | Be brief.<br>Answer in English. |" in table and "| `z` | 1 |" in table
    # A base loaded from a folder on the box: the card names the folder, never the box's path, and
    # claims no Hub base_model (the Hub's metadata wants an id).
    folder = dataclasses.replace(config, base_model="/srv/lab/models/qwen-sft-7")
    text = model_card.card(folder, "adapter", None, {})
    assert "/srv/lab" not in text and "`qwen-sft-7` (a model folder on the box that trained it)" in text
    assert "base_model:" not in text.split("---")[1]
